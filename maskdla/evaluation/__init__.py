"""Evaluation: a model's detections -> COCO results at the original resolution -> metrics.

- :mod:`.results`: raw detections -> COCO results (boxes, RLE masks), exactly as
  pycocotools expects them;
- :mod:`.coco`: pycocotools' bbox and segm metrics, ground truth and results files;
- :mod:`.layout`: layout metrics (region F1 with merges and splits, pixel IoU, reading
  order) and :mod:`.layout_inputs`, which builds their inputs;
- :mod:`.evaluate`: :func:`predict_coco_results` and :func:`evaluate` over a Dataset
  (batched, one shard per rank under DDP).

The command line is ``python -m maskdla.eval`` (:mod:`maskdla.eval`). Names are imported on
first use, so that scoring-only modules (e.g. :mod:`.layout` for ``maskdla.report``) load
without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"evaluate": "maskdla.evaluation.evaluate",
            "predict_coco_results": "maskdla.evaluation.evaluate"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return __all__
