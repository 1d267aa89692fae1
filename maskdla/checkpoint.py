"""Checkpoints: atomic save, safe load (``weights_only=True``), model rebuilt from one.

A checkpoint is a dict with the keys ``model`` (state dict), ``optimizer``,
``scheduler``, ``scaler``, ``epoch``, ``iteration``, ``rng``, ``config`` (the run's
TrainConfig as plain types) and ``classes`` (names, background excluded: label ``i + 1``
is ``classes[i]``). It is data, never code: loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
from torchvision.models.detection import MaskRCNN

from maskdla.errors import InputError
from maskdla.model import build_model, model_kwargs_from_config

REQUIRED_KEYS = ("model", "config", "classes")
PathLike = Union[str, os.PathLike]


def save_checkpoint(checkpoint: Dict[str, Any], path: PathLike) -> None:
    """Write ``checkpoint`` to ``path`` atomically: a temp file in the same folder, fsync,
    rename. A crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a maskdla checkpoint with ``torch.load(weights_only=True)``.

    Raises InputError naming the file when it is missing, truncated, not a torch file,
    holds anything but plain data (e.g. a pickle that would run code), or lacks the keys
    of a maskdla checkpoint.
    """
    if not os.path.isfile(path):
        raise InputError("checkpoint file not found", path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = "it holds Python objects other than tensors and plain data; refusing to unpickle them"
        else:
            reason = f"it is corrupted, truncated or not a PyTorch file ({type(error).__name__}: {first_line[:200]})"
        raise InputError(f"cannot load checkpoint: {reason}", path) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise InputError("not a maskdla checkpoint (needs the keys "
                         f"{', '.join(REQUIRED_KEYS)})", path)
    return checkpoint


def load_model(checkpoint: Union[PathLike, Dict[str, Any]], device: Union[str, torch.device] = "cpu"
               ) -> Tuple[MaskRCNN, Dict[str, Any]]:
    """Rebuild the run's model from a checkpoint (path or loaded dict), load its weights,
    move it to ``device`` and set eval mode. Returns ``(model, checkpoint)``.

    A state dict of another architecture or class count raises InputError with a one-line
    summary instead of PyTorch's page of key names.
    """
    path = checkpoint if not isinstance(checkpoint, dict) else "checkpoint"
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    config, classes = checkpoint["config"], list(checkpoint["classes"])
    try:
        model = build_model(config["backbone"], num_classes=len(classes) + 1,
                            **model_kwargs_from_config(config))
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"checkpoint config cannot rebuild the model: {error}", path) from None
    state_dict = checkpoint["model"]
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [key for key in own if key in state_dict and own[key].shape != state_dict[key].shape]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            details.append(f"{len(mismatched)} tensors of another shape (e.g. {key}: "
                           f"{tuple(state_dict[key].shape)} vs {tuple(own[key].shape)})")
        raise InputError(f"weights do not fit a {config['backbone']} model with "
                         f"{len(classes)} classes: {'; '.join(details)}", path)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), checkpoint
