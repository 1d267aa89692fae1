"""``python -m maskdla.bench layout``: the cost of the layout metrics beside COCOeval.

Scores the same predictions of ``--pages`` synthetic test pages (or the pages of a PAGE
folder, ``--data DIR --split test``) twice: with pycocotools' COCOeval (bbox + segm, what
``python -m maskdla.eval`` always runs) and with the layout metrics
(:func:`maskdla.evaluation.layout_inputs.results_layout_metrics`: region matching, merges
and splits, pixel metrics, reading order). The predictions are the ground truth perturbed
the way a detector errs: every region shifted by a few pixels, one in ten dropped, one in
ten split in two halves, two false positives per page; RLE masks at the original size, as
the checkpoint path produces them. Each scoring runs ``--repeats`` times, interleaved; the
medians are printed.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import shapely
from pycocotools import mask as mask_utils
from shapely.geometry import Polygon

from maskdla.cli import positive_int
from maskdla.data.coco import folder_to_coco
from maskdla.data.synthetic import default_corpus
from maskdla.evaluation.coco import coco_metrics
from maskdla.evaluation.layout_inputs import results_layout_metrics

DESCRIPTION = "layout metrics (regions, merges/splits, pixels, reading order) vs COCOeval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=positive_int, default=20,
                        help="synthetic test pages (default: 20)")
    parser.add_argument("--width", type=positive_int, default=830,
                        help="synthetic page width (default: 830: 830 x 1199 px, a long side "
                             "of 1,200 px like the HTRomance pages)")
    parser.add_argument("--data", metavar="DIR", help="score this PAGE dataset folder instead")
    parser.add_argument("--split", default="test", help="split folder of --data (default: test)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timings of each scoring (default: 3)")


def _rle_result(polygon: Polygon, image: Dict[str, Any], category_id: int,
                score: float) -> Dict[str, Any]:
    flat = np.asarray(polygon.exterior.coords)[:-1].ravel().tolist()
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], image["height"], image["width"]))
    return {"image_id": image["id"], "category_id": category_id, "score": score,
            "bbox": mask_utils.toBbox(rle).tolist(),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")}}


def perturbed_results(gt: Dict[str, Any], seed: int = 0) -> List[Dict[str, Any]]:
    """COCO results of the ground truth with a detector's errors (see the module doc)."""
    rng = np.random.default_rng(seed)
    images = {image["id"]: image for image in gt["images"]}
    categories = [category["id"] for category in gt["categories"]]
    results = []
    for annotation in gt["annotations"]:
        image = images[annotation["image_id"]]
        ring = annotation["segmentation"][0]
        polygon = shapely.make_valid(Polygon(list(zip(ring[0::2], ring[1::2]))))
        polygon = max(getattr(polygon, "geoms", [polygon]), key=lambda g: g.area)
        if not isinstance(polygon, Polygon) or polygon.area <= 0:
            continue
        draw = rng.random()
        if draw < 0.1:
            continue  # missed
        polygon = shapely.affinity.translate(polygon, *rng.normal(0, 4, 2))
        parts = [polygon]
        if draw < 0.2:  # split at the middle of its box
            x0, y0, x1, y1 = polygon.bounds
            middle = (x0 + x1) / 2
            parts = [polygon.intersection(shapely.box(x0, y0, middle - 2, y1)),
                     polygon.intersection(shapely.box(middle + 2, y0, x1, y1))]
        for part in parts:
            part = max(getattr(part, "geoms", [part]), key=lambda g: g.area)
            if isinstance(part, Polygon) and part.area > 0:
                results.append(_rle_result(part, image, annotation["category_id"],
                                           float(rng.uniform(0.5, 1.0))))
    for image in gt["images"]:
        for _ in range(2):
            w, h = image["width"] / 5, image["height"] / 20
            x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
            results.append(_rle_result(shapely.box(x, y, x + w, y + h), image,
                                       int(rng.choice(categories)), float(rng.uniform(0.5, 1))))
    return results


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.data:
        folder = Path(args.data) / args.split
    else:
        folder = default_corpus(pages=args.pages, train=0, width=args.width) / "test"
    gt = folder_to_coco(folder)[0]
    results = perturbed_results(gt)
    pages = len(gt["images"])
    seconds: Dict[str, List[float]] = {"COCOeval (bbox + segm)": [], "layout metrics": []}
    layout: Dict[str, Any] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = coco_metrics(gt, results)
        seconds["COCOeval (bbox + segm)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        layout = results_layout_metrics(gt, results)
        seconds["layout metrics"].append(time.perf_counter() - start)
    sizes = sorted({(image["width"], image["height"]) for image in gt["images"]})
    print(f"{pages} pages from {folder} ({sizes[0][0]} x {sizes[0][1]} px"
          f"{' and others' if len(sizes) > 1 else ''}), {len(gt['annotations'])} regions, "
          f"{len(results)} predictions; median of {args.repeats} runs")
    print("| scoring | s per page | vs COCOeval |\n|---|---|---|")
    medians = {name: statistics.median(values) / pages for name, values in seconds.items()}
    for name, value in medians.items():
        print(f"| {name} | {value:.4f} | {value / medians['COCOeval (bbox + segm)']:.2f} x |")
    print(f"segm AP {metrics['segm']['AP']:.2f}, region F1 {layout['region_f1']:.2f}, "
          f"merges {layout['merges']}, splits {layout['splits']}, pixel mIoU "
          f"{layout['pixel_miou']:.2f}, reading-order tau {layout['reading_order_tau']:.3f}")
    return {"pages": pages, "regions": len(gt["annotations"]), "predictions": len(results),
            "seconds_per_page": medians, "segm_AP": metrics["segm"]["AP"],
            "region_f1": layout["region_f1"], "pixel_miou": layout["pixel_miou"]}
