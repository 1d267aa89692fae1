"""Normalisation layers selectable by name, and the rule for the default."""
from __future__ import annotations

import math
from typing import Callable, Optional

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("frozenbn", "bn", "syncbn", "gn")

#: GroupNorm groups, as in "Group Normalization" (Wu & He) and detectron2's GN configs.
GROUPNORM_GROUPS = 32

NormFactory = Callable[[int], nn.Module]


def default_norm(pretrained: Optional[str]) -> str:
    """Frozen BN over pretrained weights (its statistics come from ImageNet); GroupNorm
    from scratch, because with 2 images per GPU batch statistics are noise."""
    return "frozenbn" if pretrained else "gn"


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest divisor of ``channels`` below that."""
    return nn.GroupNorm(math.gcd(GROUPNORM_GROUPS, channels), channels)


def norm_factory(name: str) -> NormFactory:
    """``name`` in :data:`NORMS` -> a callable ``channels -> nn.Module``."""
    factories = {
        "frozenbn": FrozenBatchNorm2d,
        "bn": nn.BatchNorm2d,
        "syncbn": nn.SyncBatchNorm,
        "gn": group_norm,
    }
    if name not in factories:
        raise ValueError(f"unknown norm {name!r}; valid norms: {', '.join(NORMS)}")
    return factories[name]


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm/SyncBatchNorm in ``module`` by a FrozenBatchNorm2d holding
    its current statistics (used for frozen stages: their statistics must not drift)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replacement = freeze_batchnorm(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module
