"""Layout metrics beside COCO AP: region F1 with merges and splits, pixel IoU, reading order.

In: per page, the ground-truth and the predicted regions as :class:`PageRegions` (class
names and compressed COCO RLE masks at the page's ORIGINAL size, listed in reading order);
:mod:`maskdla.evaluation.layout_inputs` builds them from COCO ground truth, COCO results
and PAGE files.

Out: :func:`layout_metrics` -> the ``layout`` block of metrics.json (see
docs/evaluation.md): percentages 0-100, Kendall's tau in [-1, 1], ``None`` (JSON null)
where a figure is undefined (e.g. precision without any prediction).

How (all per page and class, on the masks' run lengths with pycocotools, no full-page
arrays):

* region matching: the IoU of every (truth, prediction) pair; pairs with IoU >=
  ``match_iou`` are taken greedily, highest IoU first, each region at most once (ties:
  earlier truth, then earlier prediction). With ``match_iou >= 0.5`` and non-overlapping
  ground truth this is the maximum matching; it is what ocrd_segment-like tools do.
* merge: a prediction that holds >= ``cover`` of the area of each of >= 2 truth regions;
  split: a truth region that holds >= ``cover`` of the area of each of >= 2 predictions
  (the same rule with the roles swapped). Both are counted beside F1, not in it.
* pixels: per class, the union of its truth masks against the union of its predicted
  masks (one binary map per class, so overlapping regions of one class count once and
  regions of different classes may share pixels); true/false positive and false negative
  pixels are summed over pages, then IoU, precision, recall, F1 per class, and their
  mean over the classes that have truth or predicted pixels.
* reading order: Kendall's tau between the truth positions and the predicted positions of
  the matched regions of a page (positions are unique: no ties, tau-a = tau-b); undefined
  (``None``) for pages with fewer than 2 matches or without a truth order; the mean is
  over pages where it is defined.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils

from maskdla.tables import markdown_table

__all__ = ["PageRegions", "match_regions", "kendall_tau", "page_counts", "layout_metrics",
           "format_layout_tables", "layout_columns", "worst_pages"]

#: a compressed COCO RLE: {"size": [h, w], "counts": bytes or str}
RLE = Dict[str, Any]


@dataclass
class PageRegions:
    """One page's regions, in reading order (list order), all at the page's original size.

    Attributes:
        height, width: page size in pixels.
        labels: class name of each region.
        masks: compressed RLE of each region, ``size == [height, width]``.
        ordered: whether list order is a reading order to score (ground truth without
            one, or predictions whose order means nothing, set False).
        polygons: the outlines when the regions came from polygons (drawn by overlays).
        name: the page's image file name (for tables and overlays).
    """

    height: int
    width: int
    labels: List[str] = field(default_factory=list)
    masks: List[RLE] = field(default_factory=list)
    ordered: bool = True
    polygons: Optional[List[List[Tuple[float, float]]]] = None
    name: str = ""


def _rle_bytes(rle: RLE) -> RLE:
    """pycocotools' C functions want ``counts`` as bytes."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii")
            if isinstance(counts, str) else counts}


def _intersections(truth: Sequence[RLE], predicted: Sequence[RLE],
                   predicted_area: np.ndarray) -> np.ndarray:
    """Float[G, P] intersection areas in pixels. pycocotools' ``iou`` with every truth
    marked crowd divides the intersection by the prediction's area, which we multiply back."""
    if not truth or not predicted:
        return np.zeros((len(truth), len(predicted)))
    inside = np.asarray(mask_utils.iou(list(predicted), list(truth), [1] * len(truth)))
    return (inside * predicted_area[:, None]).T.reshape(len(truth), len(predicted))


def match_regions(iou: np.ndarray, match_iou: float = 0.5) -> List[Tuple[int, int]]:
    """One-to-one matches of a Float[G, P] IoU matrix: greedy, highest IoU first.

    Pairs below ``match_iou`` never match; ties go to the earlier truth, then the earlier
    prediction. Returns ``(truth index, prediction index)`` pairs, best first.
    """
    truth_index, predicted_index = np.nonzero(iou >= match_iou)
    values = iou[truth_index, predicted_index]
    order = np.lexsort((predicted_index, truth_index, -values))
    used_truth, used_predicted, matches = set(), set(), []
    for k in order.tolist():
        g, p = int(truth_index[k]), int(predicted_index[k])
        if g not in used_truth and p not in used_predicted:
            used_truth.add(g)
            used_predicted.add(p)
            matches.append((g, p))
    return matches


def kendall_tau(first: Sequence[float], second: Sequence[float]) -> Optional[float]:
    """Kendall's tau-a of two rankings of the same items (no ties expected): (concordant -
    discordant pairs) / all pairs; tied pairs count as neither. None for < 2 items."""
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    n = a.size
    if n < 2:
        return None
    signs = np.sign(a[:, None] - a[None, :]) * np.sign(b[:, None] - b[None, :])
    return float(np.triu(signs, k=1).sum() / (n * (n - 1) / 2))


def _union(masks: Sequence[RLE]) -> RLE:
    return masks[0] if len(masks) == 1 else mask_utils.merge(list(masks), intersect=False)


def _pixel_counts(truth: Sequence[RLE], predicted: Sequence[RLE]) -> Tuple[int, int, int]:
    """(true positive, false positive, false negative) pixels of one class on one page:
    the union of its truth masks against the union of its predicted masks."""
    truth_union = _union(truth) if truth else None
    predicted_union = _union(predicted) if predicted else None
    truth_pixels = int(mask_utils.area(truth_union)) if truth_union else 0
    predicted_pixels = int(mask_utils.area(predicted_union)) if predicted_union else 0
    both = 0
    if truth_union and predicted_union:
        both = int(mask_utils.area(mask_utils.merge([truth_union, predicted_union],
                                                    intersect=True)))
    return both, predicted_pixels - both, truth_pixels - both


def page_counts(truth: PageRegions, predicted: PageRegions, classes: Sequence[str], *,
                match_iou: float = 0.5, cover: float = 0.5) -> Dict[str, Any]:
    """Counts of one page: per class ``{"truth", "predicted", "matched", "merges",
    "splits", "pixel_tp", "pixel_fp", "pixel_fn"}`` and the page's Kendall ``tau``."""
    if (truth.height, truth.width) != (predicted.height, predicted.width):
        raise ValueError(f"page sizes differ: truth {truth.width} x {truth.height}, "
                         f"prediction {predicted.width} x {predicted.height}")
    truth_masks = [_rle_bytes(m) for m in truth.masks]
    predicted_masks = [_rle_bytes(m) for m in predicted.masks]
    truth_area = np.asarray(mask_utils.area(truth_masks), dtype=float).reshape(-1)
    predicted_area = np.asarray(mask_utils.area(predicted_masks), dtype=float).reshape(-1)
    intersection = _intersections(truth_masks, predicted_masks, predicted_area)
    per_class: Dict[str, Dict[str, int]] = {}
    matched_pairs: List[Tuple[int, int]] = []
    truth_labels, predicted_labels = np.asarray(truth.labels), np.asarray(predicted.labels)
    for name in classes:
        g = np.flatnonzero(truth_labels == name) if truth.labels else np.zeros(0, int)
        p = np.flatnonzero(predicted_labels == name) if predicted.labels else np.zeros(0, int)
        shared = intersection[np.ix_(g, p)]
        union = truth_area[g, None] + predicted_area[None, p] - shared
        iou = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
        matches = match_regions(iou, match_iou)
        matched_pairs += [(int(g[i]), int(p[j])) for i, j in matches]
        # fraction of each truth inside each prediction, and of each prediction inside truth
        of_truth = np.divide(shared, truth_area[g, None], out=np.zeros_like(shared),
                             where=truth_area[g, None] > 0)
        of_predicted = np.divide(shared, predicted_area[None, p], out=np.zeros_like(shared),
                                 where=predicted_area[None, p] > 0)
        tp, fp, fn = _pixel_counts([truth_masks[i] for i in g], [predicted_masks[j] for j in p])
        per_class[name] = {"truth": int(g.size), "predicted": int(p.size),
                           "matched": len(matches),
                           "merges": int(((of_truth >= cover).sum(axis=0) >= 2).sum()),
                           "splits": int(((of_predicted >= cover).sum(axis=1) >= 2).sum()),
                           "pixel_tp": tp, "pixel_fp": fp, "pixel_fn": fn}
    tau = None
    if truth.ordered and predicted.ordered and len(matched_pairs) >= 2:
        tau = kendall_tau([g for g, _ in matched_pairs], [p for _, p in matched_pairs])
    return {"classes": per_class, "tau": tau}


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return 100.0 * numerator / denominator if denominator > 0 else None


def _region_figures(truth: int, predicted: int, matched: int) -> Dict[str, Optional[float]]:
    return {"region_precision": _ratio(matched, predicted),
            "region_recall": _ratio(matched, truth),
            "region_f1": _ratio(2 * matched, truth + predicted)}


def _pixel_figures(tp: int, fp: int, fn: int) -> Dict[str, Optional[float]]:
    return {"pixel_iou": _ratio(tp, tp + fp + fn), "pixel_precision": _ratio(tp, tp + fp),
            "pixel_recall": _ratio(tp, tp + fn), "pixel_f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def _page_row(key: Any, name: str, counts: Dict[str, Any]) -> Dict[str, Any]:
    total = {k: sum(c[k] for c in counts["classes"].values())
             for k in ("truth", "predicted", "matched", "merges", "splits")}
    f1 = _ratio(2 * total["matched"], total["truth"] + total["predicted"])
    ious = [_pixel_figures(c["pixel_tp"], c["pixel_fp"], c["pixel_fn"])["pixel_iou"]
            for c in counts["classes"].values()]
    return {"image_id": key, "name": name, **total,
            "region_f1": 100.0 if f1 is None else f1,  # nothing to find, nothing found
            "pixel_miou": _mean(ious), "reading_order_tau": counts["tau"]}


def layout_metrics(truth: Dict[Any, PageRegions], predicted: Dict[Any, PageRegions],
                   classes: Sequence[str], *, match_iou: float = 0.5,
                   cover: float = 0.5) -> Dict[str, Any]:
    """The layout block of metrics.json over the pages of ``truth``.

    Args:
        truth: page key (e.g. COCO image id) -> ground-truth regions.
        predicted: page key -> predicted regions; a page missing here has none.
        classes: the classes scored (others are ignored), in table order.
        match_iou: IoU from which a prediction matches a truth region (one-to-one).
        cover: area fraction from which a region counts in a merge or split.

    Returns:
        ``{"region_precision", "region_recall", "region_f1", "merges", "splits",
        "pixel_miou", "pixel_mprecision", "pixel_mrecall", "pixel_mf1",
        "reading_order_tau", "reading_order_pages", "match_iou", "cover",
        "per_class": {name: {...}}, "pages": [per page, worst region F1 first]}``: region
        figures micro-averaged over pages and classes, pixel means over classes.
    """
    totals = {name: dict.fromkeys(("truth", "predicted", "matched", "merges", "splits",
                                   "pixel_tp", "pixel_fp", "pixel_fn"), 0) for name in classes}
    pages = []
    for key, page_truth in truth.items():
        page_predicted = predicted.get(key) or PageRegions(page_truth.height, page_truth.width)
        counts = page_counts(page_truth, page_predicted, classes, match_iou=match_iou,
                             cover=cover)
        for name, values in counts["classes"].items():
            for k, v in values.items():
                totals[name][k] += v
        pages.append(_page_row(key, page_truth.name, counts))
    per_class = {}
    for name, c in totals.items():
        per_class[name] = {**_region_figures(c["truth"], c["predicted"], c["matched"]),
                           "truth": c["truth"], "predicted": c["predicted"],
                           "matched": c["matched"], "merges": c["merges"],
                           "splits": c["splits"],
                           **_pixel_figures(c["pixel_tp"], c["pixel_fp"], c["pixel_fn"])}
    all_counts = {k: sum(c[k] for c in totals.values()) for k in ("truth", "predicted", "matched")}
    taus = [page["reading_order_tau"] for page in pages]
    pages.sort(key=lambda page: (page["region_f1"], str(page["name"])))
    return {**_region_figures(all_counts["truth"], all_counts["predicted"],
                              all_counts["matched"]),
            "merges": sum(c["merges"] for c in totals.values()),
            "splits": sum(c["splits"] for c in totals.values()),
            **{f"pixel_m{k[len('pixel_'):]}": _mean([c[k] for c in per_class.values()])
               for k in ("pixel_iou", "pixel_precision", "pixel_recall", "pixel_f1")},
            "reading_order_tau": _mean(taus),
            "reading_order_pages": sum(tau is not None for tau in taus),
            "match_iou": match_iou, "cover": cover, "per_class": per_class, "pages": pages}


def worst_pages(layout: Dict[str, Any], count: int) -> List[Dict[str, Any]]:
    """The ``count`` pages of lowest region F1 (ties: by name)."""
    return layout["pages"][:max(count, 0)]


# ----------------------------------------------------------------------------- tables

def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_layout_tables(layout: Dict[str, Any], worst: int = 5) -> str:
    """Per class (and all classes): region P/R/F1, merges, splits, pixel IoU/F1; then
    reading order; then the ``worst`` pages of lowest region F1."""
    rows = []
    for name, c in layout["per_class"].items():
        rows.append([name] + [_cell(c[k]) for k in (
            "truth", "predicted", "matched", "region_precision", "region_recall", "region_f1",
            "merges", "splits", "pixel_iou", "pixel_precision", "pixel_recall", "pixel_f1")])
    rows.append(["all (mean for pixels)", _cell(sum(c["truth"] for c in layout["per_class"]
                                                   .values())),
                 _cell(sum(c["predicted"] for c in layout["per_class"].values())),
                 _cell(sum(c["matched"] for c in layout["per_class"].values()))]
                + [_cell(layout[k]) for k in ("region_precision", "region_recall", "region_f1",
                                              "merges", "splits", "pixel_miou",
                                              "pixel_mprecision", "pixel_mrecall",
                                              "pixel_mf1")])
    text = [f"Regions (one-to-one at IoU >= {layout['match_iou']:g}) and pixels, %:",
            markdown_table(["class", "truth", "pred", "matched", "P", "R", "F1", "merges",
                             "splits", "px IoU", "px P", "px R", "px F1"], rows),
            f"Reading order: Kendall's tau {_cell(layout['reading_order_tau'], 3)} "
            f"(mean over {layout['reading_order_pages']} pages with >= 2 matched regions)"]
    shown = worst_pages(layout, worst)
    if shown:
        text += [f"Worst {len(shown)} pages by region F1:", markdown_table(
            ["page", "truth", "pred", "matched", "F1", "merges", "splits", "px mIoU", "tau"],
            [[str(p["name"] or p["image_id"]), _cell(p["truth"]), _cell(p["predicted"]),
              _cell(p["matched"]), _cell(p["region_f1"]), _cell(p["merges"]),
              _cell(p["splits"]), _cell(p["pixel_miou"]), _cell(p["reading_order_tau"], 3)]
             for p in shown])]
    return "\n".join(text)


def layout_columns(metrics: Dict[str, Any]) -> Dict[str, str]:
    """Report cells of a metrics.json: ``{"Region F1": "..", "Pixel mIoU": ".."}`` (two
    decimals, ``-`` when undefined), empty when it has no ``layout`` block."""
    layout = metrics.get("layout") if isinstance(metrics, dict) else None
    if not isinstance(layout, dict):
        return {}
    return {"Region F1": _cell(layout.get("region_f1")),
            "Pixel mIoU": _cell(layout.get("pixel_miou"))}
