"""VoVNet bodies (One-Shot Aggregation): one table, one builder.

Follows the public VoVNet detectron2 models the study used (Lee & Park, "CenterMask",
CVPR 2020): VoVNetV2 adds an identity shortcut on every OSA module of a stage but the
first, and effective Squeeze-Excitation (eSE) after each OSA module. ``version=1`` gives
plain V1 OSA modules (neither).

Note: the reference code, as published, silently turns eSE off in stages with more than
one module; we put eSE after every OSA module, as the VoVNetV2 paper describes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from maskdla.backbones.body import StagedBody
from maskdla.backbones.norm import NormFactory

STEM_CHANNELS = (64, 64, 128)


@dataclass(frozen=True)
class VoVNetConfig:
    """A row of :data:`VOVNET_CONFIGS`.

    Attributes:
        convs_per_module: 3x3 convs in each OSA module.
        modules_per_stage: OSA modules in stages 2, 3, 4, 5.
        stage_conv_channels: width of the 3x3 convs in stages 2-5.
        stage_out_channels: output width (after the 1x1 aggregation) of stages 2-5.
        fpn_channels: default FPN width (128 for the "Lite"/"slim" models).
    """

    convs_per_module: int
    modules_per_stage: Tuple[int, int, int, int]
    stage_conv_channels: Tuple[int, int, int, int] = (128, 160, 192, 224)
    stage_out_channels: Tuple[int, int, int, int] = (256, 512, 768, 1024)
    fpn_channels: int = 256


VOVNET_CONFIGS: Dict[str, VoVNetConfig] = {
    # Extra row: the public "V-19-slim" model, narrow enough for CPU training.
    "vovnet19slim": VoVNetConfig(3, (1, 1, 1, 1), (64, 80, 96, 112), (112, 256, 384, 512),
                                 fpn_channels=128),
    "vovnet19lite": VoVNetConfig(3, (1, 1, 1, 1), fpn_channels=128),
    "vovnet19": VoVNetConfig(3, (1, 1, 1, 1)),
    "vovnet39": VoVNetConfig(5, (1, 1, 2, 2)),
    "vovnet57": VoVNetConfig(5, (1, 1, 4, 3)),
    "vovnet99": VoVNetConfig(5, (1, 3, 9, 3)),
}


def conv_norm_relu(in_channels: int, out_channels: int, norm: NormFactory, kernel_size: int = 3,
                   stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        norm(out_channels),
        nn.ReLU(inplace=True),
    )


class EffectiveSqueezeExcitation(nn.Module):
    """eSE: channel attention from one 1x1 conv on the global average (no reduction),
    hard-sigmoid gate. ``[B, C, H, W] -> [B, C, H, W]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))
        return x * gate


class OSAModule(nn.Module):
    """``convs`` sequential 3x3 convs; the input and every conv output are concatenated
    once, then a 1x1 conv aggregates them to ``out_channels``.
    ``[B, in_channels, H, W] -> [B, out_channels, H, W]``."""

    def __init__(self, in_channels: int, conv_channels: int, out_channels: int, convs: int,
                 norm: NormFactory, identity: bool, ese: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            conv_norm_relu(in_channels if index == 0 else conv_channels, conv_channels, norm)
            for index in range(convs))
        self.concat = conv_norm_relu(in_channels + convs * conv_channels, out_channels, norm,
                                     kernel_size=1)
        self.ese = EffectiveSqueezeExcitation(out_channels) if ese else nn.Identity()
        if identity and in_channels != out_channels:
            raise ValueError("an identity shortcut needs equal input and output widths")
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        out = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return out + x if self.identity else out


class VoVNetBody(StagedBody):
    """``[B, 3, H, W]`` -> stage-5 features at stride 32; children in forward order
    (stem, stage2..stage5) so torchvision's IntermediateLayerGetter can tap stages."""

    stage_names = ("stage2", "stage3", "stage4", "stage5")

    def __init__(self, config: VoVNetConfig, norm: NormFactory, version: int = 2):
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"VoVNet version must be 1 or 2, got {version!r}")
        self.out_channels = tuple(config.stage_out_channels)
        self.stem = nn.Sequential(
            conv_norm_relu(3, STEM_CHANNELS[0], norm, stride=2),
            conv_norm_relu(STEM_CHANNELS[0], STEM_CHANNELS[1], norm),
            conv_norm_relu(STEM_CHANNELS[1], STEM_CHANNELS[2], norm, stride=2),
        )
        in_channels = STEM_CHANNELS[2]
        stages = zip(config.stage_conv_channels, config.stage_out_channels, config.modules_per_stage)
        for index, (conv_channels, out_channels, modules) in enumerate(stages):
            layers: List[nn.Module] = []
            if index > 0:  # stage 2 stays at the stem's stride 4
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            for module_index in range(modules):
                layers.append(OSAModule(
                    in_channels, conv_channels, out_channels, config.convs_per_module, norm,
                    identity=version == 2 and module_index > 0, ese=version == 2))
                in_channels = out_channels
            setattr(self, self.stage_names[index], nn.Sequential(*layers))
        for module in self.modules():
            # He init for the feature convs; the eSE gate keeps PyTorch's default init.
            if isinstance(module, nn.Conv2d) and module.bias is None:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def build_vovnet_body(config: VoVNetConfig, norm: NormFactory, version: int = 2) -> VoVNetBody:
    return VoVNetBody(config, norm, version)
