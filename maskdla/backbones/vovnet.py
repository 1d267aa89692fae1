"""VoVNet bodies (One-Shot Aggregation): one table, one builder.

Rows follow the public VoVNet detectron2 models the study used (Lee & Park, "CenterMask",
CVPR 2020): VoVNetV2 adds an identity shortcut on every OSA module of a stage but the
first, and effective Squeeze-Excitation (eSE) after every OSA module -- that code builds
an eSE module in every OSA module and applies it (its ``SE`` flag is accepted but never
read), and its ImageNet checkpoints hold an ``ese.fc`` for every module. The ``v1`` rows
are plain VoVNetV1 (neither), the ``ese_vovnet*b`` rows are timm's models of those names
(eSE on the last module of each stage only).

Saved bodies in three layouts load into these rows: maskdla's own, the detectron2
project's (``stem.stem_1/conv.weight``, ``stage4.OSA4_2.layers.0.OSA4_2_0/norm.bias``...)
and timm's (``stem.0.conv.weight``, ``stages.2.blocks.1.conv_mid.0.bn.bias``...); see
:meth:`VoVNetBody.remap_state_dict`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from maskdla.backbones.body import StagedBody
from maskdla.backbones.layers import conv_norm_act
from maskdla.backbones.norm import NormFactory

#: where eSE goes: after every OSA module, after the last module of each stage, nowhere
ESE_PLACES = ("every", "last", "none")

#: the VoVNet detectron2 project's ImageNet checkpoints, as its README links them
DETECTRON2_WEIGHTS = {
    "vovnet19slim": "https://www.dropbox.com/s/8h5ybmi4ftbcom0/vovnet19_ese_slim_detectron2.pth",
    "vovnet19": "https://dl.dropbox.com/s/rptgw6stppbiw1u/vovnet19_ese_detectron2.pth",
    "vovnet39": "https://dl.dropbox.com/s/q98pypf96rhtd8y/vovnet39_ese_detectron2.pth",
    "vovnet57": "https://dl.dropbox.com/s/8xl0cb3jj51f45a/vovnet57_ese_detectron2.pth",
    "vovnet99": "https://dl.dropbox.com/s/1mlv31coewx8trd/vovnet99_ese_detectron2.pth",
    "ese_vovnet19b_dw": "https://www.dropbox.com/s/9awvl0mxye3nqz1/vovnet19_ese_dw_detectron2.pth",
}
#: timm's ImageNet weights on the Hugging Face hub (model.safetensors, pytorch_model.bin)
TIMM_WEIGHTS = "https://huggingface.co/timm/{}"


@dataclass(frozen=True)
class VoVNetConfig:
    """A row of :data:`VOVNET_CONFIGS`.

    Attributes:
        convs_per_module: 3x3 convs in each OSA module.
        modules_per_stage: OSA modules in stages 2, 3, 4, 5.
        stage_conv_channels: width of the 3x3 convs in stages 2-5.
        stage_out_channels: output width (after the 1x1 aggregation) of stages 2-5.
        stem_channels: widths of the three stem convs (strides 2, 1, 2).
        fpn_channels: default FPN width (128 for the "Lite"/"slim" models).
        identity: identity shortcut on every OSA module of a stage but the first (V2).
        ese: where eSE gates go, one of :data:`ESE_PLACES`.
        depthwise: the stem's second and third convs and every 3x3 conv of the OSA
            modules are depthwise separable; a module whose input is wider than its convs
            first reduces it with a 1x1 conv (timm's and detectron2's ``dw`` models).
        published_weights: where ImageNet weights that fit this row are published
            (text for messages and docs; maskdla never downloads them), or None.
    """

    convs_per_module: int
    modules_per_stage: Tuple[int, int, int, int]
    stage_conv_channels: Tuple[int, int, int, int] = (128, 160, 192, 224)
    stage_out_channels: Tuple[int, int, int, int] = (256, 512, 768, 1024)
    stem_channels: Tuple[int, int, int] = (64, 64, 128)
    fpn_channels: int = 256
    identity: bool = True
    ese: str = "every"
    depthwise: bool = False
    published_weights: Optional[str] = None

    def __post_init__(self) -> None:
        if self.ese not in ESE_PLACES:
            raise ValueError(f"ese must be one of {', '.join(ESE_PLACES)}, got {self.ese!r}")

    def plain(self) -> "VoVNetConfig":
        """This row as VoVNetV1: no identity shortcut, no eSE (no published weights)."""
        return replace(self, identity=False, ese="none", published_weights=None)


_SLIM = dict(stage_conv_channels=(64, 80, 96, 112), stage_out_channels=(112, 256, 384, 512))

#: the study's rows (VoVNetV2, the detectron2 project's models)
_STUDY_ROWS: Dict[str, VoVNetConfig] = {
    # Extra row: the public "V-19-slim" model, narrow enough for CPU training.
    "vovnet19slim": VoVNetConfig(3, (1, 1, 1, 1), **_SLIM, fpn_channels=128,
                                 published_weights=DETECTRON2_WEIGHTS["vovnet19slim"]),
    "vovnet19lite": VoVNetConfig(3, (1, 1, 1, 1), fpn_channels=128,
                                 published_weights=DETECTRON2_WEIGHTS["vovnet19"]),
    "vovnet19": VoVNetConfig(3, (1, 1, 1, 1),
                             published_weights=DETECTRON2_WEIGHTS["vovnet19"]),
    "vovnet39": VoVNetConfig(5, (1, 1, 2, 2),
                             published_weights=DETECTRON2_WEIGHTS["vovnet39"]),
    "vovnet57": VoVNetConfig(5, (1, 1, 4, 3),
                             published_weights=DETECTRON2_WEIGHTS["vovnet57"]),
    "vovnet99": VoVNetConfig(5, (1, 3, 9, 3),
                             published_weights=DETECTRON2_WEIGHTS["vovnet99"]),
}

#: study row -> its VoVNetV1 row (what a legacy ``vovnet_version: 1`` config meant)
V1_ROWS: Dict[str, str] = {name: f"{name}v1" for name in _STUDY_ROWS}

#: timm's rows, named as in timm (``timm.create_model(name)`` builds the same network)
_TIMM_ROWS: Dict[str, VoVNetConfig] = {
    "ese_vovnet19b_dw": VoVNetConfig(3, (1, 1, 1, 1), stem_channels=(64, 64, 64), ese="last",
                                     depthwise=True,
                                     published_weights=TIMM_WEIGHTS.format("ese_vovnet19b_dw.ra_in1k")),
    "ese_vovnet39b": VoVNetConfig(5, (1, 1, 2, 2), ese="last",
                                  published_weights=TIMM_WEIGHTS.format("ese_vovnet39b.ra_in1k")),
    "ese_vovnet57b": VoVNetConfig(5, (1, 1, 4, 3), ese="last",
                                  published_weights=TIMM_WEIGHTS.format("ese_vovnet57b.ra4_e3600_r256_in1k")),
}

VOVNET_CONFIGS: Dict[str, VoVNetConfig] = {
    **_STUDY_ROWS,
    **{V1_ROWS[name]: config.plain() for name, config in _STUDY_ROWS.items()},
    **_TIMM_ROWS,
}


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
    once, then a 1x1 conv aggregates them to ``out_channels``, then the optional eSE gate
    and identity shortcut. ``[B, in_channels, H, W] -> [B, out_channels, H, W]``.

    With ``depthwise`` the convs are depthwise separable at ``conv_channels``; an input of
    another width is first reduced by a 1x1 conv (the concatenation still takes the input).
    """

    def __init__(self, in_channels: int, conv_channels: int, out_channels: int, convs: int,
                 norm: NormFactory, identity: bool, ese: bool, depthwise: bool = False):
        super().__init__()
        if identity and in_channels != out_channels:
            raise ValueError("an identity shortcut needs equal input and output widths")
        self.reduction = (conv_norm_act(in_channels, conv_channels, norm, kernel_size=1)
                          if depthwise and in_channels != conv_channels else None)
        first_width = conv_channels if depthwise else in_channels
        self.layers = nn.ModuleList(
            conv_norm_act(first_width if index == 0 else conv_channels, conv_channels, norm,
                          depthwise=depthwise)
            for index in range(convs))
        self.concat = conv_norm_act(in_channels + convs * conv_channels, out_channels, norm,
                                    kernel_size=1)
        self.ese = EffectiveSqueezeExcitation(out_channels) if ese else nn.Identity()
        self.identity = identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [x]
        features = x if self.reduction is None else self.reduction(x)
        for layer in self.layers:
            features = layer(features)
            outputs.append(features)
        out = self.ese(self.concat(torch.cat(outputs, dim=1)))
        return out + x if self.identity else out


class VoVNetBody(StagedBody):
    """``[B, 3, H, W]`` -> stage-5 features at stride 32; children in forward order
    (stem, stage2..stage5) so torchvision's IntermediateLayerGetter can tap stages.
    Stages 3-5 start with a max-pool (index 0 of their Sequential), stage 2 does not."""

    stage_names = ("stage2", "stage3", "stage4", "stage5")

    def __init__(self, config: VoVNetConfig, norm: NormFactory):
        super().__init__()
        self.out_channels = tuple(config.stage_out_channels)
        widths = (3, *config.stem_channels)
        self.stem = nn.Sequential(*(
            conv_norm_act(widths[index], widths[index + 1], norm, stride=(2, 1, 2)[index],
                          depthwise=config.depthwise and index > 0)
            for index in range(3)))
        in_channels = widths[-1]
        stages = zip(config.stage_conv_channels, config.stage_out_channels, config.modules_per_stage)
        for index, (conv_channels, out_channels, modules) in enumerate(stages):
            layers: List[nn.Module] = []
            if index > 0:  # stage 2 stays at the stem's stride 4
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            for module_index in range(modules):
                ese = config.ese == "every" or (config.ese == "last" and module_index == modules - 1)
                layers.append(OSAModule(
                    in_channels, conv_channels, out_channels, config.convs_per_module, norm,
                    identity=config.identity and module_index > 0, ese=ese,
                    depthwise=config.depthwise))
                in_channels = out_channels
            setattr(self, self.stage_names[index], nn.Sequential(*layers))
        for module in self.modules():
            # He init for the feature convs; the eSE gate keeps PyTorch's default init.
            if isinstance(module, nn.Conv2d) and module.bias is None:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def remap_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Keys of a saved VoVNet body -> ours; maskdla's own keys pass unchanged.

        detectron2 layout (the VoVNet detectron2 project's ImageNet checkpoints): its stem
        conv expects detectron2's input (BGR, 0-255, mean subtracted, std 1), so it is
        converted to the RGB input normalised with ImageNet mean and std that maskdla's
        model feeds (see :func:`rgb_normalised_from_bgr255`). timm layout: BatchNorm names
        ``bn``, classifier ``head.*`` dropped; timm's VoVNets take the RGB, normalised input.
        """
        state_dict = StagedBody.remap_state_dict(state_dict)
        separable = {key.rsplit(".conv_dw.", 1)[0] for key in state_dict if ".conv_dw." in key}
        remapped: Dict[str, torch.Tensor] = {}
        for key, value in state_dict.items():
            ours = _from_detectron2(key)
            if ours == "stem.0.0.weight":
                value = rgb_normalised_from_bgr255(value)
            ours = ours or _from_timm(key, separable)
            remapped[ours or key] = value
        return remapped


#: ImageNet statistics of the normalisation build_model's transform applies (torchvision's)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rgb_normalised_from_bgr255(weight: torch.Tensor) -> torch.Tensor:
    """A first conv's weight ``[out, 3, k, k]`` trained on detectron2's input (BGR, 0-255,
    ImageNet mean subtracted, std 1) -> the same conv for RGB input normalised with
    :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`.

    detectron2 feeds ``255 (x - mean)`` per channel in BGR order, which is ``255 std m``
    for maskdla's ``m = (x - mean) / std``: reversing the input channels and scaling each
    by ``255 std`` gives the same output, zero padding included (both inputs are 0 there).
    """
    scale = torch.tensor(IMAGENET_STD, dtype=weight.dtype).mul(255.0).view(1, 3, 1, 1)
    return weight.flip(1) * scale


_D2_CHILD = {"conv": "0", "norm": "1", "dw_conv3x3": "0", "pw_conv1x1": "1", "pw_norm": "2"}
_D2_STEM = re.compile(r"stem\.stem_(\d)/(\w+)\.(\w+)")
_D2_MODULE = re.compile(r"stage(\d)\.OSA\d_(\d+)\.(.+)")
_D2_PART = re.compile(r"(?:layers\.(\d+)\.OSA[\d_]+|concat\.OSA[\d_]+concat|"
                      r"conv_reduction\.OSA[\d_]+reduction_0)/(\w+)\.(\w+)")


def _module_index(stage: int, module: int) -> int:
    """Index in our stage Sequential of OSA module ``module`` (1-based) of stage ``stage``:
    stages 3-5 hold their max-pool at index 0."""
    return module - 1 + (stage > 2)


def _from_detectron2(key: str) -> Optional[str]:
    """Our key for a key of the detectron2 VoVNet layout, or None if it is not one."""
    match = _D2_STEM.fullmatch(key)
    if match and match[2] in _D2_CHILD:
        return f"stem.{int(match[1]) - 1}.{_D2_CHILD[match[2]]}.{match[3]}"
    match = _D2_MODULE.fullmatch(key)
    if not match:
        return None
    prefix = f"stage{match[1]}.{_module_index(int(match[1]), int(match[2]))}"
    rest = match[3]
    if rest.startswith("ese.fc."):
        return f"{prefix}.{rest}"
    part = _D2_PART.fullmatch(rest)
    if not part or part[2] not in _D2_CHILD:
        return None
    if rest.startswith("layers."):
        where = f"layers.{part[1]}"
    else:
        where = "concat" if rest.startswith("concat.") else "reduction"
    return f"{prefix}.{where}.{_D2_CHILD[part[2]]}.{part[3]}"


_TIMM_STEM = re.compile(r"stem\.(\d)\.(conv|conv_dw|conv_pw|bn)\.(\w+)")
_TIMM_MODULE = re.compile(r"stages\.(\d)\.blocks\.(\d+)\.(conv_mid\.\d+|conv_concat|conv_reduction|attn)"
                          r"\.(conv|conv_dw|conv_pw|bn|fc)\.(\w+)")
_TIMM_PART = {"conv_concat": "concat", "conv_reduction": "reduction", "attn": "ese"}


def _from_timm(key: str, separable: Set[str]) -> Optional[str]:
    """Our key for a key of timm's VoVNet layout, or None. ``separable``: the blocks of
    timm's depthwise separable convs (``stem.1``...), whose ``bn`` is their third child."""
    block = key.rsplit(".", 2)[0]  # the key less ".child.param"
    match = _TIMM_STEM.fullmatch(key)
    if match:
        ours, child, param = f"stem.{match[1]}", match[2], match[3]
    else:
        match = _TIMM_MODULE.fullmatch(key)
        if not match:
            return None
        stage, part, child, param = int(match[1]) + 2, match[3], match[4], match[5]
        where = f"layers.{part.split('.')[1]}" if part.startswith("conv_mid.") else _TIMM_PART[part]
        ours = f"stage{stage}.{_module_index(stage, int(match[2]) + 1)}.{where}"
    if child == "fc":
        return f"{ours}.fc.{param}"
    index = {"conv": 0, "conv_dw": 0, "conv_pw": 1, "bn": 2 if block in separable else 1}[child]
    return f"{ours}.{index}.{param}"


def build_vovnet_body(config: VoVNetConfig, norm: NormFactory) -> VoVNetBody:
    return VoVNetBody(config, norm)
