"""The one resize rule shared by the Dataset, the model's transform and prediction."""
from __future__ import annotations

from typing import Tuple


def training_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """Size (h, w) at which a ``height`` x ``width`` page is fed to the model.

    Same rule as torchvision's ``GeneralizedRCNNTransform``: scale the short side to
    ``min_size`` unless that makes the long side exceed ``max_size``, then scale the long
    side to ``max_size``. Rounded, so that a short side of exactly ``min_size`` is kept.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
