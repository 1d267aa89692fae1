"""maskdla: Document Layout Analysis with Mask R-CNN in pure PyTorch.

Public API (re-exported names only)::

    import maskdla
    model = maskdla.build_model("vovnet39", num_classes=4)
"""
from maskdla.backbones import BACKBONES, build_backbone
from maskdla.errors import InputError
from maskdla.model import build_model

__version__ = "0.1.0"

__all__ = ["BACKBONES", "InputError", "build_backbone", "build_model", "__version__"]
