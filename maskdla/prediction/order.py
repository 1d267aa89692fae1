"""Reading order by layout: the regions of a manuscript page, and the lines of a region.

:func:`layout_reading_order` orders a page's regions as a reader of a manuscript does:

1. **Running titles first** (:data:`RUNNING_TITLE_LABELS`), then the page furniture above
   the middle of the text (:data:`FURNITURE_LABELS`: folio numbers, quire marks), read
   top to bottom, left to right (:func:`~maskdla.prediction.vectorize.reading_order`).
2. **The text, column by column** (:func:`column_order` over every region that is not a
   title, furniture, margin or drop capital): columns left to right, each top to bottom;
   inside what has no columns the row rule of
   :func:`~maskdla.prediction.vectorize.reading_order` (a drop capital beside its staff).
3. **A drop capital** (:data:`DROP_CAPITAL_LABELS`) right before the text region it sits
   at; **a marginal note** (:data:`MARGIN_LABELS`) after the column it stands beside
   (several beside one column: top to bottom).
4. The furniture below the middle of the text last (catchwords, quire marks, a folio
   number at the foot).

Labels are matched by their main type (``MarginTextZone#2`` and ``MarginTextZone:note``
are margins); a model whose classes are none of these (the study's drop-capital, staff,
lyrics) gets the column rule alone, which on a page without columns is
:func:`~maskdla.prediction.vectorize.reading_order` itself.

:func:`column_order` is a recursive cut of boxes: a vertical cut where a gap runs between
the boxes' x-extents (columns, left to right), else the boxes spanning most of the width
(a heading over two columns) cut the rest into bands read between them, else a
horizontal cut where a gap runs between the y-extents (bands, top to bottom), else the
leaf rule. The text lines of a region are ordered by the same cut
(:func:`line_order`), with lines side by side in a row read left to right.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from maskdla.prediction.vectorize import reading_order

__all__ = ["RUNNING_TITLE_LABELS", "FURNITURE_LABELS", "MARGIN_LABELS", "DROP_CAPITAL_LABELS",
           "region_role", "column_order", "line_order", "layout_reading_order"]

#: read first (SegmOnto, PAGE ``@type``)
RUNNING_TITLE_LABELS = ("RunningTitleZone", "header")
#: page furniture: first when above the middle of the text, else last
FURNITURE_LABELS = ("NumberingZone", "QuireMarksZone", "page-number", "catch-word",
                    "signature-mark", "footer")
#: marginal notes: after the column they stand beside
MARGIN_LABELS = ("MarginTextZone", "marginalia")
#: drop capitals: right before the text region they sit at
DROP_CAPITAL_LABELS = ("DropCapitalZone", "drop-capital")

#: a box spanning at least this share of the width of its group cuts the group into bands
SPAN_SHARE = 0.6
#: each box's extent is shrunk by this share of its size before looking for a gap, so that
#: neighbours overlapping by a few pixels (imprecise masks) still leave a cut between them
CUT_TOLERANCE = 0.02
#: lines side by side join a row when they overlap vertically by more than this share of
#: the lower one's height
ROW_OVERLAP = 0.5

Boxes = np.ndarray  # Float[N, 4] x0, y0, x1, y1
#: where an item sits in the cut: ("column", k), ("band", k), ("row", k) steps
Path = Tuple[Tuple[str, int], ...]
Leaf = Callable[[Boxes, List[int]], List[int]]


def region_role(label: str) -> str:
    """``title``, ``furniture``, ``margin``, ``drop-capital`` or ``text`` for a region
    class (its main type: ``MarginTextZone#1`` is a margin)."""
    main = label.split("#", 1)[0].split(":", 1)[0]
    for role, labels in (("title", RUNNING_TITLE_LABELS), ("furniture", FURNITURE_LABELS),
                         ("margin", MARGIN_LABELS), ("drop-capital", DROP_CAPITAL_LABELS)):
        if main in labels:
            return role
    return "text"


# --------------------------------------------------------------------------------------
# The recursive cut


def _gaps(starts: np.ndarray, ends: np.ndarray, items: List[int]) -> List[List[int]]:
    """``items`` split where a gap runs between their extents ``[start, end]``, groups in
    order along the axis."""
    groups: List[List[int]] = []
    reach = -np.inf
    for i in sorted(items, key=lambda k: (starts[k], ends[k])):
        if starts[i] > reach:
            groups.append([])
        groups[-1].append(i)
        reach = max(reach, ends[i])
    return groups


def _side_by_side(boxes: Boxes, groups: List[List[int]]) -> bool:
    """Whether two of the groups share some height: columns, not a staircase of short
    pieces one below the other."""
    extents = [(boxes[g, 1].min(), boxes[g, 3].max()) for g in groups]
    return any(min(a[1], b[1]) > max(a[0], b[0])
               for n, a in enumerate(extents) for b in extents[n + 1:])


def _shrunk(boxes: Boxes, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    low, high = boxes[:, axis], boxes[:, axis + 2]
    margin = CUT_TOLERANCE * (high - low)
    return low + margin, high - margin


def column_order(boxes: Boxes, items: Optional[Sequence[int]] = None,
                 leaf: Optional[Leaf] = None) -> List[Tuple[int, Path]]:
    """``items`` (default all) of ``boxes`` in reading order by columns (module docstring).

    Args:
        boxes: Float[N, 4] x0, y0, x1, y1.
        items: the indices to order.
        leaf: orders a group the cut cannot split (default: the row rule of
            :func:`~maskdla.prediction.vectorize.reading_order`).

    Returns:
        ``(index, path)`` in reading order; ``path`` says where the cut put it, so that
        :func:`column_of` can tell which column an item is in.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    items = list(range(len(boxes))) if items is None else list(items)
    leaf = leaf or _rows_of_regions
    x_start, x_end = _shrunk(boxes, 0)
    y_start, y_end = _shrunk(boxes, 1)

    def order(group: List[int], path: Path) -> List[Tuple[int, Path]]:
        if len(group) <= 1:
            return [(i, path) for i in group]
        columns = _gaps(x_start, x_end, group)
        if len(columns) > 1 and _side_by_side(boxes, columns):
            return [entry for k, column in enumerate(columns)
                    for entry in order(column, path + (("column", k),))]
        bands = _bands_between_spanners(group)
        if bands is not None:
            result: List[Tuple[int, Path]] = []
            for k, band in enumerate(bands):
                step = ("band", k)
                result += ([(i, path + (step,)) for i in band] if k % 2
                           else order(band, path + (step,)))
            return result
        rows = _gaps(y_start, y_end, group)
        if len(rows) > 1:
            return [entry for k, row in enumerate(rows)
                    for entry in order(row, path + (("row", k),))]
        return [(i, path) for i in leaf(boxes, group)]

    def _bands_between_spanners(group: List[int]) -> Optional[List[List[int]]]:
        """[band, spanner row, band, spanner row, ..., band] when boxes spanning most of
        the group's width stand over (or between) columns of the others; else None. A
        spanner's row is the spanner and the boxes side by side with it, left to right (a
        short heading beside a line of the column)."""
        width = boxes[group, 2].max() - boxes[group, 0].min()
        spanners = [i for i in group if boxes[i, 2] - boxes[i, 0] >= SPAN_SHARE * width]
        rest = [i for i in group if i not in spanners]
        if not spanners or len(rest) < 2:
            return None
        columns = _gaps(x_start, x_end, rest)
        if len(columns) < 2 or not _side_by_side(boxes, columns):
            return None
        centre = (boxes[:, 1] + boxes[:, 3]) / 2
        spanners.sort(key=lambda i: centre[i])
        rows = [[spanner] for spanner in spanners]
        bands: List[List[int]] = [[] for _ in range(len(spanners) + 1)]
        for i in rest:
            beside = next((k for k, s in enumerate(spanners) if _in_a_row(boxes, i, s)), None)
            if beside is not None:
                rows[beside].append(i)
            else:
                bands[int(np.searchsorted(centre[spanners], centre[i]))].append(i)
        result: List[List[int]] = []
        for k, row in enumerate(rows):
            result += [bands[k], sorted(row, key=lambda i: boxes[i, 0])]
        return result + [bands[-1]]

    return order(items, ())


def column_of(path: Path) -> Path:
    """The column an item of :func:`column_order` is in: its path up to its last column
    step (``()``: the whole page, which has no columns there)."""
    steps = [n for n, (kind, _) in enumerate(path) if kind == "column"]
    return path[:steps[-1] + 1] if steps else ()


def _rows_of_regions(boxes: Boxes, items: List[int]) -> List[int]:
    polygons = [shapely.box(*boxes[i]) for i in items]
    return [items[k] for k in reading_order(polygons)]


def _in_a_row(boxes: Boxes, i: int, j: int) -> bool:
    """Whether boxes ``i`` and ``j`` stand side by side: apart in x, overlapping in height
    by more than :data:`ROW_OVERLAP` of the lower one."""
    apart = boxes[i, 0] >= boxes[j, 2] or boxes[j, 0] >= boxes[i, 2]
    shared = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
    lowest = min(boxes[i, 3] - boxes[i, 1], boxes[j, 3] - boxes[j, 1])
    return apart and shared > ROW_OVERLAP * lowest


def _rows_of_lines(boxes: Boxes, items: List[int]) -> List[int]:
    """Lines by their middle height, top to bottom; lines side by side (apart in x,
    overlapping in height) read left to right as one row. Unlike the rows of regions, a
    line never joins a row it overlaps in x: the lines of one column stay one below the
    other however skewed they are."""
    middle = (boxes[:, 1] + boxes[:, 3]) / 2
    rows: List[List[int]] = []
    for i in sorted(items, key=lambda k: (middle[k], boxes[k, 0])):
        if rows and all(_in_a_row(boxes, i, j) for j in rows[-1]):
            rows[-1].append(i)
        else:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda k: boxes[k, 0])]


def line_order(boxes: Boxes) -> List[int]:
    """The lines of one region (boxes Float[N, 4]) in reading order: column by column,
    each top to bottom (:func:`column_order` with the line rows)."""
    return [i for i, _ in column_order(boxes, leaf=_rows_of_lines)]


# --------------------------------------------------------------------------------------
# Regions of a page


def _nearest(boxes: Boxes, item: int, candidates: Sequence[int],
             max_gap: float = np.inf) -> Optional[int]:
    """The candidate beside ``item``: one sharing height with it, within ``max_gap`` in x.
    With a finite ``max_gap`` the one sharing the most height (then the nearest in x),
    else None; without one the nearest in x (then sharing the most height), else the
    candidate nearest in the plane."""
    best, best_key = None, None
    for j in candidates:
        shared = min(boxes[item, 3], boxes[j, 3]) - max(boxes[item, 1], boxes[j, 1])
        gap = max(boxes[j, 0] - boxes[item, 2], boxes[item, 0] - boxes[j, 2], 0.0)
        if shared > 0 and gap <= max_gap:
            key = (-shared, gap) if np.isfinite(max_gap) else (gap, -shared)
            if best_key is None or key < best_key:
                best, best_key = j, key
    if best is not None or np.isfinite(max_gap) or not candidates:
        return best
    dx = np.maximum.reduce([boxes[candidates, 0] - boxes[item, 2],
                            boxes[item, 0] - boxes[candidates, 2], np.zeros(len(candidates))])
    dy = np.maximum.reduce([boxes[candidates, 1] - boxes[item, 3],
                            boxes[item, 1] - boxes[candidates, 3], np.zeros(len(candidates))])
    return list(candidates)[int(np.argmin(np.hypot(dx, dy)))]


def layout_reading_order(polygons: Sequence[BaseGeometry], labels: Sequence[str]
                         ) -> List[int]:
    """The regions of a page in reading order by layout (the rule: module docstring).

    Args:
        polygons: the regions' outlines (any shapely geometry; only their boxes count).
        labels: their classes, same length.

    Returns:
        The indices of ``polygons`` in reading order.
    """
    if len(polygons) != len(labels):
        raise ValueError("polygons and labels must have the same length")
    if not polygons:
        return []
    boxes = shapely.bounds(np.asarray(polygons, dtype=object))
    roles: Dict[str, List[int]] = {"title": [], "furniture": [], "margin": [],
                                   "drop-capital": [], "text": []}
    for i, label in enumerate(labels):
        roles[region_role(label)].append(i)
    text, capitals, margins = roles["text"], roles["drop-capital"], roles["margin"]
    if not text:  # nothing to stand beside: drop capitals and notes are the text then
        text, capitals, margins = capitals + margins, [], []
    body = column_order(boxes, text)
    body = _with_drop_capitals(boxes, body, capitals)
    body = _with_margins(boxes, body, margins)
    head, tail = list(roles["title"]), []
    if text:
        middle = (boxes[text, 1].min() + boxes[text, 3].max()) / 2
        for i in roles["furniture"]:
            (head if (boxes[i, 1] + boxes[i, 3]) / 2 < middle else tail).append(i)
    else:
        head += roles["furniture"]
    return (_rows_of_regions(boxes, head) + [i for i, _ in body]
            + _rows_of_regions(boxes, tail))


def _with_drop_capitals(boxes: Boxes, body: List[Tuple[int, Path]], capitals: List[int]
                        ) -> List[Tuple[int, Path]]:
    """Each drop capital right before the text region beside it (sharing the most height
    within its own width of it; else the nearest), several before one top to bottom."""
    text = [i for i, _ in body]
    before: Dict[int, List[int]] = {}
    for capital in capitals:
        width = boxes[capital, 2] - boxes[capital, 0]
        target = _nearest(boxes, capital, text, max_gap=width)
        target = target if target is not None else _nearest(boxes, capital, text)
        before.setdefault(target, []).append(capital)
    result: List[Tuple[int, Path]] = []
    for i, path in body:
        ahead = sorted(before.get(i, []), key=lambda k: (boxes[k, 1], boxes[k, 0]))
        result += [(k, path) for k in ahead] + [(i, path)]
    return result


def _with_margins(boxes: Boxes, body: List[Tuple[int, Path]], margins: List[int]
                  ) -> List[Tuple[int, Path]]:
    """Each marginal note after the last region of the column it stands beside (the text
    region sharing height with it nearest in x; else the nearest), top to bottom."""
    text = [i for i, _ in body]
    path_of = dict(body)
    after: Dict[Path, List[int]] = {}
    for margin in margins:
        target = _nearest(boxes, margin, text)
        after.setdefault(column_of(path_of[target]), []).append(margin)
    result = list(body)
    for column, notes in after.items():
        last = max(n for n, (_, path) in enumerate(result) if path[:len(column)] == column)
        notes = sorted(notes, key=lambda k: (boxes[k, 1], boxes[k, 0]))
        result[last + 1:last + 1] = [(k, column) for k in notes]
    return result
