"""Backbones: the study's ResNet and VoVNet variants behind one registry.

``build_backbone(name)`` returns a torchvision ``BackboneWithFPN`` whose ``.body`` yields
stages 2-5 (strides 4, 8, 16, 32) and whose FPN adds a max-pooled fifth level.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskdla.backbones.norm import NORMS, default_norm, freeze_batchnorm, norm_factory
from maskdla.backbones.resnet import RESNET_CONFIGS, ResNetConfig, build_resnet_body
from maskdla.backbones.vovnet import VOVNET_CONFIGS, VoVNetConfig, build_vovnet_body
from maskdla.errors import InputError

__all__ = ["BACKBONES", "ALIASES", "NORMS", "BackboneSpec", "build_backbone", "build_body",
           "load_pretrained", "resolve_name"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its family and its row of the family's table."""

    family: str  # "resnet" or "vovnet"
    config: Union[ResNetConfig, VoVNetConfig]

    @property
    def default_fpn_channels(self) -> int:
        return getattr(self.config, "fpn_channels", 256)


#: other names users know a backbone by -> registered name
ALIASES: Dict[str, str] = {"resnet50": "resnet50a"}

#: name -> spec, aliases included (``resnet50`` is ``resnet50a``)
BACKBONES: Dict[str, BackboneSpec] = {
    **{name: BackboneSpec("resnet", config) for name, config in RESNET_CONFIGS.items()},
    **{name: BackboneSpec("vovnet", config) for name, config in VOVNET_CONFIGS.items()},
}
BACKBONES.update({alias: BACKBONES[target] for alias, target in ALIASES.items()})


def resolve_name(name: str) -> str:
    """Registered name for ``name`` (an alias resolves to its target); ValueError listing
    the valid names otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}")
    return ALIASES.get(name, name)


def build_body(name: str, norm: str = "gn", vovnet_version: int = 2) -> nn.Module:
    """The bare body (no FPN) of backbone ``name``, randomly initialised."""
    spec = BACKBONES[resolve_name(name)]
    factory = norm_factory(norm)
    if spec.family == "resnet":
        if vovnet_version != 2:
            raise ValueError("vovnet_version applies to VoVNet backbones only")
        return build_resnet_body(spec.config, factory)
    return build_vovnet_body(spec.config, factory, vovnet_version)


def build_backbone(name: str, *, norm: Optional[str] = None, pretrained: Optional[str] = None,
                   freeze_at: int = 0, fpn_channels: Optional[int] = None,
                   vovnet_version: int = 2) -> BackboneWithFPN:
    """Backbone ``name`` with an FPN on stages 2-5, ready for torchvision's MaskRCNN.

    Args:
        name: a key of :data:`BACKBONES`.
        norm: one of :data:`NORMS`; default frozen BN with ``pretrained``, else GroupNorm.
        pretrained: path of a state dict for the body, or ``"imagenet"`` (torchvision's
            download, resnet50/resnet101 only).
        freeze_at: number of leading stages frozen, the stem counting as 1 (detectron2's
            FREEZE_AT; 0 trains everything, 5 freezes the whole body).
        fpn_channels: FPN width; default 256, 128 for the Lite/slim VoVNets.
        vovnet_version: 2 (eSE + identity shortcuts, default) or 1 (plain OSA).

    Returns:
        ``BackboneWithFPN``: input ``[B, 3, H, W]``; output an OrderedDict of FPN maps
        ``"0".."3"`` at strides 4-32 and ``"pool"`` at stride 64, each ``fpn_channels`` wide.
    """
    spec = BACKBONES[resolve_name(name)]
    norm = norm or default_norm(pretrained)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms: {', '.join(NORMS)}")
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"freeze_at must be between 0 and 5 (stem + 4 stages), got {freeze_at}")
    body = build_body(name, norm, vovnet_version)
    if pretrained:
        load_pretrained(body, name, pretrained)
    stages = ["stem", *body.stage_names]
    for stage in stages[:freeze_at]:
        module = getattr(body, stage)
        freeze_batchnorm(module)
        for parameter in module.parameters():
            parameter.requires_grad_(False)
    return BackboneWithFPN(
        body,
        return_layers={stage: str(index) for index, stage in enumerate(body.stage_names)},
        in_channels_list=list(body.out_channels),
        out_channels=fpn_channels or spec.default_fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def load_pretrained(body: nn.Module, name: str, pretrained: str) -> Dict[str, list]:
    """Load weights into ``body`` from a local state dict file, or ``"imagenet"``.

    Accepts a bare state dict or one wrapped under ``"state_dict"``/``"model"``, with or
    without DDP's ``module.`` prefix; classifier keys are ignored. Logs and returns the
    missing and unexpected keys. Files are loaded with ``weights_only=True``.
    """
    if pretrained == "imagenet":
        state_dict = _download_imagenet(name)
        source = f"torchvision ImageNet weights for {name}"
    else:
        if not os.path.isfile(pretrained):
            raise InputError("pretrained weights file not found", pretrained)
        try:
            state_dict = torch.load(pretrained, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated file, pickle with code, not a torch file...
            raise InputError(f"cannot read pretrained weights ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})", pretrained) from None
        source = pretrained
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict):
        raise InputError("pretrained weights file does not hold a state dict", pretrained)
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    state_dict = body.remap_state_dict(state_dict)
    own = body.state_dict()
    mismatched = [key for key, value in state_dict.items()
                  if key in own and own[key].shape != value.shape]
    if mismatched:
        raise InputError(f"pretrained weights do not fit backbone {name}: shape mismatch for "
                         f"{len(mismatched)} tensors, e.g. {mismatched[0]} "
                         f"{tuple(state_dict[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}",
                         source)
    if not any(key in own for key in state_dict):
        raise InputError(f"none of the {len(state_dict)} tensors in the file belong to a "
                         f"{name} body (e.g. {next(iter(state_dict), '-')})", source)
    result = body.load_state_dict(state_dict, strict=False)
    report = {"missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    if report["missing"] or report["unexpected"]:
        logger.warning("%s -> %s: %d missing keys (e.g. %s), %d unexpected keys (e.g. %s)",
                       source, name, len(report["missing"]), report["missing"][:3],
                       len(report["unexpected"]), report["unexpected"][:3])
    else:
        logger.info("loaded %s into %s: all keys matched", source, name)
    return report


def _download_imagenet(name: str) -> Dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``name`` (downloads unless cached)."""
    import torchvision

    spec = BACKBONES[resolve_name(name)]
    torchvision_name = getattr(spec.config, "torchvision_name", None)
    if torchvision_name is None:
        raise InputError(f"no ImageNet weights are published for backbone {name}; pass "
                         "--pretrained PATH with a state dict of your own")
    weights = torchvision.models.get_model_weights(torchvision_name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # URLError, socket timeouts, HTTP errors...
        raise InputError(
            f"could not download torchvision's ImageNet weights for {name} ({error}). "
            f"Offline? Fetch {weights.url} on a connected machine and pass "
            "--pretrained PATH to that file.") from None
