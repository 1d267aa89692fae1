"""Inputs of the layout metrics: COCO ground truth, COCO results and PAGE files ->
:class:`~maskdla.evaluation.layout.PageRegions` (RLE masks at the original size, in reading
order); and the side-by-side overlays of the worst pages.

Rasterisation is pycocotools' (``frPyObjects`` of the polygons), the one COCOeval's segm
uses, so pixel figures and AP see the same pixels.

Reading order: the ground truth's is its annotation order (``pages_to_coco`` writes a PAGE
file's regions in its ReadingOrder, else in document order); a PAGE prediction's is its
region order (the same rule); COCO results have none, so their regions are ordered by the
rule ``maskdla.predict`` uses (:func:`maskdla.prediction.vectorize.reading_order` on the
boxes: rows top to bottom, left to right in a row).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from PIL import Image
from pycocotools import mask as mask_utils

from maskdla.data.image import read_displayed_rgb
from maskdla.data.page import Page, Region
from maskdla.errors import InputError
from maskdla.evaluation.layout import PageRegions, layout_metrics
from maskdla.files import write_bytes_atomic

__all__ = ["results_layout_metrics", "truth_from_coco", "predictions_from_results", "regions_from_page",
           "predictions_from_pages", "results_from_predictions", "save_side_by_side"]

PathLike = Union[str, "os.PathLike[str]"]
#: longest side of each half of a side-by-side overlay, pixels
OVERLAY_SIDE = 1600


def _segmentation_rle(segmentation: Any, height: int, width: int) -> Dict[str, Any]:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE,
    as ``COCO.annToRLE`` converts it."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {"size": list(segmentation["size"]),
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _polygon_rle(polygon: Sequence[Tuple[float, float]], height: int, width: int):
    flat = [float(c) for point in polygon for c in point]
    return mask_utils.merge(mask_utils.frPyObjects([flat], height, width))


def truth_from_coco(gt: Mapping[str, Any], ordered: bool = True) -> Dict[int, PageRegions]:
    """COCO ground truth (validated) -> image id -> regions in annotation order.
    Crowd annotations are left out (COCOeval ignores them too)."""
    names = {category["id"]: category["name"] for category in gt["categories"]}
    pages = {image["id"]: PageRegions(int(image["height"]), int(image["width"]), ordered=ordered,
                                      polygons=[], name=Path(image["file_name"]).name)
             for image in gt["images"]}
    for annotation in gt["annotations"]:
        if annotation.get("iscrowd"):
            continue
        page = pages[annotation["image_id"]]
        segmentation = annotation.get("segmentation")
        if not segmentation:
            x, y, w, h = map(float, annotation["bbox"])
            segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        page.labels.append(names[annotation["category_id"]])
        page.masks.append(_segmentation_rle(segmentation, page.height, page.width))
        if isinstance(segmentation, list) and page.polygons is not None:
            ring = max(segmentation, key=len)
            page.polygons.append(list(zip(ring[0::2], ring[1::2])))
        else:
            page.polygons = None
    return pages


def _box_order(boxes: Sequence[Sequence[float]]) -> List[int]:
    """Indices in ``maskdla.predict``'s reading order of xywh boxes."""
    import shapely  # imported here: maskdla.prediction imports this package

    from maskdla.prediction.vectorize import reading_order
    return reading_order([shapely.box(x, y, x + w, y + h) for x, y, w, h in boxes])


def predictions_from_results(results: Sequence[Mapping[str, Any]], gt: Mapping[str, Any],
                             score_thresh: float = 0.5) -> Dict[int, PageRegions]:
    """COCO results with ``segmentation`` -> image id -> the regions scoring >=
    ``score_thresh``, in predicted reading order. Results without a mask are skipped."""
    names = {category["id"]: category["name"] for category in gt["categories"]}
    sizes = {image["id"]: (int(image["height"]), int(image["width"])) for image in gt["images"]}
    kept: Dict[int, List[Mapping[str, Any]]] = {}
    for result in results:
        if result.get("segmentation") and float(result.get("score", 1.0)) >= score_thresh:
            kept.setdefault(result["image_id"], []).append(result)
    pages = {}
    for image_id, found in kept.items():
        height, width = sizes[image_id]
        masks = [_segmentation_rle(r["segmentation"], height, width) for r in found]
        boxes = [r["bbox"] if "bbox" in r else mask_utils.toBbox(m).tolist()
                 for r, m in zip(found, masks)]
        order = _box_order(boxes)
        pages[image_id] = PageRegions(height, width,
                                      labels=[names[found[i]["category_id"]] for i in order],
                                      masks=[masks[i] for i in order])
    return pages


def regions_from_page(page: Page) -> PageRegions:
    """A :class:`Page` (e.g. read from a predicted PAGE file) -> its regions in region order
    (the reading order when the file has one); regions of < 3 points are left out."""
    regions = [region for region in page.regions if len(region.polygon) >= 3]
    return PageRegions(page.height, page.width, labels=[r.label for r in regions],
                       masks=[_polygon_rle(r.polygon, page.height, page.width) for r in regions],
                       polygons=[list(r.polygon) for r in regions], name=page.image_filename)


def predictions_from_pages(pages: Sequence[Tuple[Page, PathLike]], gt: Mapping[str, Any]
                           ) -> Tuple[Dict[int, PageRegions], Dict[int, List[float]]]:
    """Predicted pages matched to the ground truth's images by image file name (else by
    file stem). Returns image id -> regions, and image id -> region scores (1 when the
    file has none). Raises InputError (naming the file) for a page of no ground-truth image,
    of another size, a second page of one image, or a class the ground truth lacks."""
    by_name = {Path(image["file_name"]).name: image for image in gt["images"]}
    by_stem = {Path(image["file_name"]).stem: image for image in gt["images"]}
    classes = [category["name"] for category in gt["categories"]]
    regions: Dict[int, PageRegions] = {}
    scores: Dict[int, List[float]] = {}
    for page, path in pages:
        name = Path(page.image_filename.replace("\\", "/")).name
        image = by_name.get(name) or by_stem.get(Path(path).stem)
        if image is None:
            raise InputError(f"its image {name!r} is not an image of the ground truth", path)
        if (page.width, page.height) != (int(image["width"]), int(image["height"])):
            raise InputError(f"page size {page.width} x {page.height} differs from the ground "
                             f"truth's {image['width']} x {image['height']}", path)
        if image["id"] in regions:
            raise InputError(f"a second prediction for the image {name!r}", path)
        unknown = sorted({r.label for r in page.regions} - set(classes))
        if unknown:
            raise InputError(f"classes {', '.join(unknown)} are not classes of the ground "
                             f"truth ({', '.join(classes)})", path)
        regions[image["id"]] = regions_from_page(page)
        scores[image["id"]] = [1.0 if r.score is None else float(r.score)
                               for r in page.regions if len(r.polygon) >= 3]
    return regions, scores


def results_from_predictions(regions: Mapping[int, PageRegions],
                             scores: Mapping[int, Sequence[float]],
                             gt: Mapping[str, Any]) -> List[dict]:
    """COCO results of predicted regions (for AP): RLE masks, their boxes and scores.
    Raises InputError for a class the ground truth does not have."""
    category_id = {category["name"]: category["id"] for category in gt["categories"]}
    results = []
    for image_id, page in regions.items():
        for label, mask, score in zip(page.labels, page.masks, scores[image_id]):
            if label not in category_id:
                raise InputError(f"predicted class {label!r} is not a class of the ground "
                                 f"truth ({', '.join(category_id)})")
            results.append({"image_id": image_id, "category_id": category_id[label],
                            "score": score, "bbox": mask_utils.toBbox(mask).tolist(),
                            "segmentation": {"size": mask["size"],
                                             "counts": mask["counts"].decode("ascii")}})
    return results


def _as_page(regions: PageRegions) -> Page:
    """Regions -> a Page for :func:`draw_overlay`; masks without outlines are traced."""
    polygons = regions.polygons
    if polygons is None or len(polygons) != len(regions.masks):
        from maskdla.prediction.vectorize import mask_to_polygons

        polygons = []
        for mask in regions.masks:
            traced = mask_to_polygons(mask_utils.decode(mask), largest_only=True)
            polygons.append(list(traced[0].exterior.coords)[:-1] if traced else [])
    page = Page(image_filename=regions.name, width=regions.width, height=regions.height)
    page.regions = [Region(id=f"r{i}", kind="TextRegion", label=label, polygon=polygon)
                    for i, (label, polygon) in enumerate(zip(regions.labels, polygons), 1)]
    return page


def save_side_by_side(image_path: PathLike, truth: PageRegions, predicted: PageRegions,
                      classes: Sequence[str], out_path: PathLike) -> None:
    """The ground truth (left) and the prediction (right) drawn over the page image, each
    half at most :data:`OVERLAY_SIDE` px, written atomically as JPEG or by suffix."""
    from maskdla.prediction.overlay import draw_overlay

    image = read_displayed_rgb(image_path)  # as displayed: the pages' polygons refer to it
    image.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    left = draw_overlay(image, _as_page(truth), classes)
    right = draw_overlay(image, _as_page(predicted), classes)
    both = Image.new("RGB", (left.width + right.width, left.height), (255, 255, 255))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    buffer = io.BytesIO()
    suffix = Path(out_path).suffix.lower()
    both.save(buffer, format="JPEG" if suffix in (".jpg", ".jpeg") else "PNG", quality=90)
    write_bytes_atomic(out_path, buffer.getvalue())


def results_layout_metrics(gt: Mapping[str, Any], results: Sequence[Mapping[str, Any]], *,
                           match_iou: float = 0.5, score_thresh: float = 0.5,
                           cover: float = 0.5) -> Dict[str, Any]:
    """:func:`layout_metrics` of COCO results (those with a mask, scoring >=
    ``score_thresh``) against COCO ground truth, classes in category order."""
    classes = [category["name"] for category in gt["categories"]]
    layout = layout_metrics(truth_from_coco(gt), predictions_from_results(results, gt,
                                                                          score_thresh),
                            classes, match_iou=match_iou, cover=cover)
    layout["score_thresh"] = score_thresh
    return layout
