"""Fine-tuning: start a new run from a trained maskdla model (``--init-from CHECKPOINT``).

The new run has its own schedule and optimizer; only the weights come from the
checkpoint. Every tensor whose name and shape fit is kept. When the new corpus has other
classes, the class-specific layers (the box predictor's ``cls_score`` and ``bbox_pred``,
the mask predictor's ``mask_fcn_logits``) are rebuilt: the rows of a class the checkpoint
knows by the same name (and the background's) are carried over, the others keep the new
model's initialisation -- kraken's "union" of an old and a new class list, but without
the old model's extra classes.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from maskdla.backbones import read_weights
from maskdla.checkpoint import load_checkpoint
from maskdla.errors import InputError

#: class-specific layers of torchvision's Mask R-CNN -> rows per class along dim 0
#: (label 0 is the background, label i + 1 is classes[i])
CLASS_LAYERS: Dict[str, int] = {
    "roi_heads.box_predictor.cls_score": 1,
    "roi_heads.box_predictor.bbox_pred": 4,
    "roi_heads.mask_predictor.mask_fcn_logits": 1,
}


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did.

    Attributes:
        checkpoint: the checkpoint's path.
        backbone: the checkpoint's backbone (from its config), or None.
        kept: tensors copied whole from the checkpoint.
        reinitialised: tensors of the model that keep their new initialisation (no tensor
            of that name and shape in the checkpoint); class layers rebuilt row by row are
            in ``class_layers`` instead.
        class_layers: class-specific layers rebuilt row by row (empty when the class lists
            are equal); ``rebuilt``: their tensors.
        carried_classes: classes whose rows came from the checkpoint (shared by name).
        new_classes: classes of the new run the checkpoint does not know (fresh rows).
        dropped_classes: classes of the checkpoint the new run does not have.
        unused: checkpoint tensors with no place in the model.
    """

    checkpoint: str
    backbone: Optional[str]
    kept: List[str] = field(default_factory=list)
    reinitialised: List[str] = field(default_factory=list)
    class_layers: List[str] = field(default_factory=list)
    rebuilt: List[str] = field(default_factory=list)
    carried_classes: List[str] = field(default_factory=list)
    new_classes: List[str] = field(default_factory=list)
    dropped_classes: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)

    def describe(self) -> str:
        """A few lines for the run's log: counts, and names where they are few."""
        total = len(self.kept) + len(self.reinitialised) + len(self.rebuilt)
        lines = [f"init from {self.checkpoint} ({self.backbone or 'backbone unknown'}): kept "
                 f"{len(self.kept)} of {total} tensors"]
        if self.reinitialised:
            lines.append(f"  re-initialised ({len(self.reinitialised)}, no tensor of that shape): "
                         f"{_few(self.reinitialised)}")
        if self.class_layers:
            lines.append(f"  class layers rebuilt: {', '.join(self.class_layers)}")
            lines.append(f"  classes carried over by name: {_few(self.carried_classes) or '-'}; "
                         f"new: {_few(self.new_classes) or '-'}; "
                         f"dropped: {_few(self.dropped_classes) or '-'}")
        if self.unused:
            lines.append(f"  checkpoint tensors unused ({len(self.unused)}): {_few(self.unused)}")
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _few(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def init_from_checkpoint(model: nn.Module, path: Union[str, os.PathLike],
                         classes: Sequence[str]) -> InitReport:
    """Initialise ``model`` (a new run's Mask R-CNN) from the maskdla checkpoint ``path``.

    Args:
        model: the new run's model, freshly built for ``classes`` (``len(classes) + 1``
            outputs per class layer); its weights are overwritten in place.
        path: a checkpoint written by maskdla's training (:mod:`maskdla.checkpoint`).
        classes: the new run's class names, background excluded (label ``i + 1`` is
            ``classes[i]``).

    Returns:
        An :class:`InitReport`: kept tensors, re-initialised ones, class rows carried over
        by name; :meth:`InitReport.describe` gives its lines for the log.

    Raises:
        InputError naming the file: not a maskdla checkpoint (plain backbone weights are
        pointed to ``--pretrained``), or no tensor of the checkpoint fits the model.
    """
    checkpoint = _read_checkpoint(path)
    saved = {key.removeprefix("module."): value for key, value in checkpoint["model"].items()}
    old_classes, new_classes = list(checkpoint["classes"]), list(classes)
    config = checkpoint.get("config") or {}
    config = config if isinstance(config, dict) else {}
    _check_norms(model, saved, config.get("norm"), path)
    report = InitReport(str(path), config.get("backbone"))
    state = model.state_dict()
    rebuild = old_classes != new_classes
    for key, value in state.items():
        layer = key.rsplit(".", 1)[0]
        if rebuild and layer in CLASS_LAYERS:
            continue
        if key in saved and saved[key].shape == value.shape:
            state[key] = saved[key].to(value.dtype)
            report.kept.append(key)
        else:
            report.reinitialised.append(key)
    if rebuild:
        _carry_class_rows(state, saved, old_classes, new_classes, report)
    report.unused = [key for key in saved if key not in state]
    if not report.kept:
        raise InputError(f"none of the checkpoint's {len(saved)} tensors fit this model "
                         f"(checkpoint backbone: {report.backbone})", path)
    model.load_state_dict(state)
    return report


def _carry_class_rows(state: Dict[str, torch.Tensor], saved: Dict[str, torch.Tensor],
                      old_classes: List[str], new_classes: List[str], report: InitReport) -> None:
    """Copy the background's rows and those of classes shared by name into the class
    layers of ``state``; everything else there keeps the new model's initialisation."""
    old_labels = {name: index + 1 for index, name in enumerate(old_classes)}
    pairs = [(0, 0)] + [(old_labels[name], index + 1) for index, name in enumerate(new_classes)
                        if name in old_labels]
    report.carried_classes = [name for name in new_classes if name in old_labels]
    report.new_classes = [name for name in new_classes if name not in old_labels]
    report.dropped_classes = [name for name in old_classes if name not in set(new_classes)]
    for layer, rows in CLASS_LAYERS.items():
        keys = [key for key in state if key.rsplit(".", 1)[0] == layer]
        if not keys:
            continue
        report.class_layers.append(layer)
        for key in keys:
            ours, theirs = state[key].clone(), saved.get(key)
            if theirs is None or theirs.shape[1:] != ours.shape[1:] \
                    or theirs.shape[0] != rows * (len(old_classes) + 1):
                report.reinitialised.append(key)  # another head width: no row fits
                continue
            for old, new in pairs:
                ours[new * rows:(new + 1) * rows] = theirs[old * rows:(old + 1) * rows]
            state[key] = ours
            report.rebuilt.append(key)


def _check_norms(model: nn.Module, saved: Dict[str, torch.Tensor], saved_norm: Optional[str],
                 path: Union[str, os.PathLike]) -> None:
    """InputError when a norm layer of ``model`` is GroupNorm where the checkpoint's was a
    BatchNorm (it has running statistics) or the reverse: their weight and bias have the
    same shapes, so the mismatch would pass as "fits" and silently change the network."""
    for name, module in model.named_modules():
        group = isinstance(module, nn.GroupNorm)
        batch = isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))
        if (group or batch) and f"{name}.weight" in saved and group == (f"{name}.running_mean" in saved):
            ours = "GroupNorm" if group else "BatchNorm"
            raise InputError(f"the checkpoint's norm layers ({saved_norm or 'unknown'}) are not "
                             f"this model's ({ours}, e.g. {name}): build the new run with "
                             f"--norm {saved_norm or 'as the checkpoint'}", path)


def _read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checkpoint at ``path``; a file of plain weights (what ``--pretrained`` takes)
    gets a message naming that flag."""
    try:
        return load_checkpoint(path)
    except InputError as error:
        try:
            read_weights(str(path))
        except InputError:
            raise error from None
        raise InputError("this file holds plain weights (a state dict), not a maskdla "
                         "checkpoint for --init-from: load backbone weights with --pretrained",
                         path) from None
