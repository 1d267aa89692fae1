"""Text-line metrics: baseline detection P/R/F1 (READ-BAD / cBAD) and line-polygon IoU F1.

In: per page, the ground-truth :class:`~maskdla.data.page.Page` and the predicted one (or
None: no prediction), both in pixels of the same image; only their ``lines`` are used
(:class:`~maskdla.data.page.TextLine` baselines and polygons, class-agnostic: line labels
and scores are ignored, every predicted line counts).

Out: :func:`page_line_metrics` -> one page's row, :func:`line_metrics` -> the ``lines``
block of metrics.json (docs/evaluation.md): figures in percent (0-100), ``None`` (JSON
null) where undefined.

**Baselines** follow the scheme of Grüning et al. 2017 ("READ-BAD: A New Dataset and
Evaluation Scheme for Baseline Detection in Archival Documents", arXiv 1705.03311), the
Transkribus baseline evaluation scheme used by the cBAD competitions; its constants (5 px,
0.25, 250 px, 3 t) are those of the scheme's reference implementation by the paper's first
author (TranskribusBaseLineEvaluationScheme, Java):

* every baseline is resampled to points at equal arc-length steps of at most
  :data:`POINT_SPACING` (5 px), both ends kept;
* tolerance, per ground-truth line i: its line spacing d_i is the smallest distance,
  measured across the line's orientation (its total-least-squares direction), from its
  points to the points of the other ground-truth baselines that overlap it along that
  orientation, taking only point pairs at most 2 x 5 px apart along it. Spacings of
  :data:`MAX_LINE_SPACING` (250 px) or more, and lines without such a neighbour, are
  unknown and take the page's mean spacing d (250 px when no line has a neighbour);
  then t_i = :data:`RELATIVE_TOLERANCE` (0.25) x min(d_i, d);
* a point at distance x from the other side's points is covered 1 when x <= t, 0 from
  3 t on, linearly in between ((3 t - x) / (2 t)); t is the ground-truth line's;
* recall of a ground-truth line: the mean coverage of its points by all predicted
  baselines together (a line found in two pieces is fully recalled);
* precision of a predicted line: the mean coverage of its points by the one ground-truth
  line it is aligned with, 0 when it has none. The alignment is one-to-one and greedy:
  the (prediction, truth) pair of highest coverage first, pairs of zero coverage never
  (ties: the earlier prediction, then the earlier truth line). A split line's second
  piece and a merge's second half so lower precision;
* a page's R and P are the means over its ground-truth and predicted lines, its F1 their
  harmonic mean; an empty side scores 1 as in the Transkribus tool (no ground-truth lines:
  R = 1; no predicted lines: P = 1; neither: R = P = F1 = 1), so a page of missed lines
  has F1 0 and a page of false lines P 0. Over a set, R and P are the means of the pages'
  (every page weighs the same, as in the Transkribus tool and cBAD) and F1 their
  harmonic mean.

Simplifications against the Transkribus Java tool (which the paper's figures come from):
point distances are Euclidean (the tool uses |dx| + |dy|); the resampling divides the
arc length into equal steps (the tool walks the pixel chain and keeps every 5th point,
at least 20 per line); a line's orientation is its total-least-squares direction (the
tool regresses y on x); neighbours overlap when their point projections overlap (the tool
compares end points); a zero spacing (two touching truth baselines) is unknown like
a missing one. ``tolerance=`` replaces the per-line tolerances by one fixed value (the
tool's fixed mode; kraken's metric takes one too).

**Line polygons**: the IoU of every (truth, prediction) pair of line polygons (shapely,
exact areas; an invalid polygon is repaired with ``make_valid``), matched one-to-one,
greedily, highest IoU first from ``match_iou`` (0.5) on (as the region F1 of
:mod:`maskdla.evaluation.layout`); P = matched / predicted, R = matched / truth, F1 =
2 matched / (truth + predicted), summed over the pages of a set.

Lines without a baseline are left out of the baseline figures, lines without a polygon
(fewer than 3 points, or of zero area) out of the polygon figures; both are counted.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import Polygon

from maskdla.data.page import Page, Point, TextLine
from maskdla.evaluation.layout import match_regions
from maskdla.tables import markdown_table

__all__ = ["POINT_SPACING", "RELATIVE_TOLERANCE", "MAX_LINE_SPACING", "interpolate_baseline",
           "line_spacings", "baseline_tolerances", "coverage", "align_baselines",
           "baseline_scores", "line_polygon_ious", "page_line_metrics", "line_metrics",
           "format_line_tables", "page_table"]

#: largest distance in px between consecutive resampled baseline points (the scheme's 5 px)
POINT_SPACING = 5.0
#: tolerance as a fraction of the line spacing (the scheme's 0.25)
RELATIVE_TOLERANCE = 0.25
#: line spacings from this many px on are unknown (the Transkribus tool's 250 px)
MAX_LINE_SPACING = 250.0
#: coverage falls linearly from 1 at the tolerance t to 0 at this many times t
FALLOFF = 3.0
#: points of another baseline within this many point spacings along a line measure its
#: spacing (the Transkribus tool's 2 ticks)
ALONG_WINDOW = 2.0


# ------------------------------------------------------------------- baseline geometry

def interpolate_baseline(points: Sequence[Point], spacing: float = POINT_SPACING) -> np.ndarray:
    """A polyline resampled at equal arc-length steps of at most ``spacing`` px.

    Args:
        points: the polyline's (x, y) vertices, at least one.
        spacing: largest distance between consecutive output points.

    Returns:
        Float[N, 2], first and last vertex kept; a single point for a polyline of zero
        length.
    """
    vertices = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(vertices) > 1:  # repeated vertices would make the arc length non-increasing
        keep = np.concatenate([[True], np.any(np.diff(vertices, axis=0) != 0, axis=1)])
        vertices = vertices[keep]
    if len(vertices) < 2:
        return vertices[:1].copy()
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(vertices, axis=0), axis=1))])
    count = max(2, int(np.ceil(arc[-1] / spacing - 1e-9)) + 1)
    at = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(at, arc, vertices[:, 0]), np.interp(at, arc, vertices[:, 1])],
                    axis=1)


def _direction(points: np.ndarray) -> np.ndarray:
    """Unit Float[2] along a resampled baseline: its total-least-squares line, pointing
    from the first point to the last; (1, 0) for a single point."""
    if len(points) < 2:  # resampled baselines have no repeated consecutive points
        return np.array([1.0, 0.0])
    centred = points - points.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    return -direction if np.dot(direction, points[-1] - points[0]) < 0 else direction


def line_spacings(baselines: Sequence[np.ndarray], spacing: float = POINT_SPACING,
                  max_spacing: float = MAX_LINE_SPACING) -> np.ndarray:
    """Each ground-truth baseline's distance to its nearest neighbour across its
    orientation (the paper's interline distance; module docstring).

    Args:
        baselines: resampled baselines, Float[N_i, 2] each (:func:`interpolate_baseline`).
        spacing: their point spacing; points of a neighbour within ``ALONG_WINDOW x
            spacing`` along the line count.
        max_spacing: spacings from here on are unknown.

    Returns:
        Float[G] in px, NaN where unknown (no neighbour, zero, or >= ``max_spacing``).
    """
    result = np.full(len(baselines), np.nan)
    if len(baselines) < 2:
        return result
    points_all = np.concatenate(baselines)
    owner = np.repeat(np.arange(len(baselines)), [len(points) for points in baselines])
    starts = np.concatenate([[0], np.cumsum([len(points) for points in baselines])[:-1]])
    for i, points in enumerate(baselines):
        along_axis = _direction(points)
        across_axis = np.array([-along_axis[1], along_axis[0]])
        own, projected = points @ along_axis, points_all @ along_axis
        # lines beside this one (no overlap along its orientation) are not above or below it
        overlaps = ((np.maximum.reduceat(projected, starts) >= own.min())
                    & (np.minimum.reduceat(projected, starts) <= own.max()))
        overlaps[i] = False
        others = points_all[overlaps[owner]]
        if not len(others):
            continue
        near = np.abs(own[:, None] - (others @ along_axis)[None, :]) <= ALONG_WINDOW * spacing
        if near.any():
            across = np.abs((points @ across_axis)[:, None] - (others @ across_axis)[None, :])
            nearest = float(across[near].min())
            if 0 < nearest < max_spacing:
                result[i] = nearest
    return result


def baseline_tolerances(baselines: Sequence[np.ndarray], spacing: float = POINT_SPACING,
                        relative: float = RELATIVE_TOLERANCE,
                        max_spacing: float = MAX_LINE_SPACING) -> np.ndarray:
    """The paper's per-line tolerances of a page's ground-truth baselines:
    ``relative x min(d_i, mean d)``, unknown spacings taking the mean (``max_spacing``
    when none is known).

    Args:
        baselines: resampled ground-truth baselines, Float[N_i, 2] each.

    Returns:
        Float[G] tolerances in px, all > 0.
    """
    spacings = line_spacings(baselines, spacing, max_spacing)
    known = spacings[~np.isnan(spacings)]
    mean = float(known.mean()) if known.size else max_spacing
    return relative * np.minimum(np.where(np.isnan(spacings), mean, spacings), mean)


def coverage(distances: np.ndarray, tolerance: Any) -> np.ndarray:
    """How much points at ``distances`` (any shape) are covered: 1 up to ``tolerance``, 0
    from ``FALLOFF x tolerance`` on, linear in between; ``tolerance`` (> 0) broadcasts."""
    tolerance = np.asarray(tolerance, dtype=float)
    return np.clip((FALLOFF * tolerance - distances) / ((FALLOFF - 1) * tolerance), 0.0, 1.0)


def _nearest(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Float[N]: each point's Euclidean distance to the nearest of Float[M, 2] ``others``."""
    if not len(others):
        return np.full(len(points), np.inf)
    return np.sqrt(((points[:, None, :] - others[None, :, :]) ** 2).sum(axis=2)).min(axis=1)


def _boxes(lines: Sequence[np.ndarray]) -> np.ndarray:
    """Float[L, 4] (x0, y0, x1, y1) of point sets."""
    return np.array([[*line.min(axis=0), *line.max(axis=0)] for line in lines]).reshape(-1, 4)


def _within(boxes: np.ndarray, box: np.ndarray, margin: Any) -> np.ndarray:
    """Bool[L]: which ``boxes`` come within ``margin`` (scalar or Float[L]) of ``box``."""
    return ((boxes[:, 0] - margin <= box[2]) & (boxes[:, 2] + margin >= box[0])
            & (boxes[:, 1] - margin <= box[3]) & (boxes[:, 3] + margin >= box[1]))


def align_baselines(scores: np.ndarray) -> List[Tuple[int, int]]:
    """The paper's one-to-one alignment of a Float[P, G] coverage matrix (prediction p's
    points covered by truth line g): greedy, highest first, zeros never (ties: the earlier
    prediction, then the earlier truth line). Returns ``(prediction, truth)`` pairs."""
    # the regions' greedy matching with rows = predictions, from the smallest coverage
    return match_regions(scores, match_iou=float(np.finfo(np.float64).tiny))


def baseline_scores(truth: Sequence[np.ndarray], predicted: Sequence[np.ndarray],
                    tolerances: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-line recall and precision of one page's baselines (module docstring).

    Args:
        truth: resampled ground-truth baselines, Float[N_g, 2] each (G lines).
        predicted: resampled predicted baselines, Float[N_p, 2] each (P lines).
        tolerances: Float[G], each truth line's tolerance in px (> 0).

    Returns:
        (Float[G] recall of each truth line, Float[P] precision of each predicted line),
        in [0, 1].
    """
    reach = FALLOFF * np.asarray(tolerances, dtype=float)  # coverage is 0 from here on
    truth_boxes, predicted_boxes = _boxes(truth), _boxes(predicted)
    recall = np.zeros(len(truth))
    for g, points in enumerate(truth):
        near = np.nonzero(_within(predicted_boxes, truth_boxes[g], reach[g]))[0]
        if near.size:
            others = np.concatenate([predicted[p] for p in near])
            recall[g] = coverage(_nearest(points, others), tolerances[g]).mean()
    covered = np.zeros((len(predicted), len(truth)))  # prediction p's points by truth g
    for p, points in enumerate(predicted):
        for g in np.nonzero(_within(truth_boxes, predicted_boxes[p], reach))[0]:
            covered[p, g] = coverage(_nearest(points, truth[g]), tolerances[g]).mean()
    precision = np.zeros(len(predicted))
    for p, g in align_baselines(covered):
        precision[p] = covered[p, g]
    return recall, precision


# ------------------------------------------------------------------------- polygons

def _line_polygon(points: Sequence[Point]) -> Optional[shapely.Geometry]:
    """A line outline as a valid shapely (Multi)Polygon; None without an area."""
    if len(points) < 3:
        return None
    shape = Polygon(points)
    if not shape.is_valid:
        shape = shapely.make_valid(shape)
        parts = [part for part in getattr(shape, "geoms", [shape])
                 if part.geom_type in ("Polygon", "MultiPolygon")]
        shape = shapely.union_all(parts) if parts else None
    return shape if shape is not None and shape.area > 0 else None


def line_polygon_ious(truth: Sequence[shapely.Geometry],
                      predicted: Sequence[shapely.Geometry]) -> np.ndarray:
    """Float[G, P] IoU of every (truth, prediction) pair of line polygons (exact areas)."""
    ious = np.zeros((len(truth), len(predicted)))
    if not truth or not predicted:
        return ious
    truth_boxes = np.array([shape.bounds for shape in truth])
    predicted_boxes = np.array([shape.bounds for shape in predicted])
    for g, shape in enumerate(truth):
        for p in np.nonzero(_within(predicted_boxes, truth_boxes[g], 0.0))[0]:
            both = shape.intersection(predicted[p]).area
            if both > 0:
                ious[g, p] = both / (shape.area + predicted[p].area - both)
    return ious


# ---------------------------------------------------------------------------- pages

def _percent(value: float) -> float:
    return 100.0 * float(value)


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return 100.0 * numerator / denominator if denominator > 0 else None


def _f1(precision: Optional[float], recall: Optional[float]) -> Optional[float]:
    """Harmonic mean of two percentages; None when either is."""
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _baselines(lines: Sequence[TextLine]) -> List[np.ndarray]:
    return [interpolate_baseline(line.baseline) for line in lines if line.baseline]


def page_line_metrics(truth: Page, predicted: Optional[Page], *, name: str = "",
                      tolerance: Optional[float] = None,
                      match_iou: float = 0.5) -> Dict[str, Any]:
    """One page's baseline and line-polygon figures.

    Args:
        truth: the ground-truth page; its ``lines`` are scored.
        predicted: the predicted page, None when there is no prediction (all lines missed).
        name: the page's name in tables.
        tolerance: one tolerance in px for every line instead of the paper's per-line
            tolerances (> 0).
        match_iou: IoU from which a predicted line polygon matches a ground-truth one.

    Returns:
        ``{"name", "prediction" (bool), "truth", "predicted" (lines), "baseline_precision",
        "baseline_recall", "baseline_f1", "tolerance" (mean px of the truth lines, None
        without), "line_matched", "line_precision", "line_recall", "line_f1",
        "truth_without_baseline", "predicted_without_baseline", "truth_without_polygon",
        "predicted_without_polygon"}``, figures in percent. Baseline figures follow the
        Transkribus convention for an empty side (module docstring); line P and R are None
        without predicted or ground-truth polygons, line F1 is 100 when neither has any.
    """
    if tolerance is not None and not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    predicted_lines = predicted.lines if predicted is not None else []
    truth_baselines, predicted_baselines = _baselines(truth.lines), _baselines(predicted_lines)
    tolerances = (np.full(len(truth_baselines), float(tolerance)) if tolerance is not None
                  else baseline_tolerances(truth_baselines))
    recall, precision = baseline_scores(truth_baselines, predicted_baselines, tolerances)
    baseline_recall = _percent(recall.mean()) if recall.size else 100.0
    baseline_precision = _percent(precision.mean()) if precision.size else 100.0
    truth_shapes = [shape for shape in map(_line_polygon, (line.polygon for line in truth.lines))
                    if shape is not None]
    predicted_shapes = [shape for shape in map(_line_polygon, (line.polygon
                                                               for line in predicted_lines))
                        if shape is not None]
    matched = len(match_regions(line_polygon_ious(truth_shapes, predicted_shapes), match_iou))
    line_f1 = _ratio(2 * matched, len(truth_shapes) + len(predicted_shapes))
    return {"name": name, "prediction": predicted is not None,
            "truth": len(truth.lines), "predicted": len(predicted_lines),
            "baseline_precision": baseline_precision, "baseline_recall": baseline_recall,
            "baseline_f1": _f1(baseline_precision, baseline_recall),
            "tolerance": float(tolerances.mean()) if tolerances.size else None,
            "line_matched": matched,
            "line_precision": _ratio(matched, len(predicted_shapes)),
            "line_recall": _ratio(matched, len(truth_shapes)),
            "line_f1": 100.0 if line_f1 is None else line_f1,  # nothing to find, none found
            "truth_without_baseline": len(truth.lines) - len(truth_baselines),
            "predicted_without_baseline": len(predicted_lines) - len(predicted_baselines),
            "truth_without_polygon": len(truth.lines) - len(truth_shapes),
            "predicted_without_polygon": len(predicted_lines) - len(predicted_shapes)}


#: per-page counts summed into the set's figures
_COUNTS = ("truth", "predicted", "line_matched", "truth_without_baseline",
           "predicted_without_baseline", "truth_without_polygon", "predicted_without_polygon")


def line_metrics(pages: Sequence[Tuple[str, Page, Optional[Page]]], *,
                 tolerance: Optional[float] = None, match_iou: float = 0.5) -> Dict[str, Any]:
    """The ``lines`` block of metrics.json over a set of pages.

    Args:
        pages: ``(name, ground truth, prediction or None)`` per page.
        tolerance, match_iou: as for :func:`page_line_metrics`.

    Returns:
        ``{"baseline_precision", "baseline_recall", "baseline_f1" (means of the pages' P
        and R, F1 of those), "line_precision", "line_recall", "line_f1" (matched lines
        summed over pages), "truth", "predicted", "line_matched", "truth_without_baseline",
        "predicted_without_baseline", "truth_without_polygon", "predicted_without_polygon",
        "page_count", "tolerance" (the fixed one, None for the paper's per-line ones),
        "match_iou", "missing_predictions" (names of the pages without a prediction),
        "pages" (rows of :func:`page_line_metrics`, worst baseline F1 first)}``, figures in
        percent, None where undefined (an empty set).
    """
    rows = [page_line_metrics(truth, predicted, name=name, tolerance=tolerance,
                              match_iou=match_iou) for name, truth, predicted in pages]
    totals = {key: sum(row[key] for row in rows) for key in _COUNTS}
    truth_polygons = totals["truth"] - totals["truth_without_polygon"]
    predicted_polygons = totals["predicted"] - totals["predicted_without_polygon"]
    precision = float(np.mean([row["baseline_precision"] for row in rows])) if rows else None
    recall = float(np.mean([row["baseline_recall"] for row in rows])) if rows else None
    rows.sort(key=lambda row: (row["baseline_f1"], row["name"]))
    return {"baseline_precision": precision, "baseline_recall": recall,
            "baseline_f1": _f1(precision, recall),
            "line_precision": _ratio(totals["line_matched"], predicted_polygons),
            "line_recall": _ratio(totals["line_matched"], truth_polygons),
            "line_f1": _ratio(2 * totals["line_matched"], truth_polygons + predicted_polygons),
            **totals, "page_count": len(rows), "tolerance": tolerance, "match_iou": match_iou,
            "missing_predictions": sorted(row["name"] for row in rows if not row["prediction"]),
            "pages": rows}


# ---------------------------------------------------------------------------- tables

#: (header, key, digits) of the per-page table
_PAGE_COLUMNS = (("page", "name", 0), ("truth", "truth", 0), ("pred", "predicted", 0),
                 ("BL P", "baseline_precision", 2), ("BL R", "baseline_recall", 2),
                 ("BL F1", "baseline_f1", 2), ("tol px", "tolerance", 1),
                 ("matched", "line_matched", 0), ("line P", "line_precision", 2),
                 ("line R", "line_recall", 2), ("line F1", "line_f1", 2))


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _page_rows(rows: Sequence[Dict[str, Any]]) -> List[List[str]]:
    return [[_cell(row[key], digits) + ("" if key != "name" or row["prediction"]
                                        else " (no prediction)")
             for _, key, digits in _PAGE_COLUMNS] for row in rows]


def format_line_tables(lines: Dict[str, Any], worst: int = 5) -> str:
    """The set's baseline and line-polygon figures, what was left out, and the ``worst``
    pages of lowest baseline F1, as printed by ``python -m maskdla.eval --lines``."""
    tolerance = ("per line, 0.25 x line spacing (READ-BAD)" if lines["tolerance"] is None
                 else f"{lines['tolerance']:g} px for every line")
    text = [f"Text lines of {lines['page_count']} pages, %: baselines (tolerance "
            f"{tolerance}), polygons (one-to-one at IoU >= {lines['match_iou']:g}):",
            markdown_table(["lines", "truth", "pred", "matched", "P", "R", "F1"], [
                ["baselines", _cell(lines["truth"] - lines["truth_without_baseline"]),
                 _cell(lines["predicted"] - lines["predicted_without_baseline"]), "-"]
                + [_cell(lines[f"baseline_{k}"]) for k in ("precision", "recall", "f1")],
                ["polygons", _cell(lines["truth"] - lines["truth_without_polygon"]),
                 _cell(lines["predicted"] - lines["predicted_without_polygon"]),
                 _cell(lines["line_matched"])]
                + [_cell(lines[f"line_{k}"]) for k in ("precision", "recall", "f1")]])]
    left_out = [f"{lines[key]} {what}" for key, what in (
        ("truth_without_baseline", "ground-truth lines without a baseline"),
        ("predicted_without_baseline", "predicted lines without a baseline"),
        ("truth_without_polygon", "ground-truth lines without a polygon"),
        ("predicted_without_polygon", "predicted lines without a polygon")) if lines[key]]
    if left_out:
        text.append("Left out: " + "; ".join(left_out) + ".")
    shown = lines["pages"][:max(worst, 0)]
    if shown:
        text += [f"Worst {len(shown)} pages by baseline F1:",
                 markdown_table([header for header, _, _ in _PAGE_COLUMNS], _page_rows(shown))]
    return "\n".join(text)


def page_table(lines: Dict[str, Any], form: str = "markdown") -> str:
    """Every page's row of a ``lines`` block, worst baseline F1 first: ``form``
    ``"markdown"`` (two decimals, ``-`` where undefined) or ``"csv"`` (the JSON keys as
    header, full precision, empty where undefined). Ends with a newline."""
    if form == "markdown":
        return markdown_table([header for header, _, _ in _PAGE_COLUMNS],
                              _page_rows(lines["pages"])) + "\n"
    if form != "csv":
        raise ValueError(f"unknown table form {form!r} (markdown or csv)")
    keys = [key for _, key, _ in _PAGE_COLUMNS] + ["prediction"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for row in lines["pages"]:
        writer.writerow(["" if row[key] is None else row[key] for key in keys])
    return out.getvalue()
