"""The conv-norm-act block both backbone families are built from."""
from __future__ import annotations

from torch import nn

from maskdla.backbones.norm import NormFactory


def conv_norm_act(in_channels: int, out_channels: int, norm: NormFactory, kernel_size: int = 3,
                  stride: int = 1, depthwise: bool = False) -> nn.Sequential:
    """Conv (no bias: the norm has one), norm, ReLU: ``[B, in, H, W] -> [B, out, H/s, W/s]``.

    ``depthwise=True`` makes it depthwise separable: a ``kernel_size`` conv per input
    channel, then a 1x1 conv to ``out_channels``, then the norm and ReLU (timm's
    ``SeparableConvNormAct``, the VoVNet detectron2 code's ``dw_conv3x3``).

    Children are numbered: ``0`` conv, ``1`` norm, ``2`` ReLU, or ``0`` depthwise conv,
    ``1`` pointwise conv, ``2`` norm, ``3`` ReLU. Unpack it (``nn.Sequential(*block, ...)``)
    where a flat numbering must be kept.
    """
    padding = kernel_size // 2
    if depthwise:
        convs = [nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding,
                           groups=in_channels, bias=False),
                 nn.Conv2d(in_channels, out_channels, 1, bias=False)]
    else:
        convs = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)]
    return nn.Sequential(*convs, norm(out_channels), nn.ReLU(inplace=True))
