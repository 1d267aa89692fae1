"""``python -m maskdla.bench eval``: where the time of an evaluation goes.

Evaluates a randomly initialised Mask R-CNN on ``--pages`` synthetic test pages (generated
once at the study's scan size, 2,700 x 3,900 px, and cached) and splits the time into data
loading, inference, mask pasting + RLE encoding at the original size, and COCOeval. Then, on
the first ``--compare-pages`` pages, it times three ways to turn the same raw detections
into RLE masks at the original size and checks that they give the same RLE:

* ``torchvision``: ``paste_masks_in_image`` at the original size (one full-page float mask
  per instance), threshold, ``pycocotools.mask.encode`` of the full page;
* ``box paste + full encode``: the mask resized inside its box only, put into a full-page
  Fortran uint8 array, ``pycocotools.mask.encode``;
* ``box paste + box RLE`` (what maskdla does): no full-page array at all.

An untrained model's detections are random boxes, up to ``--detections`` per page (a
VORAU-253 page has about 22 regions); their count is printed.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskdla.cli import positive_int
from maskdla.evaluation.coco import coco_metrics
from maskdla.evaluation.results import box_mask_to_rle, paste_box_masks, scale_boxes
from maskdla.data.dataset import Dataset, View
from maskdla.data.synthetic import CLASSES, default_corpus
from maskdla.evaluation import EvalSettings, predict_coco_results
from maskdla.inference import raw_detections
from maskdla.model import build_model

DESCRIPTION = ("evaluation of N synthetic pages split into inference, mask pasting/RLE and "
               "COCOeval; compares mask pasting strategies")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pages", type=positive_int, default=100,
                        help="synthetic test pages (default: 100)")
    parser.add_argument("--width", type=positive_int, default=2700,
                        help="page width in px, the original resolution (default: 2700, the "
                             "study's scans; height = width * 3900 / 2700)")
    parser.add_argument("--backbone", default="vovnet19slim",
                        help="backbone (default: vovnet19slim, small enough for a CPU)")
    parser.add_argument("--min-size", type=positive_int, default=320,
                        help="short side the model sees (default: 320; the study uses 800)")
    parser.add_argument("--max-size", type=positive_int, default=533,
                        help="long side cap (default: 533)")
    parser.add_argument("--detections", type=positive_int, default=30,
                        help="detections per page (box_detections_per_img, default: 30)")
    parser.add_argument("--batch-size", type=positive_int, default=2,
                        help="images per forward pass (default: 2)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data loading workers (default: 0: decoding counts as 'data' "
                             "and does not compete with the timed stages for the cores)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compare-pages", type=int, default=2,
                        help="pages on which the pasting strategies are compared (default: 2; "
                             "0 skips; torchvision's way takes seconds per page)")


def _timed(function: Callable[[], Any]) -> tuple:
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _torchvision_rles(masks: torch.Tensor, boxes: torch.Tensor, size: tuple) -> List[dict]:
    """One instance at a time: all at once would hold N full-page float masks (40 MB each)."""
    rles = []
    for mask, box in zip(masks, boxes):
        pasted = paste_masks_in_image(mask[None], box[None], size)[0, 0] > 0.5
        rles.append(mask_utils.encode(np.asfortranarray(pasted.cpu().numpy().astype(np.uint8))))
    return rles


def _full_encode_rles(masks: torch.Tensor, boxes: torch.Tensor, size: tuple) -> List[dict]:
    rles = []
    for top, left, mask in paste_box_masks(masks, boxes, size):
        full = np.zeros(size, dtype=np.uint8, order="F")
        full[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        rles.append(mask_utils.encode(full))
    return rles


def _box_rles(masks: torch.Tensor, boxes: torch.Tensor, size: tuple) -> List[dict]:
    return [box_mask_to_rle(box_mask, size) for box_mask in paste_box_masks(masks, boxes, size)]


def _compare_pasting(model: torch.nn.Module, dataset: Dataset, pages: int,
                     device: torch.device, repeats: int = 3) -> Dict[str, Any]:
    """Median seconds per page of each strategy on the same raw detections (``repeats``
    timings per page); the RLEs must agree."""
    strategies = {"torchvision": _torchvision_rles, "box paste + full encode": _full_encode_rles,
                  "box paste + box RLE": _box_rles}
    seconds: Dict[str, List[float]] = {name: [] for name in strategies}
    instances = 0
    for index in range(min(pages, len(dataset))):
        image, target = dataset[index]
        with torch.inference_mode():
            detections, sizes = raw_detections(model, [image.to(device)])
        orig_size = tuple(int(v) for v in target["orig_size"])
        boxes = scale_boxes(detections[0]["boxes"].float(), sizes[0], orig_size)
        masks = detections[0]["masks"].float()
        instances += len(boxes)
        encoded = {}
        for _ in range(repeats):  # interleaved, so that load changes hit every strategy
            for name, strategy in strategies.items():
                encoded[name], elapsed = _timed(lambda: strategy(masks, boxes, orig_size))
                seconds[name].append(elapsed)
        reference = [rle["counts"].decode() for rle in encoded["torchvision"]]
        for name in ("box paste + full encode", "box paste + box RLE"):
            counts = [rle["counts"] if isinstance(rle["counts"], str) else rle["counts"].decode()
                      for rle in encoded[name]]
            if counts != reference:
                raise AssertionError(f"{name} gives other masks than torchvision's pasting")
    return {"pages": min(pages, len(dataset)), "instances": instances,
            "seconds_per_page": {name: statistics.median(values)
                                 for name, values in seconds.items()}}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    corpus = default_corpus(pages=args.pages, train=0, width=args.width)
    print(f"corpus: {corpus} ({time.perf_counter() - start:.1f} s to find or generate)")
    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES),
                                  view=View(args.min_size, args.max_size))
    torch.manual_seed(0)
    model = build_model(args.backbone, len(CLASSES) + 1, min_size=args.min_size,
                        max_size=args.max_size, box_detections_per_img=args.detections)
    model.to(device).eval()

    timings: Dict[str, float] = {}
    results, total = _timed(lambda: predict_coco_results(
        model, dataset, EvalSettings(batch_size=args.batch_size, device=device,
                                     num_workers=args.workers), timings=timings))
    metrics, cocoeval_seconds = _timed(lambda: coco_metrics(dataset.coco, results))
    total += cocoeval_seconds
    stages = {"data (waiting for the loader)": timings["data"],
              "inference": timings["inference"], "mask pasting + RLE": timings["paste_rle"],
              "COCOeval (bbox + segm)": cocoeval_seconds}
    pages = len(dataset)
    height, width = dataset.coco["images"][0]["height"], dataset.coco["images"][0]["width"]
    print(f"{pages} pages of {width} x {height} px, model input short side {args.min_size}, "
          f"backbone {args.backbone}, device {device}, {len(results)} detections "
          f"({len(results) / pages:.1f} per page)")
    print("| stage | seconds | ms per page | share |\n|---|---|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {seconds:.2f} | {1000 * seconds / pages:.1f} | "
              f"{100 * seconds / total:.1f} % |")
    print(f"| total | {total:.2f} | {1000 * total / pages:.1f} | 100 % |")

    figures: Dict[str, Any] = {
        "pages": pages, "width": width, "height": height, "backbone": args.backbone,
        "min_size": args.min_size, "device": str(device), "detections": len(results),
        "seconds": {"data": timings["data"], "inference": timings["inference"],
                    "paste_rle": timings["paste_rle"], "cocoeval": cocoeval_seconds,
                    "total": total},
        "box_AP": metrics["bbox"]["AP"], "segm_AP": metrics["segm"]["AP"]}
    if args.compare_pages > 0:
        comparison = _compare_pasting(model, dataset, args.compare_pages, device)
        per_page = comparison["seconds_per_page"]
        ours = per_page["box paste + box RLE"]
        print(f"\nmask pasting + RLE at {width} x {height} px, median seconds per page over "
              f"{comparison['pages']} pages x 3 runs ({comparison['instances']} instances), "
              "same RLE:")
        print("| strategy | s per page | vs maskdla |\n|---|---|---|")
        for name, seconds in per_page.items():
            print(f"| {name} | {seconds:.3f} | {seconds / ours:.1f} x |")
        figures["pasting"] = comparison
    return figures
