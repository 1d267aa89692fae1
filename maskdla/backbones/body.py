"""What every backbone body shares: a stem, then four stages run in order."""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn


#: key prefixes of ImageNet classifiers (torchvision's ``fc``, VGG-style ``classifier``, timm's ``head``)
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.")


class StagedBody(nn.Module):
    """``[B, 3, H, W]`` -> stage-5 features. Subclasses set ``stem``, the four stages named in
    ``stage_names`` (strides 4, 8, 16, 32) and ``out_channels``. Children are registered in
    forward order so torchvision's IntermediateLayerGetter can tap the stages."""

    stage_names: Tuple[str, str, str, str]
    out_channels: Tuple[int, int, int, int]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def remap_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Keys of a saved body -> ours; classifier weights (``fc.*``/``classifier.*``/timm's
        ``head.*``) have no place in a detection body and are dropped."""
        return {key: value for key, value in state_dict.items()
                if not key.startswith(CLASSIFIER_PREFIXES)}
