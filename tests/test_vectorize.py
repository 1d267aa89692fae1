"""Masks -> polygons, merging and reading order (maskdla.prediction.vectorize)."""
from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch
import torch.nn.functional as F
from shapely.geometry import Polygon, box
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskdla.bench.predict import synthetic_detections
from maskdla.prediction.vectorize import (instance_masks_to_polygons, mask_to_polygons, merge_overlaps,
                               overlap_ratio, reading_order, snap_to_pixels,
                               trace_contours)


def rectangle(size: int) -> np.ndarray:
    mask = np.zeros((2 * size, 3 * size), dtype=bool)
    mask[size // 4:size // 4 + size, size // 3:size // 3 + 2 * size] = True
    return mask


def disc(size: int) -> np.ndarray:
    y, x = np.mgrid[:2 * size, :2 * size]
    return (y - size + 0.5) ** 2 + (x - size + 0.3) ** 2 < (0.8 * size) ** 2


def l_shape(size: int) -> np.ndarray:
    mask = np.zeros((size + 20, size + 20), dtype=bool)
    mask[10:10 + size, 10:10 + size // 2] = True
    mask[10 + size // 2:10 + size, 10:10 + size] = True
    return mask


@pytest.mark.parametrize("shape", [rectangle, disc, l_shape])
@pytest.mark.parametrize("size", [32, 100, 400])
def test_polygon_area_matches_the_mask_within_2_percent(shape, size):
    mask = shape(size)
    polygons = mask_to_polygons(mask)  # default simplification, 1 px
    assert len(polygons) == 1
    assert sum(p.area for p in polygons) == pytest.approx(mask.sum(), rel=0.02)
    # without simplification the ring is the exact pixel boundary
    exact = mask_to_polygons(mask, tolerance=0)
    assert exact[0].area == pytest.approx(mask.sum(), abs=1e-6)


def test_rectangle_becomes_its_four_corners():
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:30, 5:45] = True
    (polygon,) = mask_to_polygons(mask)
    assert shapely.normalize(polygon).equals(shapely.normalize(box(5, 10, 45, 30)))
    assert len(polygon.exterior.coords) == 5


def test_polygons_of_noise_are_valid_and_inside_the_image():
    rng = np.random.default_rng(0)
    mask = rng.random((80, 70)) > 0.45
    for tolerance in (0, 1.0, 3.0):
        polygons = mask_to_polygons(mask, tolerance=tolerance)
        assert polygons
        for polygon in polygons:
            assert polygon.is_valid and not polygon.interiors
            assert len(set(polygon.exterior.coords)) >= 3
            xmin, ymin, xmax, ymax = polygon.bounds
            assert xmin >= 0 and ymin >= 0 and xmax <= 70 and ymax <= 80


def test_two_blobs_give_two_regions_or_the_largest_one():
    mask = np.zeros((60, 60), dtype=bool)
    mask[5:15, 5:15] = True
    mask[30:55, 20:50] = True
    polygons = mask_to_polygons(mask)
    assert [p.area for p in polygons] == pytest.approx([750, 100])
    (largest,) = mask_to_polygons(mask, largest_only=True)
    assert largest.area == pytest.approx(750)
    assert mask_to_polygons(mask, min_area=100) == [polygons[0]]


def test_diagonal_neighbours_trace_to_valid_polygons():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    mask[3:5, 3:5] = True  # touches the first square at one corner only
    polygons = mask_to_polygons(mask, tolerance=0)
    assert all(p.is_valid for p in polygons)
    assert sum(p.area for p in polygons) == pytest.approx(8, abs=0.5)


def test_holes_are_filled_and_islands_in_them_dropped():
    y, x = np.mgrid[:120, :120]
    radius = np.sqrt((y - 60) ** 2 + (x - 60) ** 2)
    ring = (radius < 50) & (radius >= 25)
    (polygon,) = mask_to_polygons(ring)
    assert not polygon.interiors
    assert polygon.area == pytest.approx((radius < 50).sum(), rel=0.02)
    with_island = ring | (radius < 10)
    assert len(mask_to_polygons(with_island)) == 1


def test_traced_rings_are_oriented_outer_positive_holes_negative():
    mask = np.zeros((1, 12, 12), dtype=np.float32)
    mask[0, 2:10, 2:10] = 1
    mask[0, 4:7, 4:7] = 0
    contours = trace_contours(mask, pixel_corners=True)
    assert sorted(contours.signed_area.tolist()) == pytest.approx([-9, 64])
    assert contours.grid_index.tolist() == [0, 0]


def reference_paste(masks: torch.Tensor, boxes: torch.Tensor, size, level=0.5):
    """The pasted masks with exact (float) box geometry: each padded 30 x 30 map sampled
    bilinearly at the pixel centres, nodes spaced box / 28 apart, as torchvision's
    resize does but without its integer box."""
    count, resolution = masks.shape[0], masks.shape[-1]
    padded = F.pad(masks.float(), (1, 1, 1, 1))
    height, width = size
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    result = torch.zeros(count, height, width, dtype=torch.bool)
    for n in range(count):
        x0, y0, x1, y1 = boxes[n].double().tolist()
        scale_x, scale_y = (x1 - x0) / resolution, (y1 - y0) / resolution
        node_x = (xs - (x0 - 0.5 * scale_x)) / scale_x  # padded grid coordinate
        node_y = (ys - (y0 - 0.5 * scale_y)) / scale_y
        grid_x = node_x / (resolution + 1) * 2 - 1
        grid_y = node_y / (resolution + 1) * 2 - 1
        grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], dim=-1)
        sampled = F.grid_sample(padded[n:n + 1], grid[None].float(), mode="bilinear",
                                align_corners=True, padding_mode="zeros")
        result[n] = sampled[0, 0] >= level
    return result


def test_instance_masks_match_the_pasted_masks_within_2_percent():
    size = (1300, 900)
    detections = synthetic_detections(12, *size, seed=3)
    masks, boxes = detections["masks"], detections["boxes"]
    polygons = instance_masks_to_polygons(masks, boxes, size, tolerance=1.0)
    exact = reference_paste(masks, boxes, size)
    torchvision = paste_masks_in_image(masks, boxes, size)[:, 0] >= 0.5
    for parts, reference, pasted in zip(polygons, exact, torchvision):
        area = sum(p.area for p in parts)
        assert area == pytest.approx(float(reference.sum()), rel=0.02)
        # torchvision's integer boxes (x1 - x0 + 1) are up to 2 px larger
        assert area == pytest.approx(float(pasted.sum()), rel=0.05)


def test_instance_masks_are_clipped_to_the_page_and_split_into_components():
    masks = torch.zeros(2, 1, 28, 28)
    masks[0, 0, 4:24, 4:24] = 1  # a square reaching out of the page
    masks[1, 0, 2:10, 2:10] = 1  # two blobs
    masks[1, 0, 15:26, 15:26] = 1
    boxes = torch.tensor([[-50.0, -50.0, 230.0, 230.0], [0.0, 0.0, 280.0, 280.0]])
    first, second = instance_masks_to_polygons(masks, boxes, (200, 150))
    assert len(first) == 1
    assert first[0].bounds[0] >= 0 and first[0].bounds[1] >= 0
    assert first[0].bounds[2] <= 150 and first[0].bounds[3] <= 200
    assert len(second) == 1  # the second blob lies outside the page
    both = instance_masks_to_polygons(masks[1:], boxes[1:], (300, 300))[0]
    assert len(both) == 2 and both[0].area > both[1].area
    (largest,) = instance_masks_to_polygons(masks[1:], boxes[1:], (300, 300),
                                            largest_only=True)[0]
    assert largest.area == pytest.approx(both[0].area)
    assert instance_masks_to_polygons(torch.zeros(1, 1, 28, 28), boxes[:1], (200, 150)) == [[]]
    assert instance_masks_to_polygons(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4),
                                      (200, 150)) == []


def test_overlap_ratio_is_relative_to_the_smaller_region():
    big, small = box(0, 0, 100, 100), box(10, 10, 30, 30)
    assert overlap_ratio(big, small) == pytest.approx(1.0)
    assert overlap_ratio(box(0, 0, 10, 10), box(5, 0, 25, 10)) == pytest.approx(0.5)
    assert overlap_ratio(big, box(200, 200, 210, 210)) == 0


def test_merge_above_threshold_and_the_higher_score_wins():
    first, second = box(0, 0, 100, 100), box(40, 0, 140, 100)  # overlap 0.6
    merged = merge_overlaps([first, second], ["lyrics", "staff"], [0.6, 0.9],
                            overlap_thresh=0.5)
    assert len(merged) == 1
    polygon, label, score = merged[0]
    assert (label, score) == ("staff", 0.9)
    assert polygon.area == pytest.approx(first.union(second).area)
    kept = merge_overlaps([first, second], ["lyrics", "staff"], [0.6, 0.9],
                          overlap_thresh=0.7)
    assert sorted(label for _, label, _ in kept) == ["lyrics", "staff"]
    assert [score for _, _, score in kept] == [0.9, 0.6]  # highest first


def test_merge_exempt_classes_and_transitive_groups():
    dropcap, staff = box(0, 0, 50, 50), box(10, 10, 300, 60)
    merged = merge_overlaps([dropcap, staff], ["drop-capital", "staff"], [0.99, 0.8],
                            overlap_thresh=0.1, exempt=["drop-capital"])
    assert len(merged) == 2
    chain = [box(0, 0, 10, 10), box(5, 0, 15, 10), box(10, 0, 20, 10)]
    merged = merge_overlaps(chain, ["a", "b", "c"], [0.5, 0.7, 0.6], overlap_thresh=0.4)
    assert len(merged) == 1 and merged[0][1] == "b"
    assert merged[0][0].area == pytest.approx(200)
    assert len(merge_overlaps(chain, ["a", "b", "c"], [0.5, 0.7, 0.6], overlap_thresh=1)) == 3
    assert merge_overlaps([], [], []) == []


def test_reading_order_top_to_bottom_then_left_to_right():
    staff = box(300, 100, 2000, 300)
    dropcap = box(100, 90, 280, 500)  # spans the staff and its lyrics
    lyrics = box(300, 320, 1900, 420)
    second_staff = box(300, 600, 2000, 800)
    right_column = box(1100, 330, 1800, 430)  # beside the lyrics
    polygons = [lyrics, second_staff, staff, dropcap, right_column]
    order = reading_order(polygons)
    assert [polygons[i] for i in order] == [dropcap, staff, lyrics, right_column, second_staff]
    assert reading_order([]) == []


def test_snap_to_pixels_gives_integer_points_inside_the_page():
    polygons = [Polygon([(0.4, 0.6), (99.7, 0.2), (100.0, 50.3), (0.2, 49.6)]),
                box(10.2, 10.2, 10.4, 60.0),  # thinner than a pixel: collapses
                box(-5, -5, 300, 300)]
    wide, thin, page = snap_to_pixels(polygons, (80, 90))
    assert thin is None
    for polygon in (wide, page):
        coords = np.asarray(polygon.exterior.coords)
        assert polygon.is_valid and np.array_equal(coords, np.round(coords))
        assert coords.min() >= 0 and coords[:, 0].max() <= 89 and coords[:, 1].max() <= 79
    assert page.area == 89 * 79
