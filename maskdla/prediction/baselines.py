"""Text lines from a line model's detections: a polygon and a baseline for each line.

A line model (``--task lines``) is a Mask R-CNN whose instances are text lines: its mask
is the line polygon as eScriptorium and kraken draw it (ascenders above, descenders
below). The baseline is derived from that mask: across the line, at x positions spaced by
about half the line's height, the polygon's upper and lower edges are found and the
baseline is put at a fixed fraction of the height above the lower edge
(:data:`BASELINE_POSITION`), then simplified. The fraction is a property of how the
ground truth draws line polygons, measured on real pages (see the constant); a corpus
drawn otherwise sets its own (``--baseline-position``).

Everything here is numpy + shapely on the CPU; coordinates are pixels of the original
page image, x to the right, y down.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

from maskdla.data.page import Point, TextLine
from maskdla.prediction.vectorize import (PostProcess, as_numpy, scored_mask_polygons,
                                         snap_to_pixels)

__all__ = ["BASELINE_POSITION", "polygon_baseline", "lines_from_detections"]

#: Where the baseline lies in a line polygon, as the fraction of the polygon's height
#: above its lower edge: the median over the ground truth of the HTRomance training pages
#: (eScriptorium polygons; 4,972 samples at 20/40/60/80 % of 210 lines' widths; quartiles
#: 0.28 and 0.39, the median line 23 px high at 1,200 px a page).
BASELINE_POSITION = 0.34
#: baseline samples per line height along the line (two a height follow a curved line)
SAMPLES_PER_HEIGHT = 2.0
#: at most this many baseline samples a line, before simplification
MAX_SAMPLES = 64


def polygon_baseline(polygon: Polygon, position: float = BASELINE_POSITION,
                     tolerance: float = PostProcess.tolerance) -> List[Point]:
    """The baseline of a line polygon, left to right.

    Args:
        polygon: a valid line polygon (wider than high: a horizontal line).
        position: fraction of the polygon's height above its lower edge, in [0, 1].
        tolerance: Douglas-Peucker tolerance of the result, in pixels (0: none).

    Returns:
        At least two points spanning the polygon's width (``[]`` for an empty polygon).
    """
    if polygon.is_empty:
        return []
    min_x, min_y, max_x, max_y = polygon.bounds
    width = max_x - min_x
    if width <= 0:
        return []
    height = max(polygon.area / width, 1.0)  # the mean height, robust to a skewed line
    count = int(np.clip(np.ceil(width / height * SAMPLES_PER_HEIGHT), 2, MAX_SAMPLES))
    xs = min_x + (np.arange(count) + 0.5) * width / count
    verticals = shapely.linestrings(np.stack([np.stack([xs, np.full(count, min_y - 1)], 1),
                                              np.stack([xs, np.full(count, max_y + 1)], 1)], 1))
    cuts = shapely.intersection(polygon, verticals)
    bounds = shapely.bounds(cuts)  # (x0, top, x1, bottom); NaN where a vertical misses
    hit = ~np.isnan(bounds[:, 1])
    if not hit.any():
        centre = polygon.centroid
        return [(min_x, centre.y), (max_x, centre.y)]
    top, bottom = bounds[hit, 1], bounds[hit, 3]
    ys = bottom - position * (bottom - top)
    xs = xs[hit]
    # the samples sit half a step inside the ends: carry the end heights out to the edges
    points = np.concatenate([[[min_x, ys[0]]], np.stack([xs, ys], 1), [[max_x, ys[-1]]]])
    line = LineString(points)
    if tolerance > 0:
        line = line.simplify(tolerance, preserve_topology=False)
    return [(float(x), float(y)) for x, y in line.coords]


def lines_from_detections(boxes: Any, labels: Any, scores: Any, mask_probs: Any,
                          classes: Sequence[str], image_size: Tuple[int, int], *,
                          postprocess: PostProcess = PostProcess(),
                          baseline_position: float = BASELINE_POSITION
                          ) -> Tuple[List[TextLine], Dict[str, int]]:
    """A line model's detections on one image -> text lines with polygon and baseline.

    Args:
        boxes: Float[N, 4] xyxy in ORIGINAL image pixels.
        labels: Int64[N] in 1..C (label i is ``classes[i - 1]``).
        scores: Float[N].
        mask_probs: Float[N, 1, M, M] (or [N, M, M]) mask probabilities over each box.
        classes: the line model's class names (line types), without background.
        image_size: (height, width) of the original image.
        postprocess: the line model's settings
            (:class:`~maskdla.prediction.vectorize.PostProcess`): ``score_thresh`` and
            ``mask_thresh`` (detections scoring below, mask pixels below, are out) and
            ``tolerance`` (polygon and baseline simplification, in pixels); a line is its
            mask's largest component, whatever ``largest_only`` and ``min_area`` say, and
            lines are never merged.
        baseline_position: see :func:`polygon_baseline`.

    Returns:
        ``(lines, dropped)``: the lines in detection order (ids ``l1, l2, ...``,
        ``region_id`` empty: :mod:`maskdla.prediction` places them into regions), each
        with its largest mask component as polygon (integer points) and its baseline;
        ``dropped`` counts detections that gave no line, by reason (``"empty mask"``).
        Detections below ``postprocess.score_thresh`` are not lines and are not counted.
    """
    scores = np.asarray(as_numpy(scores), dtype=np.float64).reshape(-1)
    labels = np.asarray(as_numpy(labels)).reshape(-1)
    keep, components = scored_mask_polygons(
        boxes, scores, mask_probs, image_size,
        dataclasses.replace(postprocess, min_area=0.0, largest_only=True))
    height, width = int(image_size[0]), int(image_size[1])
    lines: List[TextLine] = []
    dropped: Dict[str, int] = {}
    for detection, parts in zip(keep.tolist(), components):
        snapped = snap_to_pixels(parts[:1], (height, width))
        polygon = snapped[0] if snapped else None
        if polygon is None or polygon.is_empty:
            dropped["empty mask"] = dropped.get("empty mask", 0) + 1
            continue
        baseline = polygon_baseline(polygon, baseline_position, postprocess.tolerance)
        lines.append(TextLine(
            id=f"l{len(lines) + 1}", region_id="",
            polygon=[(x, y) for x, y in np.asarray(polygon.exterior.coords)[:-1].tolist()],
            baseline=[(round(x), round(y)) for x, y in baseline],
            label=classes[int(labels[detection]) - 1], score=float(scores[detection])))
    return lines, dropped

