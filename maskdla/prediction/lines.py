"""Text lines into their regions: pages a transcription pipeline can read (issue 28).

:func:`place_lines` takes a page's regions (a region model's, or none) and a line model's
lines (:func:`maskdla.prediction.baselines.lines_from_detections`) and returns the page
with every line inside a region, in reading order:

1. **Transcribable lines only** (:func:`transcribable`): a line needs a baseline of two
   distinct points and a polygon of three; others are dropped and counted.
2. **Duplicates** (:func:`drop_duplicates`): a line whose polygon overlaps a
   higher-scoring line's by more than :data:`DUPLICATE_IOU` (IoU) is the same line
   detected twice (e.g. under two line types) and is dropped and counted.
3. **Placement** (:func:`assign_lines`): each line goes into the region holding the largest
   part of it (polygon area; baseline length when the line has no polygon), if that part
   is at least :data:`MIN_SHARE` of the line. Only regions the writers give lines are
   candidates (PAGE ``TextRegion``, ALTO ``TextBlock``: not a staff's ``MusicRegion`` or
   an image).
4. **Lines outside every region** (:func:`orphan_regions`): lines that stack into one block
   (overlapping in x by more than :data:`STACK_OVERLAP` of the narrower, at most
   :data:`STACK_GAP` line heights apart) become one new region, the convex hull of its
   lines, labelled :func:`orphan_zone_label` (SegmOnto's ``MainZone`` unless the region
   model names its text zone otherwise), without a score (no model detected it).
5. **Reading order**: the regions by :func:`maskdla.prediction.order.layout_reading_order`
   (ids ``r1, r2, ...``), the lines of each region by
   :func:`maskdla.prediction.order.line_order` (top to bottom, column by column; ids
   ``l1, l2, ...`` across the page, ``page.lines`` in that order).

Nothing is dropped without a count: :class:`PlacedLines` carries ``dropped`` (reason ->
lines) and ``generated`` (regions made for lines outside every region).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry

from maskdla.data import alto, pagexml
from maskdla.data.page import Page, Point, Region, TextLine
from maskdla.prediction.order import layout_reading_order, line_order
from maskdla.prediction.vectorize import snap_to_pixels

__all__ = ["DEFAULT_ZONE_LABEL", "TEXT_ZONE_LABELS", "MIN_SHARE", "DUPLICATE_IOU",
           "STACK_OVERLAP", "STACK_GAP", "PlacedLines", "holds_lines", "orphan_zone_label",
           "transcribable", "drop_duplicates", "assign_lines", "orphan_regions",
           "place_lines"]

#: label of a region made for lines outside every region: SegmOnto's main text zone,
#: what eScriptorium users import their lines into
DEFAULT_ZONE_LABEL = "MainZone"
#: a region model's text-zone classes, in order of preference, that name a made region
TEXT_ZONE_LABELS = (DEFAULT_ZONE_LABEL, "text", "paragraph", "TextRegion")
#: a line belongs to the region holding the largest part of it if that part is at least
#: this share of it; a line mostly outside every region gets a region of its own
MIN_SHARE = 0.5
#: two lines whose polygons' intersection over union exceeds this are one line detected
#: twice; the higher-scoring stays
DUPLICATE_IOU = 0.5
#: lines outside every region stack into one block when they overlap in x by more than
#: this share of the narrower line ...
STACK_OVERLAP = 0.5
#: ... and lie at most this many line heights (of the taller line) apart vertically
STACK_GAP = 1.0
#: half the thickness (px) given to a line known by its baseline only, to measure it
BASELINE_HALF_WIDTH = 1.0


class PlacedLines(NamedTuple):
    """What :func:`place_lines` gives.

    Attributes:
        page: the page: regions in reading order (``r1, r2, ...``), lines inside them in
            reading order (``l1, l2, ...``), ``reading_order`` set.
        dropped: lines that are not on the page, by reason.
        generated: how many regions were made for lines outside every region.
    """

    page: Page
    dropped: Dict[str, int]
    generated: int


def holds_lines(region: Region) -> bool:
    """Whether both writers give ``region`` text lines (a PAGE TextRegion, an ALTO
    TextBlock): a staff's MusicRegion or an image cannot hold one."""
    return pagexml.holds_lines(region) and alto.holds_lines(region)


def orphan_zone_label(classes: Sequence[str]) -> str:
    """The label of a region made for lines outside every region: the first of
    :data:`TEXT_ZONE_LABELS` among the region model's ``classes``, else
    :data:`DEFAULT_ZONE_LABEL` (also without a region model)."""
    return next((label for label in TEXT_ZONE_LABELS if label in classes), DEFAULT_ZONE_LABEL)


def _count(dropped: Dict[str, int], reason: str, number: int = 1) -> None:
    if number:
        dropped[reason] = dropped.get(reason, 0) + number


def _distinct(points: Sequence[Point]) -> List[Point]:
    """The points without repeats (a closed ring's last point, a doubled vertex)."""
    return list(dict.fromkeys((float(x), float(y)) for x, y in points))


def transcribable(lines: Sequence[TextLine], dropped: Dict[str, int]) -> List[TextLine]:
    """The lines with a baseline of >= 2 distinct points and a polygon of >= 3; the others
    are counted in ``dropped`` (``"no baseline"``, ``"polygon under 3 points"``)."""
    kept = []
    for line in lines:
        if len(_distinct(line.baseline)) < 2:
            _count(dropped, "no baseline")
        elif len(_distinct(line.polygon)) < 3:
            _count(dropped, "polygon under 3 points")
        else:
            kept.append(line)
    return kept


def _geometry(line: TextLine) -> BaseGeometry:
    """The line's area: its polygon (repaired when invalid), else its baseline thickened
    by :data:`BASELINE_HALF_WIDTH`; empty when it has neither."""
    if len(_distinct(line.polygon)) >= 3:
        polygon = Polygon(line.polygon)
        return polygon if polygon.is_valid else shapely.make_valid(polygon)
    if len(_distinct(line.baseline)) >= 2:
        return LineString(line.baseline).buffer(BASELINE_HALF_WIDTH, cap_style="flat")
    return Polygon()


def _box(line: TextLine) -> Tuple[float, float, float, float]:
    points = line.polygon if len(_distinct(line.polygon)) >= 3 else line.baseline
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return min(xs), min(ys), max(xs), max(ys)


def drop_duplicates(lines: Sequence[TextLine], dropped: Dict[str, int],
                    iou: float = DUPLICATE_IOU) -> List[TextLine]:
    """The lines without those overlapping a higher-scoring kept line by more than
    ``iou`` (counted as ``"duplicate line"``), in their given order. A line without a
    score counts as scoring 1."""
    if len(lines) < 2:
        return list(lines)
    geometries = np.asarray([_geometry(line) for line in lines], dtype=object)
    by_score = sorted(range(len(lines)), key=lambda i: -(lines[i].score
                                                         if lines[i].score is not None else 1.0))
    tree = shapely.STRtree(geometries)
    kept: List[int] = []
    taken = np.zeros(len(lines), dtype=bool)
    for i in by_score:
        near = [j for j in tree.query(geometries[i]).tolist() if taken[j]]
        shared = [geometries[i].intersection(geometries[j]).area for j in near]
        union = [geometries[i].union(geometries[j]).area for j in near]
        if any(u > 0 and s / u > iou for s, u in zip(shared, union)):
            _count(dropped, "duplicate line")
            continue
        taken[i] = True
        kept.append(i)
    return [lines[i] for i in sorted(kept)]


def assign_lines(regions: Sequence[Region], lines: Sequence[TextLine],
                 min_share: float = MIN_SHARE) -> List[Optional[int]]:
    """For each line, the index of the region holding it (:func:`holds_lines` regions
    only), or None when no region holds ``min_share`` of it.

    The share is of the line's polygon area, or of its baseline's length when it has no
    polygon; of several regions the one holding the largest share wins.
    """
    candidates = [k for k, region in enumerate(regions)
                  if holds_lines(region) and len(_distinct(region.polygon)) >= 3]
    if not candidates or not lines:
        return [None] * len(lines)
    shapes = [Polygon(regions[k].polygon) for k in candidates]
    shapes = np.asarray([s if s.is_valid else shapely.make_valid(s) for s in shapes], dtype=object)
    tree = shapely.STRtree(shapes)
    result: List[Optional[int]] = []
    for line in lines:
        if len(_distinct(line.polygon)) >= 3:
            part, measure = _geometry(line), shapely.area
        elif len(_distinct(line.baseline)) >= 2:
            part, measure = LineString(line.baseline), shapely.length
        else:
            result.append(None)
            continue
        whole = float(measure(part))
        near = tree.query(part)
        if whole <= 0 or not len(near):
            result.append(None)
            continue
        shares = measure(shapely.intersection(part, shapes[near])) / whole
        best = int(np.argmax(shares))
        result.append(candidates[int(near[best])] if shares[best] >= min_share else None)
    return result


def _stacks(boxes: np.ndarray) -> List[List[int]]:
    """Groups of lines (boxes Float[N, 4]) that stack into one block: connected by an
    x-overlap above :data:`STACK_OVERLAP` of the narrower and a vertical gap of at most
    :data:`STACK_GAP` heights of the taller; each group in index order."""
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    widths = boxes[:, 2] - boxes[:, 0]
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            overlap = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            gap = max(boxes[j, 1] - boxes[i, 3], boxes[i, 1] - boxes[j, 3])
            if (overlap > STACK_OVERLAP * min(widths[i], widths[j])
                    and gap <= STACK_GAP * max(heights[i], heights[j])):
                parent[root(i)] = root(j)
    groups: Dict[int, List[int]] = {}
    for i in range(len(boxes)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def orphan_regions(lines: Sequence[TextLine], image_size: Tuple[int, int], label: str
                   ) -> List[Tuple[Region, List[int]]]:
    """Regions for lines outside every region: one per stack of lines (:func:`_stacks`),
    the convex hull of its lines in integer points inside the page.

    Args:
        lines: the lines no region holds.
        image_size: (height, width) of the page.
        label: the regions' class.

    Returns:
        ``(region, indices of its lines)`` per stack (ids empty: :func:`place_lines`
        numbers them); a stack whose hull collapses (thinner than a pixel) is left out.
    """
    if not lines:
        return []
    boxes = np.asarray([_box(line) for line in lines], dtype=np.float64)
    made = []
    for members in _stacks(boxes):
        hull = shapely.union_all([_geometry(lines[i]) for i in members]).convex_hull
        if not isinstance(hull, Polygon):  # a lone straight baseline: give it a body
            hull = hull.buffer(BASELINE_HALF_WIDTH)
        (polygon,) = snap_to_pixels([hull], image_size)
        if polygon is None:
            continue
        points = [(x, y) for x, y in np.asarray(polygon.exterior.coords)[:-1].tolist()]
        made.append((Region(id="", kind="TextRegion", label=label, polygon=points), members))
    return made


def place_lines(page: Page, lines: Sequence[TextLine], *,
                orphan_label: str = DEFAULT_ZONE_LABEL,
                dropped: Optional[Dict[str, int]] = None) -> PlacedLines:
    """``page``'s regions with ``lines`` placed into them, all in reading order (the steps:
    module docstring).

    Args:
        page: the regions (their ``lines`` are replaced; a page without regions is fine).
        lines: the lines to place, e.g. from
            :func:`~maskdla.prediction.baselines.lines_from_detections`.
        orphan_label: class of the regions made for lines outside every region.
        dropped: counts of earlier drops (e.g. ``lines_from_detections``'), added to.

    Returns:
        :class:`PlacedLines`: a new page (``page`` is not changed; its regions' ids
        become ``r1, r2, ...`` in the new reading order), the drops by reason, and the
        number of regions made.
    """
    dropped = dict(dropped or {})
    lines = drop_duplicates(transcribable(lines, dropped), dropped)
    regions = list(page.regions)
    owners = assign_lines(regions, lines)
    orphans = [n for n, owner in enumerate(owners) if owner is None]
    made = orphan_regions([lines[n] for n in orphans], (page.height, page.width), orphan_label)
    placed = set()
    for region, members in made:
        owners_index = len(regions)
        regions.append(region)
        for member in members:
            owners[orphans[member]] = owners_index
            placed.add(orphans[member])
    _count(dropped, "no region", len(orphans) - len(placed))

    polygons = [Polygon(region.polygon) if len(region.polygon) >= 3 else
                LineString(region.polygon) if len(region.polygon) == 2 else Polygon()
                for region in regions]
    ordered = layout_reading_order(polygons, [region.label for region in regions])
    result = Page(image_filename=page.image_filename, width=page.width, height=page.height)
    for number, k in enumerate(ordered, 1):
        region = regions[k]
        result.regions.append(Region(id=f"r{number}", kind=region.kind, label=region.label,
                                     polygon=list(region.polygon), score=region.score))
        members = [n for n, owner in enumerate(owners) if owner == k]
        boxes = np.asarray([_box(lines[n]) for n in members], dtype=np.float64).reshape(-1, 4)
        for position in line_order(boxes):
            line = lines[members[position]]
            result.lines.append(TextLine(
                id=f"l{len(result.lines) + 1}", region_id=f"r{number}",
                polygon=list(line.polygon), baseline=list(line.baseline), text=line.text,
                label=line.label, score=line.score))
    result.reading_order = [region.id for region in result.regions]
    return PlacedLines(result, dropped, len(made))
