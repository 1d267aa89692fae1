"""Masks to polygons, overlap merging and reading order: the geometry of prediction.

Everything here is numpy + shapely (torch tensors are accepted and converted); no model.

Coordinates are pixels of the original page image, x to the right, y down, and pixel
``(row, col)`` covers the square ``[col, col + 1] x [row, row + 1]``, so the area of a
polygon traced around a binary mask equals the mask's pixel count (before simplification;
marching squares with pixel corners restored traces the exact pixel boundary).

Contours are traced with marching squares (:func:`trace_contours`), vectorized over all
cells of all masks at once; only linking segments into rings is a Python loop, one step
per polygon vertex. The model's masks are not pasted into the page: each detection's
``M x M`` probability map (torchvision's ``roi_heads`` output, M = 28) is traced at its
own resolution and the vertices are scaled into the detection's box
(:func:`instance_masks_to_polygons`). This follows torchvision's
``paste_masks_in_image``: the map is zero-padded by one cell and bilinearly resized to
the padded box, so the 0.5 contour of that resize crosses every grid edge exactly where
marching squares puts its vertex; only between grid lines is the contour a straight
segment instead of a hyperbola.

Holes are dropped: a PAGE ``Coords`` element holds one ring, so a region is the area
inside its outer contour (a component inside a hole of another component of the same
mask is part of that filled area and not a region of its own).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import shapely
from shapely.geometry import Polygon

__all__ = [
    "PostProcess",
    "Contours",
    "as_numpy",
    "scored_mask_polygons",
    "trace_contours",
    "mask_to_polygons",
    "instance_masks_to_polygons",
    "overlap_ratio",
    "merge_overlaps",
    "snap_to_pixels",
    "reading_order",
]


@dataclasses.dataclass(frozen=True)
class PostProcess:
    """How a model's detections become regions: the settings of prediction's
    post-processing, each default here (:class:`maskdla.prediction.Predictor`,
    :func:`maskdla.prediction.detections_to_page`, the line model's
    :func:`maskdla.prediction.baselines.lines_from_detections` and the command line's
    flags take them from this class).

    Attributes:
        score_thresh: detections scoring below are dropped.
        mask_thresh: mask probability from which a pixel belongs to a region.
        overlap_thresh: regions overlapping more (intersection over the smaller area) are
            merged, the higher-scoring class wins; >= 1 disables merging
            (:func:`merge_overlaps`).
        no_merge_classes: classes never merged (e.g. ``("drop-capital",)``; any iterable
            of names, kept as a tuple).
        tolerance: polygon simplification tolerance in pixels (0 keeps every vertex).
        min_area: components of at most this many square pixels are dropped.
        largest_only: one region per detection, its largest connected component.
    """

    score_thresh: float = 0.5
    mask_thresh: float = 0.5
    overlap_thresh: float = 0.5
    no_merge_classes: Tuple[str, ...] = ()
    tolerance: float = 1.0
    min_area: float = 0.0
    largest_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "no_merge_classes", tuple(self.no_merge_classes))


# --------------------------------------------------------------------------------------
# Marching squares
#
# A cell has corners tl, tr, br, bl (bits 1, 2, 4, 8 when inside, i.e. value >= level)
# and edges T (tl-tr), R (tr-br), B (bl-br), L (tl-bl). Every contour segment of a cell
# joins the crossing points on two of its edges and is oriented so that the inside lies
# on the same side of every segment; each crossing point then starts exactly one segment
# and ends exactly one, and the rings are the cycles of "next segment".
# Cases 5 and 10 (two diagonal corners inside) are saddles, split by the cell's mean:
# index 16 + case when the mean is inside (the inside corners are joined).

_T, _R, _B, _L = 0, 1, 2, 3
_EDGE_MIDPOINT = {_T: (0.5, 0.0), _R: (1.0, 0.5), _B: (0.5, 1.0), _L: (0.0, 0.5)}
_CORNER_XY = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]  # tl, tr, br, bl
_CORNER_EDGES = [(_L, _T), (_T, _R), (_R, _B), (_B, _L)]  # the edges around each corner


def _segment_table() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count[27], start_edge[27, 2], end_edge[27, 2]) of the oriented segments per case."""
    count = np.zeros(27, dtype=np.int64)
    start = np.zeros((27, 2), dtype=np.int64)
    end = np.zeros((27, 2), dtype=np.int64)
    for index in range(27):
        case = index - 16 if index >= 16 else index
        if index >= 16 and case not in (5, 10):
            continue
        inside = [bool(case >> bit & 1) for bit in range(4)]
        if case in (5, 10):
            joined_inside = index >= 16
            # cut off the corners that are NOT joined through the cell's middle
            cut = [c for c in range(4) if inside[c] != joined_inside]
            segments = [(_CORNER_EDGES[c], c) for c in cut]
        elif sum(inside) in (1, 3):
            lonely = inside.index(sum(inside) == 1)  # the corner alone on its side
            segments = [(_CORNER_EDGES[lonely], lonely)]
        elif sum(inside) == 2:
            vertical = inside[0] == inside[3]  # tl, bl on one side: the contour runs T-B
            segments = [((_T, _B) if vertical else (_L, _R), 0)]
        else:
            segments = []
        for slot, ((edge_a, edge_b), corner) in enumerate(segments):
            # orient so that an inside corner lies to the right of the direction of
            # travel in image coordinates (y down): cross(direction, corner - a) > 0
            ax, ay = _EDGE_MIDPOINT[edge_a]
            bx, by = _EDGE_MIDPOINT[edge_b]
            cx, cy = _CORNER_XY[corner]
            cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if (cross > 0) != inside[corner]:
                edge_a, edge_b = edge_b, edge_a
            start[index, slot], end[index, slot] = edge_a, edge_b
        count[index] = len(segments)
    return count, start, end


_SEGMENT_COUNT, _SEGMENT_START, _SEGMENT_END = _segment_table()


class Contours(NamedTuple):
    """Closed rings traced by :func:`trace_contours`, stored flat.

    Attributes:
        coords: Float[V, 2] vertices ``(x, y)`` = (column, row) in grid coordinates;
            the vertices of a ring are contiguous, not closed, at least 3 per ring,
            starting at the ring's top-left vertex.
        ring_index: Int64[V] the ring of each vertex (0..K-1, non-decreasing).
        grid_index: Int64[K] the grid each ring belongs to.
        signed_area: Float64[K] > 0 for outer contours, < 0 for holes.
    """

    coords: np.ndarray
    ring_index: np.ndarray
    grid_index: np.ndarray
    signed_area: np.ndarray


def trace_contours(grids: np.ndarray, level: float = 0.5, pixel_corners: bool = False
                   ) -> Contours:
    """Trace the ``level`` contours of a batch of 2-D grids with marching squares.

    Args:
        grids: Float[N, H, W] values (N may be 1). A cell is inside where its value is
            ``>= level``. The outermost rows and columns must be outside (pad with zeros)
            so that every contour closes.
        level: the iso-value.
        pixel_corners: for binary masks: a segment that cuts a cell's corner also gets
            the cell's centre as a vertex. The grid nodes being pixel centres, the cell
            centre is a pixel corner, and the ring becomes the exact pixel boundary
            (straight runs are then collinear and simplification keeps rectangles
            rectangular). Saddle cells keep their cut, so that rings never touch.

    Returns:
        The rings, see :class:`Contours`.
    """
    grids = np.asarray(grids, dtype=np.float32)
    if grids.ndim != 3:
        raise ValueError(f"grids must be [N, H, W], got shape {grids.shape}")
    segments = _cell_segments(grids, level)
    start_id = _edge_ids(segments, segments.start_edge, grids.shape)
    end_id = _edge_ids(segments, segments.end_edge, grids.shape)
    points = _crossing_points(grids, level, segments)
    # successor[i] = the segment that starts where segment i ends
    order = np.argsort(start_id, kind="stable")
    successor = order[np.searchsorted(start_id, end_id, sorter=order)]
    # walking from the top-left start point of each ring makes that its first vertex:
    # simplification keeps a ring's first vertex, which should be a corner, not the
    # middle of a straight run
    top_left_first = np.lexsort((points[:, 0], points[:, 1]))
    visit, ring_of_visit = _cycles(successor, top_left_first)
    if pixel_corners:
        coords, ring_index = _with_pixel_corners(segments, points, visit, ring_of_visit)
    else:
        coords = points[visit]
        ring_index = ring_of_visit
    ring_count = int(ring_index[-1]) + 1 if ring_index.size else 0
    signed_area = _signed_areas(coords, ring_index, ring_count)
    grid_index = np.zeros(ring_count, dtype=np.int64)
    grid_index[ring_of_visit] = segments.grid[visit]
    return Contours(coords, ring_index, grid_index, signed_area)


class _Segments(NamedTuple):
    """The oriented contour segments of a batch of grids, one row per segment (a saddle
    cell's two segments are two rows): the grid, row and column of the segment's cell,
    the cell's case (index into the segment tables) and the edges the segment starts
    and ends on."""

    grid: np.ndarray
    row: np.ndarray
    col: np.ndarray
    case: np.ndarray
    start_edge: np.ndarray
    end_edge: np.ndarray


def _cell_segments(grids: np.ndarray, level: float) -> _Segments:
    """The segments of every cell the ``level`` contour crosses (saddles split by the
    cell's mean)."""
    inside = grids >= level
    cell_case = (inside[:, :-1, :-1].astype(np.int64) | inside[:, :-1, 1:] << 1
                 | inside[:, 1:, 1:] << 2 | inside[:, 1:, :-1] << 3)
    n_idx, r_idx, c_idx = np.nonzero((cell_case != 0) & (cell_case != 15))
    case = cell_case[n_idx, r_idx, c_idx]
    saddle = (case == 5) | (case == 10)
    if saddle.any():
        s_n, s_r, s_c = n_idx[saddle], r_idx[saddle], c_idx[saddle]
        mean = 0.25 * (grids[s_n, s_r, s_c] + grids[s_n, s_r, s_c + 1]
                       + grids[s_n, s_r + 1, s_c] + grids[s_n, s_r + 1, s_c + 1])
        case[saddle] += 16 * (mean >= level)
    # one row per segment: cells with two segments appear twice
    second = _SEGMENT_COUNT[case] == 2
    seg_cell = np.concatenate([np.arange(case.size), np.nonzero(second)[0]])
    seg_slot = np.concatenate([np.zeros(case.size, np.int64), np.ones(second.sum(), np.int64)])
    seg_case = case[seg_cell]
    return _Segments(n_idx[seg_cell], r_idx[seg_cell], c_idx[seg_cell], seg_case,
                     _SEGMENT_START[seg_case, seg_slot], _SEGMENT_END[seg_case, seg_slot])


def _edge_ids(segments: _Segments, edge: np.ndarray, shape: Tuple[int, int, int]
              ) -> np.ndarray:
    """A number for each segment's ``edge`` (one of its cell's T, R, B, L), the same for
    the cells on either side of the edge."""
    count, height, width = shape
    # horizontal edges (n, r, c)-(n, r, c+1) first, then vertical (n, r, c)-(n, r+1, c)
    row = segments.row + (edge == _B)
    col = segments.col + (edge == _R)
    horizontal = (edge == _T) | (edge == _B)
    h_id = (segments.grid * height + row) * (width - 1) + col
    v_id = count * height * (width - 1) + (segments.grid * (height - 1) + row) * width + col
    return np.where(horizontal, h_id, v_id)


def _crossing_points(grids: np.ndarray, level: float, segments: _Segments) -> np.ndarray:
    """Float[S, 2] (x, y): where each segment's start edge crosses ``level``, linear along
    the edge."""
    start_edge = segments.start_edge
    horizontal = (start_edge == _T) | (start_edge == _B)
    row_a = segments.row + (start_edge == _B)
    col_a = segments.col + (start_edge == _R)
    value_a = grids[segments.grid, row_a, col_a]
    value_b = grids[segments.grid, row_a + ~horizontal, col_a + horizontal]
    # kept off the grid nodes so that no two crossing points coincide (a node exactly at
    # the level would make rings touch there)
    t = np.clip((level - value_a) / (value_b - value_a), 1e-3, 1 - 1e-3)
    return np.stack([col_a + t * horizontal, row_a + t * ~horizontal], axis=1)


def _with_pixel_corners(segments: _Segments, points: np.ndarray, visit: np.ndarray,
                        ring_of_visit: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(coords, ring_index) of the rings walked in ``visit`` order, each corner-cutting
    segment followed by its cell's centre (a pixel corner); each ring rotated to start at
    its top-left vertex."""
    seg_case = segments.case
    opposite = (segments.start_edge + 2) % 4 == segments.end_edge
    corner = ~opposite & (seg_case != 5) & (seg_case != 10) & (seg_case < 16)
    # each segment contributes its start and, when it cuts a corner, the pixel corner
    per_segment = 1 + corner[visit]
    vertex_segment = np.repeat(visit, per_segment)
    ring_index = np.repeat(ring_of_visit, per_segment)
    is_centre = np.ones(vertex_segment.size, dtype=bool)
    is_centre[np.cumsum(per_segment) - per_segment] = False
    centres = np.stack([segments.col + 0.5, segments.row + 0.5], axis=1)
    coords = np.where(is_centre[:, None], centres[vertex_segment], points[vertex_segment])
    return _rotate_to_top_left(coords, ring_index), ring_index


def _cycles(successor: np.ndarray, priority: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Decompose the permutation ``successor`` (Int64[S]) into its cycles, in numpy.

    Each cycle is walked from its element that comes first in ``priority`` (a
    permutation of 0..S-1), cycles numbered in that order too. Pointer jumping: log2 of
    the longest cycle rounds, each a few array operations, instead of a Python step per
    element. Returns the elements in walking order (Int64[S]) and the cycle number of
    each (Int64[S], non-decreasing).
    """
    size = successor.size
    if size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rank = np.empty(size, dtype=np.int64)
    rank[priority] = np.arange(size)
    # head rank of each cycle: the minimum rank over ever longer stretches of successors
    head_rank, jump = rank.copy(), successor.copy()
    while True:
        widened = np.minimum(head_rank, head_rank[jump])
        jump = jump[jump]
        if np.array_equal(widened, head_rank):
            break
        head_rank = widened
    # distance of each element to the end of its cycle when cut just before the head
    is_last = rank[successor] == head_rank  # the successor is the head: cut here
    remaining = (~is_last).astype(np.int64)
    jump = np.where(is_last, np.arange(size), successor)
    while True:
        longer = remaining + remaining[jump]
        jump_next = jump[jump]
        if np.array_equal(jump_next, jump):
            break
        remaining, jump = longer, jump_next
    visit = np.lexsort((-remaining, head_rank))
    heads = head_rank[visit]
    cycle_of = np.cumsum(np.r_[True, heads[1:] != heads[:-1]]) - 1
    return visit, cycle_of


def _rotate_to_top_left(coords: np.ndarray, ring_index: np.ndarray) -> np.ndarray:
    """Rotate each ring of a flat, ring-contiguous vertex list to start at its top-left
    vertex (smallest y, then smallest x)."""
    ring_count = int(ring_index[-1]) + 1
    first, lengths = _ring_bounds(ring_index, ring_count)
    by_ring_then_top_left = np.lexsort((coords[:, 0], coords[:, 1], ring_index))
    top_left = by_ring_then_top_left[first] - first  # offset within each ring
    position = np.arange(coords.shape[0]) - first[ring_index]
    source = first[ring_index] + (position + top_left[ring_index]) % lengths[ring_index]
    return coords[source]


def _ring_bounds(ring_index: np.ndarray, ring_count: int) -> Tuple[np.ndarray, np.ndarray]:
    """First vertex and vertex count of each ring of a flat, ring-contiguous vertex list."""
    lengths = np.bincount(ring_index, minlength=ring_count)
    return np.cumsum(lengths) - lengths, lengths


def _signed_areas(coords: np.ndarray, ring_index: np.ndarray, ring_count: int) -> np.ndarray:
    """Shoelace area of each ring; > 0 when clockwise in image coordinates (y down)."""
    if ring_count == 0:
        return np.zeros(0)
    first, lengths = _ring_bounds(ring_index, ring_count)
    following = np.arange(1, coords.shape[0] + 1)
    following[first + lengths - 1] = first  # the last vertex of a ring closes it
    x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    cross = x * y[following] - x[following] * y
    return 0.5 * np.bincount(ring_index, weights=cross, minlength=ring_count)


# --------------------------------------------------------------------------------------
# Rings to regions


def _contours_to_polygons(contours: Contours, count: int, scale: np.ndarray, origin: np.ndarray,
                          image_size: Optional[Tuple[int, int]], tolerance: float,
                          min_area: float, largest_only: bool) -> List[List[Polygon]]:
    """Regions of each grid from its traced rings.

    Grid coordinates become pixels as ``xy * scale[n] + origin[n]`` (Float[N, 2] each).
    Holes are dropped and outer rings inside another outer ring of the same grid (islands
    in a hole) too; the rest is simplified (Douglas-Peucker, ``tolerance`` px), clipped to
    ``image_size`` ``(height, width)`` when given, made valid, split into parts, and
    parts of at most ``min_area`` px^2 dropped. Returns the polygons per grid, largest
    first (only the largest with ``largest_only``).
    """
    result: List[List[Polygon]] = [[] for _ in range(count)]
    outer = contours.signed_area > 0
    if not outer.any():
        return result
    keep_vertex = outer[contours.ring_index]
    new_ring_id = np.cumsum(outer) - 1
    ring_index = new_ring_id[contours.ring_index[keep_vertex]]
    owner = contours.grid_index[outer]
    vertex_owner = owner[ring_index]
    coords = contours.coords[keep_vertex] * scale[vertex_owner] + origin[vertex_owner]
    polygons = shapely.polygons(shapely.linearrings(coords, indices=ring_index))

    with_holes = np.zeros(count, dtype=bool)
    with_holes[contours.grid_index[contours.signed_area < 0]] = True
    if with_holes[owner].any():
        first, _ = _ring_bounds(ring_index, owner.size)
        nested = _nested_in_same_owner(polygons, owner, coords[first], with_holes)
        polygons, owner = polygons[~nested], owner[~nested]

    geometries = polygons
    if tolerance > 0:
        # plain Douglas-Peucker is several times faster than the topology-preserving
        # variant; the few rings it makes invalid are redone with the latter
        simplified = shapely.simplify(geometries, tolerance, preserve_topology=False)
        broken = ~shapely.is_valid(simplified) | shapely.is_empty(simplified)
        if broken.any():
            simplified[broken] = shapely.simplify(geometries[broken], tolerance,
                                                  preserve_topology=True)
        geometries = simplified
    # traced rings are simple (crossing points never coincide), so the polygons are
    # valid here, and stay valid unless clipping breaks them
    if image_size is not None:
        height, width = image_size
        xmin, ymin, xmax, ymax = shapely.bounds(geometries).T
        outside = (xmin < 0) | (ymin < 0) | (xmax > width) | (ymax > height)
        if outside.any():  # clip only what sticks out; clipping may break validity
            clipped = shapely.clip_by_rect(geometries[outside], 0, 0, width, height)
            invalid = ~shapely.is_valid(clipped)
            clipped[invalid] = shapely.make_valid(clipped[invalid])
            geometries[outside] = clipped
    parts, part_of = shapely.get_parts(geometries, return_index=True)
    is_polygon = shapely.get_type_id(parts) == 3
    parts, part_owner = parts[is_polygon], owner[part_of[is_polygon]]
    holed = shapely.get_num_interior_rings(parts) > 0
    if holed.any():
        parts[holed] = shapely.polygons(shapely.get_exterior_ring(parts[holed]))
    areas = shapely.area(parts)
    big = areas > max(min_area, 0.0)
    parts, part_owner, areas = parts[big], part_owner[big], areas[big]
    for i in np.lexsort((-areas, part_owner)).tolist():
        mine = result[part_owner[i]]
        if not (largest_only and mine):
            mine.append(parts[i])
    return result


def _nested_in_same_owner(polygons: np.ndarray, owner: np.ndarray, first_vertex: np.ndarray,
                          with_holes: np.ndarray) -> np.ndarray:
    """Bool[K]: the outer ring lies inside another outer ring of the same grid.

    Outer rings of one grid never cross, so a ring is inside another when its first
    vertex is; only grids that have holes can have such rings.
    """
    nested = np.zeros(owner.size, dtype=bool)
    for n in np.nonzero(with_holes)[0].tolist():
        members = np.nonzero(owner == n)[0]
        if members.size < 2:
            continue
        inner, outer = np.meshgrid(members, members, indexing="ij")
        inner, outer = inner[inner != outer], outer[inner != outer]
        inside = shapely.contains_xy(polygons[outer], first_vertex[inner, 0],
                                     first_vertex[inner, 1])
        nested[np.unique(inner[inside])] = True
    return nested


def mask_to_polygons(mask, *, tolerance: float = PostProcess.tolerance,
                     min_area: float = PostProcess.min_area,
                     largest_only: bool = PostProcess.largest_only, clip: bool = True
                     ) -> List[Polygon]:
    """Polygons around the connected components of one binary mask.

    Args:
        mask: Bool/UInt8/Float[H, W] (numpy or torch); inside where ``>= 0.5`` (a 0/1
            mask, or probabilities thresholded at 0.5).
        tolerance: Douglas-Peucker tolerance in pixels; 0 keeps every vertex.
        min_area: components of at most this many square pixels are dropped.
        largest_only: keep only the largest component.
        clip: clip to the image box ``[0, W] x [0, H]`` (contours stay inside anyway).

    Returns:
        Valid shapely polygons without holes, in pixel coordinates (see module doc),
        largest first. Components touch diagonally (8-connectivity) only when the
        pixel pair's neighbourhood says so (marching squares' saddle rule).
    """
    mask = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    binary = mask >= 0.5
    rows = np.nonzero(binary.any(axis=1))[0]
    if rows.size == 0:
        return []
    cols = np.nonzero(binary.any(axis=0))[0]
    # trace only the mask's bounding box (plus the zero border every contour needs)
    top, left = int(rows[0]), int(cols[0])
    crop = binary[top:rows[-1] + 1, left:cols[-1] + 1]
    contours = trace_contours(np.pad(crop, 1).astype(np.float32)[None], 0.5, pixel_corners=True)
    # padded grid node (r, c) is the centre of pixel (top + r - 1, left + c - 1)
    origin = np.array([[left - 0.5, top - 0.5]])
    return _contours_to_polygons(contours, 1, np.ones((1, 2)), origin,
                                 mask.shape if clip else None, tolerance, min_area,
                                 largest_only)[0]


def as_numpy(value: Any) -> np.ndarray:
    """A tensor (any device or dtype) or array-like as a numpy array (16-bit floats ->
    float32, which numpy's geometry here wants)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if value.dtype.is_floating_point and value.dtype.itemsize < 4:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def scored_mask_polygons(boxes: Any, scores: np.ndarray, mask_probs: Any,
                         image_size: Tuple[int, int], settings: PostProcess
                         ) -> Tuple[np.ndarray, List[List[Polygon]]]:
    """The detections scoring at least ``settings.score_thresh`` and their masks' polygons:
    the first step from a model's raw detections to regions or to text lines.

    Args:
        boxes: Float[N, 4] xyxy in original image pixels (tensor or array).
        scores: Float[N] as a numpy array.
        mask_probs: Float[N, 1, M, M] or [N, M, M] probabilities (tensor or array).
        image_size: as in :func:`instance_masks_to_polygons`.
        settings: ``score_thresh``, ``mask_thresh`` (the ``level`` of
            :func:`instance_masks_to_polygons`), ``tolerance``, ``min_area`` and
            ``largest_only`` (the rest is for merging).

    Returns:
        ``(kept, components)``: Int64[K] indices of the kept detections, and for each its
        connected components (:func:`instance_masks_to_polygons`).
    """
    kept = np.nonzero(scores >= settings.score_thresh)[0]
    height, width = int(image_size[0]), int(image_size[1])
    return kept, instance_masks_to_polygons(
        as_numpy(mask_probs)[kept], as_numpy(boxes)[kept], (height, width),
        level=settings.mask_thresh, tolerance=settings.tolerance,
        min_area=settings.min_area, largest_only=settings.largest_only)


def instance_masks_to_polygons(mask_probs, boxes, image_size: Tuple[int, int], *,
                               level: float = PostProcess.mask_thresh,
                               tolerance: float = PostProcess.tolerance,
                               min_area: float = PostProcess.min_area,
                               largest_only: bool = PostProcess.largest_only
                               ) -> List[List[Polygon]]:
    """Polygons of detections given as box + low-resolution mask probabilities.

    This is the fast route for Mask R-CNN output: torchvision's ``roi_heads`` returns
    for each detection an ``M x M`` map (M = 28) that covers its box; the maps of all
    detections are traced at once at their own resolution and each contour is scaled
    into its box, the geometry of torchvision's ``paste_masks_in_image`` followed by
    ``>= level`` (see module doc), without building a page-sized mask.

    Args:
        mask_probs: Float[N, M, M] or Float[N, 1, M, M] probabilities in [0, 1].
        boxes: Float[N, 4] boxes ``(x0, y0, x1, y1)`` in original image pixels.
        image_size: ``(height, width)`` of the original image; polygons are clipped to it.
        level: probability threshold of the mask.
        tolerance, min_area, largest_only: as in :func:`mask_to_polygons`.

    Returns:
        For each detection, its connected components as valid polygons without holes
        (largest first; empty when the mask is empty).
    """
    probs = np.asarray(mask_probs.float().cpu() if hasattr(mask_probs, "cpu") else mask_probs,
                       dtype=np.float32)
    boxes = np.asarray(boxes.float().cpu() if hasattr(boxes, "cpu") else boxes, dtype=np.float64)
    if probs.ndim == 4 and probs.shape[1] == 1:
        probs = probs[:, 0]
    count = probs.shape[0] if probs.ndim == 3 else -1
    if probs.ndim != 3 or boxes.shape != (count, 4):
        raise ValueError(f"expected mask_probs [N, M, M] and boxes [N, 4], got "
                         f"{tuple(probs.shape)} and {tuple(boxes.shape)}")
    if count == 0:
        return []
    grid_height, grid_width = probs.shape[1:]
    contours = trace_contours(np.pad(probs, ((0, 0), (1, 1), (1, 1))), level)
    # padded node p lies at x0 + (p - 0.5) * box_width / M: torchvision resizes the
    # padded map onto the padded box with align_corners=False
    scale = np.stack([(boxes[:, 2] - boxes[:, 0]) / grid_width,
                      (boxes[:, 3] - boxes[:, 1]) / grid_height], axis=1)
    origin = boxes[:, :2] - 0.5 * scale
    return _contours_to_polygons(contours, count, scale, origin, image_size, tolerance,
                                 min_area, largest_only)

# --------------------------------------------------------------------------------------
# Overlaps and reading order


def overlap_ratio(first: Polygon, second: Polygon) -> float:
    """Area of the intersection over the area of the smaller polygon, in [0, 1].

    Unlike IoU this is 1 when one region lies inside another, which is the case to
    merge (a lyrics line also detected as part of a larger region).
    """
    smaller = min(first.area, second.area)
    if smaller <= 0:
        return 0.0
    return float(first.intersection(second).area / smaller)


def merge_overlaps(polygons: Sequence[Polygon], labels: Sequence[str], scores: Sequence[float],
                   *, overlap_thresh: float = PostProcess.overlap_thresh,
                   exempt: Iterable[str] = PostProcess.no_merge_classes
                   ) -> List[Tuple[Polygon, str, float]]:
    """Merge regions whose overlap ratio is above ``overlap_thresh``.

    Two regions overlap when :func:`overlap_ratio` (intersection over the smaller area)
    is strictly above ``overlap_thresh``; overlapping regions are merged transitively
    (connected groups). A group becomes one region: the union of its polygons (holes
    dropped; the largest part if the union falls apart), with the label and score of its
    highest-scoring member. A region whose label is in ``exempt`` is never merged.
    ``overlap_thresh >= 1`` disables merging.

    Args:
        polygons, labels, scores: the regions of one page, same length.

    Returns:
        ``(polygon, label, score)`` per resulting region, highest score first.
    """
    count = len(polygons)
    if not (len(labels) == len(scores) == count):
        raise ValueError("polygons, labels and scores must have the same length")
    exempt = set(exempt)
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if count > 1 and overlap_thresh < 1:
        geometries = np.asarray(polygons, dtype=object)
        # candidate pairs by their boxes: the boxes' intersection bounds the polygons'
        tree = shapely.STRtree(geometries)
        first, second = tree.query(geometries)
        mergeable = np.array([label not in exempt for label in labels], dtype=bool)
        keep = (first < second) & mergeable[first] & mergeable[second]
        first, second = first[keep], second[keep]
        areas = shapely.area(geometries)
        bounds = shapely.bounds(geometries)
        low = np.maximum(bounds[first, :2], bounds[second, :2])
        high = np.minimum(bounds[first, 2:], bounds[second, 2:])
        box_shared = np.prod(np.clip(high - low, 0, None), axis=1)
        smaller = np.minimum(areas[first], areas[second])
        keep = box_shared > overlap_thresh * smaller
        first, second, smaller = first[keep], second[keep], smaller[keep]
        if first.size:
            shared = shapely.area(shapely.intersection(geometries[first], geometries[second]))
            ratio = np.divide(shared, smaller, out=np.zeros_like(shared), where=smaller > 0)
            for i, j in zip(first[ratio > overlap_thresh].tolist(),
                            second[ratio > overlap_thresh].tolist()):
                parent[root(i)] = root(j)
    groups: dict = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    merged = []
    for members in groups.values():
        best = max(members, key=lambda i: scores[i])
        if len(members) == 1:
            polygon = polygons[best]
        else:
            union = shapely.make_valid(shapely.union_all([polygons[i] for i in members]))
            parts = [part for part in shapely.get_parts(union) if isinstance(part, Polygon)]
            polygon = Polygon(max(parts, key=lambda part: part.area).exterior)
        merged.append((polygon, labels[best], float(scores[best])))
    merged.sort(key=lambda region: -region[2])
    return merged


def snap_to_pixels(polygons: Sequence[Polygon], image_size: Tuple[int, int]
                   ) -> List[Optional[Polygon]]:
    """The polygons as PAGE stores them: integer points inside the page.

    PAGE points are pixel positions, from (0, 0) to (width - 1, height - 1), so the
    polygons are clipped to that box (a region touching the right or bottom page edge
    loses at most one pixel column or row) and snapped to the 1 px grid with GEOS's
    precision reduction, which keeps them valid (a plain rounding can make a thin
    polygon cross itself). Of what is left the largest part is kept, holes dropped.
    ``None`` where a polygon collapses (e.g. thinner than a pixel; every one on a page
    one pixel high or wide).

    Args:
        image_size: (height, width) of the page.
    """
    if not polygons:
        return []
    height, width = image_size
    if width < 2 or height < 2:  # a page of one pixel row or column: no polygon has area
        return [None] * len(polygons)
    geometries = np.asarray(polygons, dtype=object)
    xmin, ymin, xmax, ymax = shapely.bounds(geometries).T
    outside = (xmin < 0) | (ymin < 0) | (xmax > width - 1) | (ymax > height - 1)
    if outside.any():
        geometries[outside] = shapely.make_valid(
            shapely.clip_by_rect(geometries[outside], 0, 0, width - 1, height - 1))
    # rounding is enough for nearly all; the precision reducer (slower) repairs the rest
    snapped = shapely.transform(geometries, np.round)
    broken = ~shapely.is_valid(snapped)
    if broken.any():
        snapped[broken] = shapely.set_precision(shapely.make_valid(geometries[broken]), 1.0)
    result: List[Optional[Polygon]] = []
    for geometry in snapped:
        parts = [part for part in shapely.get_parts(geometry)
                 if isinstance(part, Polygon) and part.area > 0]
        largest = max(parts, key=lambda part: part.area) if parts else None
        result.append(largest if largest is None or not largest.interiors
                      else Polygon(largest.exterior))
    return result


def reading_order(polygons: Sequence[Polygon], row_overlap: float = 0.5) -> List[int]:
    """A simple reading order: top to bottom, then left to right.

    Regions are taken by their top edge; a region joins the current row when its
    vertical extent overlaps the row's reference extent by more than ``row_overlap`` of
    the smaller of the two heights (e.g. a drop capital beside its staff). The reference
    is the extent of the row's shortest region so far, so that a tall region (a drop
    capital spanning a staff and its lyrics) does not pull the next line into its row.
    Rows are read top to bottom, the regions of a row left to right (by left edge).

    Returns:
        The indices of ``polygons`` in reading order.
    """
    if not polygons:
        return []
    bounds = shapely.bounds(np.asarray(polygons, dtype=object))
    by_top = np.lexsort((bounds[:, 0], bounds[:, 1])).tolist()
    rows: List[List[int]] = []
    anchor_top = anchor_bottom = 0.0
    for i in by_top:
        top, bottom = bounds[i, 1], bounds[i, 3]
        if rows:
            shared = min(bottom, anchor_bottom) - max(top, anchor_top)
            smaller = min(bottom - top, anchor_bottom - anchor_top)
            if smaller > 0 and shared > row_overlap * smaller:
                rows[-1].append(i)
                if bottom - top < anchor_bottom - anchor_top:
                    anchor_top, anchor_bottom = top, bottom
                continue
        rows.append([i])
        anchor_top, anchor_bottom = top, bottom
    return [i for row in rows for i in sorted(row, key=lambda k: (bounds[k, 0], bounds[k, 1]))]
