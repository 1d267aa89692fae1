"""Backbones: the study's ResNet and VoVNet variants (and timm's VoVNets) behind one registry.

``build_backbone(name)`` returns a torchvision ``BackboneWithFPN`` whose ``.body`` yields
stages 2-5 (strides 4, 8, 16, 32) and whose FPN adds a max-pooled fifth level. A variant
is a row of its family's table (:data:`RESNET_CONFIGS`, :data:`VOVNET_CONFIGS`); the
spec holds the family's builder.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskdla.backbones.body import StagedBody
from maskdla.backbones.norm import NORMS, NormFactory, default_norm, freeze_batchnorm, norm_factory
from maskdla.backbones.resnet import RESNET_CONFIGS, ResNetConfig, build_resnet_body
from maskdla.backbones.vovnet import V1_ROWS, VOVNET_CONFIGS, VoVNetConfig, build_vovnet_body
from maskdla.errors import InputError, error_line, torch_load_problem

__all__ = ["BACKBONES", "ALIASES", "NORMS", "V1_ROWS", "BackboneSpec", "build_backbone",
           "build_body", "identify_backbone", "load_pretrained", "read_weights", "resolve_name"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its row of a family's table and the family's builder."""

    family: str  # the table it is a row of: "resnet" or "vovnet"
    config: Union[ResNetConfig, VoVNetConfig]
    builder: Callable[[Any, NormFactory], StagedBody]

    def build_body(self, norm: NormFactory) -> StagedBody:
        """The body of this row, randomly initialised, with norms made by ``norm``."""
        return self.builder(self.config, norm)

    @property
    def default_fpn_channels(self) -> int:
        return getattr(self.config, "fpn_channels", 256)


#: other names users know a backbone by -> registered name
ALIASES: Dict[str, str] = {"resnet50": "resnet50a"}

#: name -> spec, aliases included (``resnet50`` is ``resnet50a``)
BACKBONES: Dict[str, BackboneSpec] = {
    **{name: BackboneSpec("resnet", config, build_resnet_body) for name, config in RESNET_CONFIGS.items()},
    **{name: BackboneSpec("vovnet", config, build_vovnet_body) for name, config in VOVNET_CONFIGS.items()},
}
BACKBONES.update({alias: BACKBONES[target] for alias, target in ALIASES.items()})


def resolve_name(name: str) -> str:
    """Registered name for ``name`` (an alias resolves to its target); ValueError listing
    the valid names otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(sorted(BACKBONES))}")
    return ALIASES.get(name, name)


def build_body(name: str, norm: str = "gn") -> StagedBody:
    """The bare body (no FPN) of backbone ``name``, randomly initialised."""
    return BACKBONES[resolve_name(name)].build_body(norm_factory(norm))


def build_backbone(name: str, *, norm: Optional[str] = None, pretrained: Optional[str] = None,
                   freeze_at: int = 0, fpn_channels: Optional[int] = None) -> BackboneWithFPN:
    """Backbone ``name`` with an FPN on stages 2-5, ready for torchvision's MaskRCNN.

    Args:
        name: a key of :data:`BACKBONES`.
        norm: one of :data:`NORMS`; default frozen BN with ``pretrained``, else GroupNorm.
        pretrained: path of a weights file for the body (see :func:`load_pretrained`), or
            ``"imagenet"`` (torchvision's download, resnet50/resnet101 only).
        freeze_at: number of leading stages frozen, the stem counting as 1 (detectron2's
            FREEZE_AT; 0 trains everything, 5 freezes the whole body).
        fpn_channels: FPN width; default 256, 128 for the Lite/slim VoVNets.

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
    body = build_body(name, norm)
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
    """Load weights into ``body`` (backbone ``name``) from a file (:func:`read_weights`),
    or ``"imagenet"`` (torchvision's ResNet-50/101 download).

    The body's :meth:`remap_state_dict` maps the layouts it knows (torchvision's ResNet;
    the VoVNet detectron2 project's and timm's VoVNets) to ours; classifier keys are
    ignored, as is ``num_batches_tracked``. Returns (and logs) the missing and unexpected
    keys. Raises InputError naming the file when a tensor has another shape, when no
    tensor belongs to the body, or when the file is the body of another registered
    backbone -- naming that backbone and the first tensor that differs.
    """
    if pretrained == "imagenet":
        state_dict = _download_imagenet(name)
        source = f"torchvision ImageNet weights for {name}"
    else:
        state_dict, source = read_weights(pretrained), pretrained
    remapped = body.remap_state_dict(state_dict)
    own = body.state_dict()
    missing, unexpected, mismatched = _differences(own, remapped)
    if missing or unexpected or mismatched:
        owners = identify_backbone(state_dict)
        if owners and resolve_name(name) not in owners:
            raise InputError(f"these are weights for backbone {' = '.join(owners)}, not {name}: "
                             f"{_first_difference(own, remapped, name)}", source)
    if mismatched:
        key = mismatched[0]
        raise InputError(f"pretrained weights do not fit backbone {name}: shape mismatch for "
                         f"{len(mismatched)} tensors, e.g. {key} {tuple(remapped[key].shape)} in "
                         f"the file vs {tuple(own[key].shape)}", source)
    if not any(key in own for key in remapped):
        raise InputError(f"none of the {len(remapped)} tensors in the file belong to a "
                         f"{name} body (e.g. {next(iter(remapped), '-')})", source)
    body.load_state_dict(remapped, strict=False)
    report = {"missing": missing, "unexpected": unexpected}
    if missing or unexpected:
        logger.warning("%s -> %s: %d missing keys (e.g. %s), %d unexpected keys (e.g. %s)",
                       source, name, len(missing), missing[:3], len(unexpected), unexpected[:3])
    else:
        logger.info("loaded %s into %s: all keys matched", source, name)
    return report


#: maskdla checkpoint keys (maskdla.checkpoint): a whole trained model, not backbone weights
_CHECKPOINT_KEYS = ("model", "config", "classes")
#: prefixes of a backbone body inside a detector's state dict (detectron2's, torchvision's)
_BODY_PREFIXES = ("backbone.bottom_up.", "backbone.body.")


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file, as a flat state dict.

    Reads ``torch.save`` files (with ``weights_only=True``) and ``.safetensors`` files; a
    state dict bare or wrapped under ``"state_dict"``/``"model"`` (detectron2), with or
    without DDP's ``module.`` prefix. From a detector's state dict (detectron2's
    ``backbone.bottom_up.*``, torchvision's ``backbone.body.*``) only the body is kept.
    A maskdla checkpoint is refused with the flags that take one.
    """
    if not os.path.isfile(path):
        raise InputError("pretrained weights file not found", path)
    if str(path).endswith(".safetensors"):
        state_dict: Any = _read_safetensors(path)
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # truncated file, pickle with code, not a torch file...
            raise InputError(f"cannot read pretrained weights: {torch_load_problem(error)}",
                             path) from None
    if isinstance(state_dict, dict) and all(key in state_dict for key in _CHECKPOINT_KEYS):
        raise InputError("this is a maskdla checkpoint (a trained model), not backbone weights "
                         "for --pretrained: fine-tune it with --init-from, or continue its run "
                         "with --resume", path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict) or not any(isinstance(value, torch.Tensor)
                                                   for value in state_dict.values()):
        raise InputError("pretrained weights file does not hold a state dict", path)
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()
                  if isinstance(value, torch.Tensor)}
    for prefix in _BODY_PREFIXES:
        if any(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items()
                    if key.startswith(prefix)}
    return state_dict


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise InputError("reading .safetensors weights needs the safetensors package: "
                         "pip install 'maskdla[safetensors]'", path) from None
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # header too large, truncated, not safetensors...
        raise InputError(f"cannot read pretrained weights ({error_line(error)})", path) from None


#: norm buffers: a GroupNorm body has none, so they do not tell two backbones apart
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _is_counter(key: str) -> bool:
    """BatchNorm's ``num_batches_tracked``: a step counter, no weight, absent from frozen BN."""
    return key.endswith("num_batches_tracked")


def _differences(own: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]
                 ) -> Tuple[List[str], List[str], List[str]]:
    """(missing, unexpected, mismatched) keys of ``theirs`` against ``own``, in ``own``'s
    order for missing and mismatched; BatchNorm step counters ignored."""
    missing = [key for key in own if key not in theirs and not _is_counter(key)]
    unexpected = [key for key in theirs if key not in own and not _is_counter(key)]
    mismatched = [key for key in own if key in theirs and own[key].shape != theirs[key].shape]
    return missing, unexpected, mismatched


def _first_difference(own: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor],
                      name: str) -> str:
    """The first tensor (in the body's order) that keeps ``theirs`` from fitting ``own``;
    norm buffers aside (a GroupNorm body has none)."""
    for key, value in own.items():
        if key.endswith(_NORM_BUFFERS):
            continue
        if key not in theirs:
            return f"first mismatched tensor {key} {tuple(value.shape)} of {name} is not in the file"
        if theirs[key].shape != value.shape:
            return (f"first mismatched tensor {key}: {tuple(theirs[key].shape)} in the file, "
                    f"{tuple(value.shape)} in {name}")
    key = next(key for key in theirs if key not in own and not key.endswith(_NORM_BUFFERS))
    return f"first mismatched tensor {key} {tuple(theirs[key].shape)} in the file has no place in {name}"


def _signature(tensors: Mapping[str, torch.Tensor]) -> Dict[str, Tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in tensors.items()
            if not key.endswith(_NORM_BUFFERS)}


@functools.lru_cache(maxsize=None)
def _body_signature(name: str) -> Tuple[Callable, Dict[str, Tuple[int, ...]]]:
    """(remap function, tensor names and shapes) of backbone ``name``'s body, built on the
    meta device (no weights allocated)."""
    with torch.device("meta"):
        body = BACKBONES[name].build_body(FrozenBatchNorm2d)
    return body.remap_state_dict, _signature(body.state_dict())


def identify_backbone(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Registered backbones (aliases excluded) whose body ``state_dict`` fits exactly: the
    same tensor names and shapes after each family's remapping, norm buffers aside."""
    owners = []
    for name in BACKBONES:
        if name in ALIASES:
            continue
        remap, signature = _body_signature(name)
        if _signature(remap(dict(state_dict))) == signature:
            owners.append(name)
    return owners


def _download_imagenet(name: str) -> Dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict for ``name`` (downloads unless cached)."""
    import torchvision

    spec = BACKBONES[resolve_name(name)]
    torchvision_name = getattr(spec.config, "torchvision_name", None)
    if torchvision_name is None:
        published = getattr(spec.config, "published_weights", None)
        if published:
            raise InputError(f"maskdla downloads torchvision's ResNet weights only; ImageNet "
                             f"weights for backbone {name} are published at {published}: fetch "
                             "that file and pass --pretrained PATH")
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
