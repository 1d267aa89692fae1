"""COCO evaluation of a Mask R-CNN on a data set: ``maskdla.evaluate``.

:func:`predict_coco_results` runs the model over a :class:`maskdla.data.dataset.Dataset`
(batched, eval mode, AMP on CUDA, one shard per rank under DDP) and turns its detections into
COCO results at the ORIGINAL image resolution (:mod:`maskdla.evaluation.results`);
:func:`evaluate` scores them with pycocotools (:mod:`maskdla.evaluation.coco`).

Command line::

    python -m maskdla.eval CHECKPOINT [--data DIR | --ann JSON --images DIR] [--split test]
                           [--out metrics.json] [--batch-size N] [--device D]
    python -m maskdla.eval --predictions RESULTS.json --ann GT.json [--out metrics.json]

The first form takes everything else (backbone, classes, image size, the test data when
none is given) from the checkpoint's config; the second scores any system's COCO results
file, without a model.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from maskdla.evaluation.evaluators import (EVALUATORS, EvalSettings, EvaluationInputs,
                                           run_evaluators)
from maskdla.evaluation.results import detections_to_coco_results
from maskdla.distributed import all_gather_objects, broadcast_object
from maskdla.errors import InputError
from maskdla.inference import ErrorsAsItems, raw_detections

#: per-image data a worker sends back: image Float[3, H, W], COCO image id, (H0, W0)
_Item = Tuple[torch.Tensor, int, Tuple[int, int]]


def _collate(batch: Sequence[Any]) -> Union[List[_Item], InputError]:
    """Keep only what evaluation needs (not the target masks) to spare the worker pipes;
    pass on the first InputError of the batch."""
    for item in batch:
        if isinstance(item, InputError):
            return item
    return [(image, int(target["image_id"]), tuple(int(v) for v in target["orig_size"]))
            for image, target in batch]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _category_ids(dataset: Any, classes: Optional[Sequence[str]]) -> List[int]:
    """COCO category id of model label i at index i - 1, matched by class name."""
    model_classes = list(classes) if classes is not None else list(dataset.classes)
    by_name = {category["name"]: category["id"] for category in dataset.coco["categories"]}
    unknown = [name for name in model_classes if name not in by_name]
    if unknown:
        raise InputError(f"the model's classes {', '.join(unknown)} are not classes of the "
                         f"data ({', '.join(by_name)})")
    return [by_name[name] for name in model_classes]


def _num_model_classes(model: torch.nn.Module) -> Optional[int]:
    """Classes of a torchvision MaskRCNN without the background, or None if not found."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    scores = getattr(predictor, "cls_score", None)
    return scores.out_features - 1 if isinstance(scores, torch.nn.Linear) else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_coco_results(model: torch.nn.Module, dataset: Any,
                         settings: EvalSettings = EvalSettings(), *,
                         timings: Optional[Dict[str, float]] = None) -> List[dict]:
    """Run ``model`` over ``dataset`` and return COCO results in original image pixels.

    Args:
        model: a torchvision ``MaskRCNN`` (or DDP/DataParallel around one). Run in eval mode
            under ``torch.inference_mode``; its train/eval mode is restored afterwards.
        dataset: items ``(image Float[3, H, W] at training resolution, target)`` with
            ``target["image_id"]`` and ``target["orig_size"]`` (H0, W0); attributes
            ``classes`` and ``coco`` (ground truth whose category names hold the classes).
        settings: batch size, device, AMP, DataLoader workers, the model's classes, mask
            threshold and progress bar (:class:`~maskdla.evaluation.evaluators.EvalSettings`;
            the scoring fields are not used here).
        timings: if given, seconds are added under ``data`` (waiting for images),
            ``inference`` and ``paste_rle``, and the image count under ``images``.

    Returns:
        COCO results ``{"image_id", "category_id", "score", "bbox": [x, y, w, h],
        "segmentation": RLE}`` of all images, sorted by image id. Under DDP (world size > 1)
        each rank runs its share (indices rank, rank + world, ...) and every rank gets all.
    """
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    category_ids = _checked_category_ids(model, dataset, settings.classes)
    device = (torch.device(settings.device) if settings.device is not None
              else next(model.parameters()).device)
    amp = device.type == "cuda" if settings.amp is None else settings.amp
    model.to(device)
    shard = dataset
    if _distributed():
        shard = Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
    loader = DataLoader(ErrorsAsItems(shard), batch_size=settings.batch_size, shuffle=False,
                        num_workers=settings.num_workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    seconds = {"data": 0.0, "inference": 0.0, "paste_rle": 0.0}
    bar = tqdm(total=len(shard), unit="page", desc="evaluate", file=sys.stderr, leave=False,
               # None: tqdm's own rule, no bar where stderr is no terminal (a log file, a
               # pipeline reading the one-line error of a bad page)
               disable=True if not settings.progress
               or (_distributed() and dist.get_rank() != 0) else None)
    was_training = model.training
    model.eval()
    try:
        context = _BatchContext(device, amp, category_ids, settings.mask_threshold, bar,
                                seconds)
        results = _batch_results(model, loader, context)
    finally:
        bar.close()
        model.train(was_training)
    if _distributed():
        results = [result for part in all_gather_objects(results) for result in part]
    results.sort(key=lambda result: result["image_id"])  # stable: keeps score order per image
    if timings is not None:
        for name, value in seconds.items():
            timings[name] = timings.get(name, 0.0) + value
        timings["images"] = timings.get("images", 0) + len(shard)
    return results


def _checked_category_ids(model: torch.nn.Module, dataset: Any,
                          classes: Optional[Sequence[str]]) -> List[int]:
    """:func:`_category_ids`, once the model is known to have as many classes as named."""
    num_classes = _num_model_classes(model)
    model_classes = list(classes) if classes is not None else list(dataset.classes)
    if num_classes is not None and num_classes != len(model_classes):
        raise InputError(f"the model has {num_classes} classes but the data has "
                         f"{len(model_classes)} ({', '.join(model_classes)})")
    return _category_ids(dataset, classes)


class _BatchContext(NamedTuple):
    """How :func:`_batch_results` runs: the device, autocast, the COCO category id of each
    label, the mask threshold, the progress bar and the seconds of each stage (added to)."""

    device: torch.device
    amp: bool
    category_ids: List[int]
    mask_threshold: float
    bar: Any
    seconds: Dict[str, float]


@torch.inference_mode()
def _batch_results(model: torch.nn.Module, loader: DataLoader, context: _BatchContext
                   ) -> List[dict]:
    """The COCO results of every batch of ``loader`` (the first InputError raised)."""
    results: List[dict] = []
    seconds = context.seconds
    fetch_start = time.perf_counter()
    for batch in loader:
        loaded = time.perf_counter()
        if isinstance(batch, InputError):
            raise batch
        images = [image.to(context.device, non_blocking=True) for image, _, _ in batch]
        detections, input_sizes = raw_detections(model, images, context.amp)
        _synchronize(context.device)
        inferred = time.perf_counter()
        for found, input_size, (_, image_id, orig_size) in zip(detections, input_sizes, batch):
            results.extend(detections_to_coco_results(found, image_id, input_size, orig_size,
                                                      context.category_ids,
                                                      context.mask_threshold))
        pasted = time.perf_counter()
        seconds["data"] += loaded - fetch_start
        seconds["inference"] += inferred - loaded
        seconds["paste_rle"] += pasted - inferred
        context.bar.update(len(batch))
        fetch_start = time.perf_counter()
    return results


def evaluate(model: torch.nn.Module, dataset: Any, settings: EvalSettings = EvalSettings(), *,
             evaluators: Sequence[str] = ("coco",), layout: bool = False,
             timings: Optional[Dict[str, float]] = None) -> Dict[str, dict]:
    """Metrics of ``model`` on ``dataset``: the blocks of metrics.json that the evaluators
    named in ``evaluators`` write (:data:`maskdla.evaluation.evaluators.EVALUATORS`), by
    default COCO's bbox and segm as pycocotools computes them.

    ``settings`` (:class:`~maskdla.evaluation.evaluators.EvalSettings`) as in
    :func:`predict_coco_results`, and for the scoring: ``verbose`` shows pycocotools' own
    output, the ``layout`` evaluator (:func:`maskdla.evaluation.layout.layout_metrics`)
    takes the detections scoring >= ``score_thresh``, matched at ``match_iou``.
    ``timings`` also gets each evaluator's seconds (``cocoeval``, ``layout``, ...).
    ``layout`` adds the ``layout`` evaluator, e.g. for choosing checkpoints by
    ``layout.region_f1``. The ground truth is ``dataset.coco`` (at the original resolution,
    so APs/APm/APl use the original areas, as COCO defines them).

    Returns:
        ``{"bbox": {...}, "segm": {...}}`` as :func:`maskdla.evaluation.coco.coco_metrics`: AP,
        AP50, AP75, APs, APm, APl, AR and ``per_class`` in percent, -1 for "no ground truth
        there"; then the other evaluators' blocks, in the order asked. Under DDP only rank 0
        scores; every rank returns its figures. InputError for an unknown evaluator name.
    """
    names = list(dict.fromkeys([*evaluators, *(["layout"] if layout else [])]))
    unknown = [name for name in names if EVALUATORS.get(name) is None
               or EVALUATORS[name].score is None]
    if unknown:
        raise InputError(f"evaluate: no evaluator {', '.join(map(repr, unknown))} scores a "
                         f"model (evaluators: {', '.join(EVALUATORS)})")
    results = predict_coco_results(model, dataset, settings, timings=timings)
    metrics: Dict[str, dict] = {}
    if not _distributed() or dist.get_rank() == 0:
        device = settings.device
        inputs = EvaluationInputs(model, dataset, results, dataclasses.replace(
            settings, device=torch.device(device) if device is not None else None))
        metrics = run_evaluators(names, inputs, timings)
    return broadcast_object(metrics)
