"""``python -m maskdla.bench predict``: the post-processing of prediction, masks -> polygons
-> PAGE-XML, on one CPU thread.

A synthetic page stands in for the model: 25 detections on a 2,700 x 3,900 px page laid
out like the study's manuscripts (rows of a staff with its lyrics below, drop capitals at
the left overlapping both), each a box and a 28 x 28 mask probability map like
torchvision's mask head gives (a slightly skewed rounded shape, smooth noise, sigmoid
edges). Timed, median over repeats:

* ``polygons``: :func:`maskdla.prediction.vectorize.instance_masks_to_polygons` (trace the 28 x 28
  maps, scale into the boxes, simplify, clip);
* ``page``: :func:`maskdla.predict.detections_to_page` (polygons + merging + reading order);
* ``xml``: :func:`maskdla.data.pagexml.page_to_xml` of that page;
* ``total``: ``page`` + :func:`maskdla.data.pagexml.write_page` to a file: the budget of
  issue 7 (<= 50 ms);
* ``paste_then_trace``: the usual route for comparison: each mask pasted at full
  resolution inside its box (:func:`maskdla.evaluation.results.paste_box_masks`, torchvision's
  geometry) and the binary mask traced (:func:`maskdla.prediction.vectorize.mask_to_polygons`).

It also reports how closely the fast route's polygon areas match the pasted masks'
pixel counts (median and worst relative difference).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import shapely
import torch
import torch.nn.functional as F

DESCRIPTION = "prediction post-processing (masks -> polygons -> PAGE-XML) on one CPU thread"

CLASSES = ["drop-capital", "lyrics", "staff"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", type=int, default=25, help="detections per page (default 25)")
    parser.add_argument("--height", type=int, default=3900, help="page height in px (default 3900)")
    parser.add_argument("--width", type=int, default=2700, help="page width in px (default 2700)")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic page")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the budget is for one core)")


def synthetic_detections(regions: int = 25, height: int = 3900, width: int = 2700,
                         seed: int = 0, resolution: int = 28
                         ) -> Dict[str, torch.Tensor]:
    """Detections of a synthetic manuscript page, as the model would give them.

    Returns ``boxes`` Float[N, 4] xyxy in page pixels, ``labels`` Int64[N] (1-based into
    :data:`CLASSES`), ``scores`` Float[N] and ``masks`` Float[N, 1, M, M] probabilities.
    Rows of staff + lyrics top to bottom, every fifth region a drop capital at the left.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    drop_capitals = regions // 5
    rows = (regions - drop_capitals + 1) // 2
    margin = 0.08 * width
    row_height = (height - 2 * margin) / max(rows, 1)
    boxes, labels = [], []
    for row in range(rows):
        top = margin + row * row_height
        left = margin + (0.09 * width if row < drop_capitals else 0) + uniform(-10, 10)
        right = width - margin + uniform(-20, 20)
        staff = [left, top + 0.05 * row_height, right, top + 0.55 * row_height]
        lyrics = [left + uniform(0, 40), top + 0.58 * row_height, right - uniform(0, 200),
                  top + 0.9 * row_height]
        boxes += [staff, lyrics][:regions - drop_capitals - len(boxes)]
        labels += [3, 2][:len(boxes) - len(labels)]
    for row in range(drop_capitals):
        top = margin + row * row_height
        boxes.append([margin - 20, top + 0.02 * row_height, margin + 0.1 * width,
                      top + 0.8 * row_height])
        labels.append(1)
    count = len(boxes)
    grid = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    masks = []
    for label in labels:
        if label == 1:  # a letter: a blob
            distance = 0.42 - torch.sqrt((x - 0.5) ** 2 + 0.8 * (y - 0.5) ** 2)
        else:  # a band, slightly skewed across the box, with rounded ends
            skew = uniform(-0.08, 0.08)
            centre = 0.5 + skew * (x - 0.5)
            distance = torch.minimum(0.38 - (y - centre).abs(),
                                     torch.minimum(x - 0.02, 0.98 - x) * 4)
        noise = torch.randn(1, 1, 6, 6, generator=generator)
        noise = F.interpolate(noise, size=(resolution, resolution), mode="bicubic",
                              align_corners=False)[0, 0]
        masks.append(torch.sigmoid(30 * distance + 0.6 * noise))
    scores = 0.6 + 0.4 * torch.rand(count, generator=generator)
    return {"boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64), "scores": scores,
            "masks": torch.stack(masks)[:, None]}


def _median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    from maskdla.evaluation.results import paste_box_masks
    from maskdla.data.pagexml import page_to_xml, write_page
    from maskdla.prediction import detections_to_page
    from maskdla.prediction.vectorize import instance_masks_to_polygons, mask_to_polygons

    torch.set_num_threads(args.threads)
    size = (args.height, args.width)
    detections = synthetic_detections(args.regions, args.height, args.width, args.seed)
    boxes, masks = detections["boxes"], detections["masks"]

    def polygons() -> List[list]:
        return instance_masks_to_polygons(masks, boxes, size)

    def page():
        return detections_to_page(boxes, detections["labels"], detections["scores"], masks,
                                  CLASSES, size, "page.jpg")

    def paste_then_trace() -> List[list]:
        result = []
        for top, left, box_mask in paste_box_masks(masks, boxes, size):
            found = mask_to_polygons(box_mask)
            shift = np.array([left, top])
            result.append([shapely.transform(polygon, lambda xy: xy + shift)
                           for polygon in found])
        return result

    the_page = page()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "page" / "page.xml"
        timings = {
            "polygons_ms": _median_ms(polygons, args.repeats),
            "page_ms": _median_ms(page, args.repeats),
            "xml_ms": _median_ms(lambda: page_to_xml(the_page), args.repeats),
            "total_ms": _median_ms(lambda: write_page(page(), path), args.repeats),
            "paste_then_trace_ms": _median_ms(paste_then_trace, max(3, args.repeats // 5)),
        }
    fast = [sum(p.area for p in parts) for parts in polygons()]
    pasted = [float(mask.sum()) for _, _, mask in paste_box_masks(masks, boxes, size)]
    differences = [abs(a / b - 1) * 100 for a, b in zip(fast, pasted) if b > 0]
    vertices = [len(region.polygon) for region in the_page.regions]
    result = dict(timings, regions_in=len(boxes), regions_out=len(the_page.regions),
                  median_vertices=statistics.median(vertices) if vertices else 0,
                  area_difference_median_pct=statistics.median(differences),
                  area_difference_max_pct=max(differences),
                  speedup_vs_paste=timings["paste_then_trace_ms"] / timings["polygons_ms"],
                  threads=args.threads, page=f"{args.width}x{args.height}")
    print(f"page {args.width} x {args.height} px, {len(boxes)} detections -> "
          f"{len(the_page.regions)} regions (median {result['median_vertices']} vertices), "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'step':<44}{'ms':>9}")
    for key, text in (("polygons_ms", "masks -> polygons (28x28 traced in boxes)"),
                      ("page_ms", "  + merge + reading order (Page)"),
                      ("xml_ms", "Page -> PAGE-XML bytes"),
                      ("total_ms", "masks -> polygons -> XML file (budget 50)"),
                      ("paste_then_trace_ms", "paste at full res + trace (comparison)")):
        print(f"{text:<44}{timings[key]:>9.2f}")
    print(f"fast route {result['speedup_vs_paste']:.1f}x faster than paste-then-trace; "
          f"area vs pasted mask: median {result['area_difference_median_pct']:.2f} %, "
          f"max {result['area_difference_max_pct']:.2f} %")
    return result

