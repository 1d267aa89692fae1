"""The evaluators: one table of what an evaluation of a model on a data set can compute.

Each :class:`Evaluator` builds its block(s) of metrics.json and names the figures in them
that ``--best-metric`` may choose a checkpoint by. :func:`maskdla.evaluation.evaluate`
runs the ones asked for; training asks for COCO and for the one whose block
``--best-metric`` names (:func:`evaluators_for`), and checks the path before it starts
(:func:`check_best_metric`).

To add one, edit here: write its ``score`` function (model, data set and the COCO results
in, its blocks out) and add its row to :data:`EVALUATORS`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from maskdla.errors import InputError
from maskdla.evaluation.coco import STAT_INDEX, coco_metrics
from maskdla.evaluation.layout_inputs import results_layout_metrics
from maskdla.evaluation.proposals import proposal_recall

__all__ = ["EvalSettings", "EvaluationInputs", "Evaluator", "EVALUATORS", "run_evaluators",
           "check_best_metric", "evaluators_for"]


@dataclass(frozen=True)
class EvalSettings:
    """How a model is run over a data set and scored: the settings of
    :func:`maskdla.evaluation.evaluate` and :func:`maskdla.evaluation.predict_coco_results`
    (which uses the first seven), each default here.

    Attributes:
        batch_size: images per forward pass.
        device: where to run; default the model's device (the model is moved there).
        amp: autocast for the backbone and RPN (:func:`maskdla.inference.raw_detections`);
            default on for CUDA, off otherwise.
        num_workers: DataLoader worker processes.
        classes: the model's class names (label i = classes[i - 1]) when they differ in
            order from ``dataset.classes``; matched to the data's categories by name.
        mask_threshold: mask probability above which a pixel belongs to the mask.
        progress: a progress bar on stderr (pages; rank 0's only under DDP), as training
            and prediction show: an evaluation of many pages takes minutes.
        verbose: pycocotools' own output.
        match_iou: the IoU at which the ``layout`` evaluator matches regions.
        score_thresh: the ``layout`` evaluator scores the detections scoring at least this.
    """

    batch_size: int = 2
    device: Optional[Union[str, torch.device]] = None
    amp: Optional[bool] = None
    num_workers: int = 0
    classes: Optional[Sequence[str]] = None
    mask_threshold: float = 0.5
    progress: bool = True
    verbose: bool = False
    match_iou: float = 0.5
    score_thresh: float = 0.5


@dataclass(frozen=True)
class EvaluationInputs:
    """What an evaluator may score: the model, the data set (``dataset.coco``: the ground
    truth at the original resolution) and the model's COCO results on it, with the
    settings of the evaluation."""

    model: torch.nn.Module
    dataset: Any
    results: List[dict]
    settings: EvalSettings = EvalSettings()


@dataclass(frozen=True)
class Evaluator:
    """One kind of evaluation.

    Attributes:
        name: what :func:`maskdla.evaluation.evaluate` is asked for (``evaluators=``).
        blocks: the top-level keys of metrics.json it writes.
        figures: the keys inside each block that ``--best-metric BLOCK.FIGURE`` may name
            (deeper paths below them, such as ``per_class.NAME``, are checked at the first
            evaluation, where the classes are known).
        score: inputs -> ``{block: figures}``; None for an evaluator that does not score a
            model on a data set (it runs from ``python -m maskdla.eval`` only).
        timing: the key of ``evaluate(timings=...)`` its seconds are added under.
        what: one line on what it measures.
    """

    name: str
    blocks: Tuple[str, ...]
    figures: Tuple[str, ...]
    score: Optional[Callable[[EvaluationInputs], Dict[str, Any]]]
    timing: str
    what: str


def _coco(inputs: EvaluationInputs) -> Dict[str, Any]:
    return coco_metrics(inputs.dataset.coco, inputs.results, verbose=inputs.settings.verbose)


def _layout(inputs: EvaluationInputs) -> Dict[str, Any]:
    return {"layout": results_layout_metrics(inputs.dataset.coco, inputs.results,
                                             match_iou=inputs.settings.match_iou,
                                             score_thresh=inputs.settings.score_thresh)}


def _proposals(inputs: EvaluationInputs) -> Dict[str, Any]:
    settings = inputs.settings
    return {"proposals": proposal_recall(inputs.model, inputs.dataset,
                                         batch_size=settings.batch_size,
                                         device=settings.device,
                                         num_workers=settings.num_workers,
                                         classes=settings.classes)}


#: name -> evaluator; "coco" first: every evaluation computes it.
EVALUATORS: Dict[str, Evaluator] = {evaluator.name: evaluator for evaluator in (
    Evaluator("coco", ("bbox", "segm"), (*STAT_INDEX, "per_class"), _coco, "cocoeval",
              "pycocotools' box and mask AP (maskdla.evaluation.coco)"),
    Evaluator("layout", ("layout",),
              ("region_precision", "region_recall", "region_f1", "merges", "splits",
               "pixel_miou", "pixel_mprecision", "pixel_mrecall", "pixel_mf1",
               "reading_order_tau", "per_class"), _layout, "layout",
              "region F1 with merges and splits, pixel IoU, reading order "
              "(maskdla.evaluation.layout)"),
    Evaluator("proposals", ("proposals",), ("all", "per_class"), _proposals, "proposals",
              "per-class recall of the RPN's proposals (maskdla.evaluation.proposals)"),
    Evaluator("lines", ("lines",),
              ("baseline_precision", "baseline_recall", "baseline_f1", "line_precision",
               "line_recall", "line_f1"), None, "lines",
              "baseline P/R/F1 and line-polygon IoU F1 of predicted PAGE/ALTO files "
              "(maskdla.evaluation.lines; python -m maskdla.eval --lines)"),
)}


def run_evaluators(names: Sequence[str], inputs: EvaluationInputs,
                   timings: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """The blocks of the evaluators ``names`` (rows of :data:`EVALUATORS` that score a
    model), in that order; each one's seconds added to ``timings[evaluator.timing]``."""
    metrics: Dict[str, Any] = {}
    for name in names:
        evaluator = EVALUATORS[name]
        start = time.perf_counter()
        metrics.update(evaluator.score(inputs))
        if timings is not None:
            timings[evaluator.timing] = (timings.get(evaluator.timing, 0.0)
                                         + time.perf_counter() - start)
    return metrics


def _owner(block: str) -> Optional[Evaluator]:
    """The evaluator that writes metrics.json's ``block``, or None."""
    return next((evaluator for evaluator in EVALUATORS.values() if block in evaluator.blocks),
                None)


def check_best_metric(path: str) -> None:
    """InputError unless ``--best-metric path`` names a block and figure that evaluations
    during training compute (``segm.AP``, ``layout.region_f1``, ``segm.per_class.NAME``)."""
    block, _, rest = path.partition(".")
    figure = rest.split(".", 1)[0]
    evaluator = _owner(block)
    if evaluator is None:
        blocks = ", ".join(block for evaluator in EVALUATORS.values() if evaluator.score
                           for block in evaluator.blocks)
        raise InputError(f"--best-metric {path}: no evaluation writes {block!r} "
                         f"(blocks: {blocks})")
    if evaluator.score is None:
        raise InputError(f"--best-metric {path}: {evaluator.name} metrics are not computed "
                         f"during training ({evaluator.what})")
    if figure not in evaluator.figures:
        raise InputError(f"--best-metric {path}: {block} has no figure {figure!r} "
                         f"(figures: {', '.join(evaluator.figures)})")


def evaluators_for(best_metric: str) -> Tuple[str, ...]:
    """The evaluators an evaluation during training runs: COCO (the run's log line and
    metrics.json), and the one that writes ``best_metric``'s block."""
    owner = _owner(best_metric.split(".", 1)[0])
    return ("coco",) if owner is None or owner.name == "coco" else ("coco", owner.name)
