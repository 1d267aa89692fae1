"""COCO metrics exactly as pycocotools computes them: scoring only, no model.

In: a COCO ground-truth dict (``images``, ``annotations``, ``categories``; coordinates and
areas of the ORIGINAL images) and a COCO results list, each result
``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}`` and/or
``"segmentation"`` (compressed RLE as written by ``pycocotools.mask.encode``; polygons and
uncompressed RLE are converted to compressed RLE the way pycocotools converts ground truth).

Out: :func:`coco_metrics` -> ``{"bbox": {...}, "segm": {...}}`` with ``AP, AP50, AP75, APs,
APm, APl, AR`` (AR = average recall at 100 detections, ``stats[8]``) and ``per_class``
``{name: AP}``, all in percent (0-100). ``-1`` is kept as pycocotools reports it: no ground
truth in that size range (APs/APm/APl) or of that class (``per_class``).

Differences from calling pycocotools by hand, all on purpose:

* segm is scored on results without their ``bbox`` (the official COCO segm results format):
  pycocotools' ``loadRes`` otherwise sets a detection's area to its box area, and the area
  decides whether an unmatched detection counts in APs/APm/APl. detectron2 does the same.
* segm is scored only when every result has a ``segmentation`` (pycocotools would silently
  score boxes as rectangular masks).
* an empty results list scores 0 instead of crashing in ``loadRes``.
* the ground-truth dict and the results are not modified (pycocotools edits both in place).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskdla.errors import InputError
from maskdla.files import read_json
from maskdla.tables import ap_table

IOU_TYPES = ("bbox", "segm")
#: metric name -> index in ``COCOeval.stats``
STAT_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR": 8}

PathType = Union[str, PathLike]


def _quiet(verbose: bool):
    """Context that swallows pycocotools' prints unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def validate_ground_truth(gt: Any, path: Optional[PathType] = None) -> None:
    """Raise :class:`InputError` unless ``gt`` is a COCO instances dict pycocotools can score."""
    if not isinstance(gt, dict) or not all(isinstance(gt.get(key), list)
                                           for key in ("images", "annotations", "categories")):
        raise InputError("not a COCO ground-truth file: needs lists 'images', 'annotations' "
                         "and 'categories'", path)
    for image in gt["images"]:
        if not isinstance(image, dict) or not {"id", "height", "width"} <= image.keys():
            raise InputError(f"COCO image entry without id/height/width: {str(image)[:80]}", path)
    for category in gt["categories"]:
        if not isinstance(category, dict) or not {"id", "name"} <= category.keys():
            raise InputError(f"COCO category without id/name: {str(category)[:80]}", path)
    image_ids = {image["id"] for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    required = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
    for annotation in gt["annotations"]:
        missing = required - annotation.keys() if isinstance(annotation, dict) else required
        if missing:
            raise InputError(f"COCO annotation {annotation.get('id', '?')} lacks "
                             f"{', '.join(sorted(missing))}", path)
        if annotation["image_id"] not in image_ids:
            raise InputError(f"annotation {annotation['id']} refers to unknown image id "
                             f"{annotation['image_id']}", path)
        if annotation["category_id"] not in category_ids:
            raise InputError(f"annotation {annotation['id']} refers to unknown category id "
                             f"{annotation['category_id']}", path)


def load_ground_truth(path: PathType) -> dict:
    """Read and validate a COCO ground-truth JSON file."""
    gt = read_json(path, "ground-truth file")
    validate_ground_truth(gt, path)
    return gt


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_results(results: Any, gt: dict, path: Optional[PathType] = None) -> None:
    """Raise :class:`InputError` unless ``results`` is a COCO results list for ``gt``.

    Checks the fields, that image and category ids exist in ``gt`` and that RLE masks have
    the size of their image.
    """
    if not isinstance(results, list):
        raise InputError("COCO results must be a JSON list of objects", path)
    images = {image["id"]: image for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    for index, result in enumerate(results):
        where = f"result {index}"
        if not isinstance(result, dict):
            raise InputError(f"{where} is not an object", path)
        missing = {"image_id", "category_id", "score"} - result.keys()
        if missing:
            raise InputError(f"{where} lacks {', '.join(sorted(missing))}", path)
        if "bbox" not in result and "segmentation" not in result:
            raise InputError(f"{where} has neither bbox nor segmentation", path)
        image = images.get(result["image_id"]) if isinstance(result["image_id"], int) else None
        if image is None:
            raise InputError(f"{where} has image_id {result['image_id']!r}, which is not in "
                             "the ground truth", path)
        if result["category_id"] not in category_ids:
            raise InputError(f"{where} has category_id {result['category_id']!r}, which is "
                             "not in the ground truth", path)
        if not _number(result["score"]):
            raise InputError(f"{where} has a score that is not a finite number", path)
        if "bbox" in result:
            box = result["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(map(_number, box))):
                raise InputError(f"{where} has a bbox that is not [x, y, width, height]", path)
        segmentation = result.get("segmentation")
        if isinstance(segmentation, dict):
            size = list(segmentation.get("size", ()))
            if "counts" not in segmentation or size != [image["height"], image["width"]]:
                raise InputError(f"{where}: RLE segmentation needs counts and size "
                                 f"[{image['height']}, {image['width']}] of image "
                                 f"{image['id']}", path)
        elif "segmentation" in result and not (
                isinstance(segmentation, list) and segmentation
                and all(isinstance(polygon, list) and len(polygon) >= 6
                        and all(map(_number, polygon)) for polygon in segmentation)):
            raise InputError(f"{where} has a segmentation that is neither RLE nor polygons",
                             path)


def load_results(path: PathType, gt: dict) -> List[dict]:
    """Read a COCO results JSON file and validate it against ``gt``."""
    results = read_json(path, "results file")
    validate_results(results, gt, path)
    return results


def _coco_ground_truth(gt: dict, verbose: bool) -> COCO:
    coco = COCO()
    # pycocotools rewrites ground-truth segmentations in place (to RLE with bytes counts).
    coco.dataset = copy.deepcopy(gt)
    with _quiet(verbose):
        coco.createIndex()
    return coco


def _load_detections(coco_gt: COCO, results: List[dict], iou_type: str, verbose: bool) -> COCO:
    """pycocotools' ``loadRes`` on copies of ``results`` (it edits them), fit for ``iou_type``."""
    detections = []
    for result in results:
        detection = dict(result)
        if iou_type == "segm":
            # Without the box, loadRes takes the mask area as the detection's area.
            detection.pop("bbox", None)
            if not isinstance(detection["segmentation"], dict) or isinstance(
                    detection["segmentation"]["counts"], list):
                detection["segmentation"] = coco_gt.annToRLE(detection)
        detections.append(detection)
    if detections:
        with _quiet(verbose):
            return coco_gt.loadRes(detections)
    # loadRes indexes results[0]: build the empty detection set by hand.
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                       "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    with _quiet(verbose):
        coco_dt.createIndex()
    return coco_dt


def _percent(value: float) -> float:
    """pycocotools' fraction -> percent, keeping its -1 for 'nothing to score'."""
    return -1.0 if value == -1 else float(value) * 100.0


def per_class_ap(coco_eval: COCOeval) -> Dict[str, float]:
    """AP per category from an accumulated :class:`COCOeval`, in percent.

    As pycocotools' summarize and detectron2 do it: mean of ``eval["precision"][:, :, k,
    area=all, maxDets=100]`` over the entries > -1; -1 when there are none (no ground truth
    of that class).
    """
    # [IoU thresholds, recall thresholds, categories, area ranges, maxDets]
    precision = coco_eval.eval["precision"]
    names = {category["id"]: category["name"]
             for category in coco_eval.cocoGt.dataset["categories"]}
    values = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        valid = precision[:, :, k, 0, -1]
        valid = valid[valid > -1]
        values[names[category_id]] = _percent(float(np.mean(valid)) if valid.size else -1.0)
    return values


def scorable_iou_types(results: Sequence[dict]) -> List[str]:
    """bbox always (boxes of masks where results have none); segm when every result has a mask."""
    if all("segmentation" in result for result in results):
        return list(IOU_TYPES)
    return ["bbox"]


def coco_metrics(gt: dict, results: Sequence[dict], *, iou_types: Optional[Sequence[str]] = None,
                 verbose: bool = False) -> Dict[str, dict]:
    """Score ``results`` against ``gt`` with pycocotools' COCOeval.

    Args:
        gt: COCO ground-truth dict (not modified).
        results: COCO results (not modified); validate first with :func:`validate_results`.
        iou_types: subset of ``("bbox", "segm")``; default :func:`scorable_iou_types`.
        verbose: let pycocotools print its progress and summary table.

    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR": float,
        "per_class": {name: float}}}`` in percent, -1 where pycocotools gives -1.
    """
    results = list(results)
    coco_gt = _coco_ground_truth(gt, verbose)
    metrics = {}
    for iou_type in iou_types or scorable_iou_types(results):
        coco_dt = _load_detections(coco_gt, results, iou_type, verbose)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        with _quiet(verbose):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        figures = {name: _percent(coco_eval.stats[index]) for name, index in STAT_INDEX.items()}
        figures["per_class"] = per_class_ap(coco_eval)
        metrics[iou_type] = figures
    return metrics


def format_table(metrics: Dict[str, dict]) -> str:
    """The study's Markdown table: rows Bounding Box / Segmentation, AP AP50 AP75 [APs] APm APl.

    APs appears only when some row has one (pycocotools gives -1 when the ground truth has
    no object smaller than 32x32 px); see :func:`maskdla.tables.ap_table`.
    """
    return ap_table(metrics)
