"""Evaluation: a model's detections -> COCO results at the original resolution -> metrics.

- :mod:`.results`: raw detections -> COCO results (boxes, RLE masks), exactly as
  pycocotools expects them;
- :mod:`.coco`: pycocotools' bbox and segm metrics, ground truth and results files;
- :mod:`.layout`: layout metrics (region F1 with merges and splits, pixel IoU, reading
  order); :mod:`.layout_inputs` builds their inputs;
- :mod:`.proposals`: per-class recall of the RPN's proposals (is a class proposed at all?);
- :mod:`.lines`: text-line metrics on pages: baseline P/R/F1 (READ-BAD / cBAD scheme) and
  line-polygon IoU F1;
- :mod:`.evaluate`: :func:`predict_coco_results` and :func:`evaluate` over a Dataset
  (batched, one shard per rank under DDP), run by the settings of :class:`EvalSettings`.

The command line is ``python -m maskdla.eval`` (:mod:`maskdla.eval`).
"""
from maskdla.evaluation.evaluate import evaluate, predict_coco_results
from maskdla.evaluation.evaluators import EvalSettings

__all__ = ["EvalSettings", "evaluate", "predict_coco_results"]
