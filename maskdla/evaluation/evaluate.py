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

import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from maskdla.evaluation.evaluators import EVALUATORS, EvaluationInputs, run_evaluators
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


def predict_coco_results(model: torch.nn.Module, dataset: Any, *, batch_size: int = 2,
                         device: Optional[Union[str, torch.device]] = None,
                         amp: Optional[bool] = None, num_workers: int = 0,
                         classes: Optional[Sequence[str]] = None, mask_threshold: float = 0.5,
                         timings: Optional[Dict[str, float]] = None,
                         progress: bool = True) -> List[dict]:
    """Run ``model`` over ``dataset`` and return COCO results in original image pixels.

    Args:
        model: a torchvision ``MaskRCNN`` (or DDP/DataParallel around one). Run in eval mode
            under ``torch.inference_mode``; its train/eval mode is restored afterwards.
        dataset: items ``(image Float[3, H, W] at training resolution, target)`` with
            ``target["image_id"]`` and ``target["orig_size"]`` (H0, W0); attributes
            ``classes`` and ``coco`` (ground truth whose category names hold the classes).
        batch_size: images per forward pass.
        device: where to run; default the model's device (the model is moved there).
        amp: autocast for the backbone and RPN (:func:`raw_detections`); default on for
            CUDA, off otherwise.
        num_workers: DataLoader worker processes.
        classes: the model's class names (label i = classes[i - 1]) when they differ in
            order from ``dataset.classes``; matched to the data's categories by name.
        mask_threshold: mask probability above which a pixel belongs to the mask.
        timings: if given, seconds are added under ``data`` (waiting for images),
            ``inference`` and ``paste_rle``, and the image count under ``images``.
        progress: a progress bar on stderr (pages; rank 0's only under DDP), as training
            and prediction show: an evaluation of many pages takes minutes.

    Returns:
        COCO results ``{"image_id", "category_id", "score", "bbox": [x, y, w, h],
        "segmentation": RLE}`` of all images, sorted by image id. Under DDP (world size > 1)
        each rank runs its share (indices rank, rank + world, ...) and every rank gets all.
    """
    if isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    num_classes = _num_model_classes(model)
    model_classes = list(classes) if classes is not None else list(dataset.classes)
    if num_classes is not None and num_classes != len(model_classes):
        raise InputError(f"the model has {num_classes} classes but the data has "
                         f"{len(model_classes)} ({', '.join(model_classes)})")
    category_ids = _category_ids(dataset, classes)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    amp = device.type == "cuda" if amp is None else amp
    model.to(device)
    shard = dataset
    if _distributed():
        shard = Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))
    loader = DataLoader(ErrorsAsItems(shard), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate,
                        pin_memory=device.type == "cuda")
    seconds = {"data": 0.0, "inference": 0.0, "paste_rle": 0.0}
    results: List[dict] = []
    bar = tqdm(total=len(shard), unit="page", desc="evaluate", file=sys.stderr, leave=False,
               # None: tqdm's own rule, no bar where stderr is no terminal (a log file, a
               # pipeline reading the one-line error of a bad page)
               disable=True if not progress or (_distributed() and dist.get_rank() != 0)
               else None)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            fetch_start = time.perf_counter()
            for batch in loader:
                loaded = time.perf_counter()
                if isinstance(batch, InputError):
                    raise batch
                images = [image.to(device, non_blocking=True) for image, _, _ in batch]
                detections, input_sizes = raw_detections(model, images, amp)
                _synchronize(device)
                inferred = time.perf_counter()
                for found, input_size, (_, image_id, orig_size) in zip(detections, input_sizes,
                                                                      batch):
                    results.extend(detections_to_coco_results(
                        found, image_id, input_size, orig_size, category_ids, mask_threshold))
                pasted = time.perf_counter()
                seconds["data"] += loaded - fetch_start
                seconds["inference"] += inferred - loaded
                seconds["paste_rle"] += pasted - inferred
                bar.update(len(batch))
                fetch_start = time.perf_counter()
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


def evaluate(model: torch.nn.Module, dataset: Any, *, batch_size: int = 2,
             device: Optional[Union[str, torch.device]] = None, amp: Optional[bool] = None,
             num_workers: int = 0, classes: Optional[Sequence[str]] = None,
             mask_threshold: float = 0.5, verbose: bool = False,
             timings: Optional[Dict[str, float]] = None, layout: bool = False,
             match_iou: float = 0.5, score_thresh: float = 0.5,
             progress: bool = True, evaluators: Sequence[str] = ("coco",)) -> Dict[str, dict]:
    """Metrics of ``model`` on ``dataset``: the blocks of metrics.json that the evaluators
    named in ``evaluators`` write (:data:`maskdla.evaluation.evaluators.EVALUATORS`), by
    default COCO's bbox and segm as pycocotools computes them.

    Arguments as :func:`predict_coco_results`; ``verbose`` shows pycocotools' own output;
    ``timings`` also gets each evaluator's seconds (``cocoeval``, ``layout``, ...).
    ``layout`` adds the ``layout`` evaluator (:func:`maskdla.evaluation.layout.layout_metrics`
    of the detections scoring >= ``score_thresh``, matched at ``match_iou``), e.g. for
    choosing checkpoints by ``layout.region_f1``. The ground truth is ``dataset.coco`` (at
    the original resolution, so APs/APm/APl use the original areas, as COCO defines them).

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
    results = predict_coco_results(model, dataset, batch_size=batch_size, device=device, amp=amp,
                                   num_workers=num_workers, classes=classes,
                                   mask_threshold=mask_threshold, timings=timings,
                                   progress=progress)
    metrics: Dict[str, dict] = {}
    if not _distributed() or dist.get_rank() == 0:
        inputs = EvaluationInputs(model, dataset, results, batch_size=batch_size,
                                  device=torch.device(device) if device is not None else None,
                                  num_workers=num_workers, classes=classes, verbose=verbose,
                                  match_iou=match_iou, score_thresh=score_thresh)
        metrics = run_evaluators(names, inputs, timings)
    return broadcast_object(metrics)
