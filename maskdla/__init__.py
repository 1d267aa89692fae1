"""maskdla: Document Layout Analysis with Mask R-CNN in pure PyTorch.

Public API (re-exported names, imported on first use so that the light command-line
tools do not pay for torch's import)::

    import maskdla
    model = maskdla.build_model("vovnet39", num_classes=4)
    summary = maskdla.fit(maskdla.TrainConfig(backbone="vovnet39", epochs=450, data="DATA"))
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "BACKBONES": "maskdla.backbones",
    "build_backbone": "maskdla.backbones",
    "build_model": "maskdla.model",
    "InputError": "maskdla.errors",
    "read_page": "maskdla.data.pagexml",
    "write_page": "maskdla.data.pagexml",
    "read_alto": "maskdla.data.alto",
    "write_alto": "maskdla.data.alto",
    "read_layout": "maskdla.data.layout",
    "Dataset": "maskdla.data.dataset",
    "TrainConfig": "maskdla.config",
    "fit": "maskdla.train",
    "evaluate": "maskdla.evaluation",
    "Predictor": "maskdla.prediction",
    "EnergyMeter": "maskdla.energy",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
