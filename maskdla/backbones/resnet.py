"""ResNet bodies for the study's variants: one table, one builder.

A body is ``stem -> layer1 (stage 2, stride 4) -> layer2 (stride 8) -> layer3 (stride 16)
-> layer4 (stride 32)``, with torchvision's bottleneck blocks (stride on the 3x3 conv),
so the ``original``-stem variants load torchvision's ImageNet state dicts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from maskdla.backbones.body import StagedBody
from maskdla.backbones.layers import conv_norm_act
from maskdla.backbones.norm import NormFactory

#: bottleneck width (planes) of stages 2-5; each block outputs 4x this.
STAGE_PLANES = (64, 128, 256, 512)
STEM_CHANNELS = 64


@dataclass(frozen=True)
class ResNetConfig:
    """A row of :data:`RESNET_CONFIGS`.

    Attributes:
        stem: ``"original"`` (conv 7x7/64 s2 + max-pool 3x3 s2), ``"deep"`` (three conv
            3x3/64, the first s2, + avg-pool 3x3 s2) or ``"dual"`` (both paths summed,
            + avg-pool 3x3 s2).
        blocks: bottleneck blocks in stages 2, 3, 4, 5.
        torchvision_name: the torchvision model whose ImageNet weights fit this body
            (``pretrained="imagenet"``), or None.
    """

    stem: str
    blocks: Tuple[int, int, int, int]
    torchvision_name: Optional[str] = None


RESNET_CONFIGS: Dict[str, ResNetConfig] = {
    "resnet31": ResNetConfig("original", (2, 3, 2, 3)),
    "resnet50a": ResNetConfig("original", (3, 4, 6, 3), torchvision_name="resnet50"),
    "resnet50b": ResNetConfig("deep", (3, 4, 6, 3)),
    "resnet50c": ResNetConfig("dual", (3, 4, 6, 3)),
    "resnet101": ResNetConfig("original", (3, 4, 23, 3), torchvision_name="resnet101"),
}


class ResNetStem(nn.Module):
    """Stride-4 stem: ``[B, 3, H, W] -> [B, 64, H/4, W/4]``.

    The 7x7 path's modules are named ``conv1`` and ``bn1`` as in torchvision, so its
    ImageNet weights map onto ``stem.conv1`` / ``stem.bn1``.
    """

    def __init__(self, kind: str, norm: NormFactory):
        super().__init__()
        if kind not in ("original", "deep", "dual"):
            raise ValueError(f"unknown ResNet stem {kind!r}")
        self.kind = kind
        if kind in ("original", "dual"):
            self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 7, 2, 3, bias=False)
            self.bn1 = norm(STEM_CHANNELS)
        if kind in ("deep", "dual"):
            # unpacked: the deep path's keys stay deep.0 ... deep.8 as in saved models
            self.deep = nn.Sequential(
                *conv_norm_act(3, STEM_CHANNELS, norm, stride=2),
                *conv_norm_act(STEM_CHANNELS, STEM_CHANNELS, norm),
                *conv_norm_act(STEM_CHANNELS, STEM_CHANNELS, norm),
            )
        # The original ResNet max-pools; the deep-stem variants (ResNet-C/D "bag of
        # tricks" style) average-pool, as the study describes them.
        pool = nn.MaxPool2d if kind == "original" else nn.AvgPool2d
        self.pool = pool(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        if self.kind in ("original", "dual"):
            out = torch.relu(self.bn1(self.conv1(x)))
        if self.kind in ("deep", "dual"):
            out = out + self.deep(x)
        return self.pool(out)


class ResNetBody(StagedBody):
    """``[B, 3, H, W]`` -> stage-5 features ``[B, 2048, H/32, W/32]``; children in forward
    order (stem, layer1..layer4) so torchvision's IntermediateLayerGetter can tap stages."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")
    out_channels = tuple(planes * Bottleneck.expansion for planes in STAGE_PLANES)

    def __init__(self, config: ResNetConfig, norm: NormFactory):
        super().__init__()
        self.stem = ResNetStem(config.stem, norm)
        in_channels = STEM_CHANNELS
        for index, (planes, blocks) in enumerate(zip(STAGE_PLANES, config.blocks)):
            stride = 1 if index == 0 else 2
            stage = self._make_stage(in_channels, planes, blocks, stride, norm)
            setattr(self, self.stage_names[index], stage)
            in_channels = planes * Bottleneck.expansion
        _init_weights(self)

    @staticmethod
    def _make_stage(in_channels: int, planes: int, blocks: int, stride: int,
                    norm: NormFactory) -> nn.Sequential:
        out_channels = planes * Bottleneck.expansion
        # The first block of every stage projects the shortcut (1x1 conv, stride).
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), norm(out_channels))
        layers = [Bottleneck(in_channels, planes, stride, downsample, norm_layer=norm)]
        layers += [Bottleneck(out_channels, planes, norm_layer=norm) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    @staticmethod
    def remap_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """torchvision ResNet keys -> ours: ``conv1.*``/``bn1.*`` live under ``stem.``;
        the classifier ``fc.*`` has no place in a detection body and is dropped."""
        return {("stem." + key if key.startswith(("conv1.", "bn1.")) else key): value
                for key, value in StagedBody.remap_state_dict(state_dict).items()}


def _init_weights(body: nn.Module) -> None:
    """He init for convs; norms start as identity, except the last norm of each residual
    branch, which starts at zero so each block starts as the identity (trains better
    from scratch; "zero-init residual", Goyal et al. 2017)."""
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in body.modules():
        if isinstance(module, Bottleneck) and isinstance(module.bn3, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
            nn.init.zeros_(module.bn3.weight)


def build_resnet_body(config: ResNetConfig, norm: NormFactory) -> ResNetBody:
    return ResNetBody(config, norm)
