"""Checkpoints: atomic save, safe load (``weights_only=True``), model rebuilt from one.

A checkpoint is a dict with the keys ``model`` (state dict), ``optimizer``,
``scheduler``, ``scaler``, ``epoch``, ``iteration``, ``rng``, ``config`` (the run's
TrainConfig as plain types) and ``classes`` (names, background excluded: label ``i + 1``
is ``classes[i]``). It is data, never code: loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Tuple, Union

import torch
from torchvision.models.detection import MaskRCNN

from maskdla.errors import InputError
from maskdla.files import write_atomic
from maskdla.config import TrainConfig
from maskdla.model import build_model_from_config

REQUIRED_KEYS = ("model", "config", "classes")
PathLike = Union[str, os.PathLike]


def save_checkpoint(checkpoint: Dict[str, Any], path: PathLike) -> None:
    """Write ``checkpoint`` to ``path`` atomically and durably (fsync before the rename):
    a crash or power cut mid-write leaves the previous file intact."""
    write_atomic(path, lambda file: torch.save(checkpoint, file), durable=True)


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
    move it to ``device`` and set eval mode. Returns ``(model, checkpoint)``, the
    checkpoint's ``"config"`` as a :class:`~maskdla.config.TrainConfig`.

    A state dict of another architecture or class count raises InputError with a one-line
    summary instead of PyTorch's page of key names.
    """
    path = checkpoint if not isinstance(checkpoint, dict) else "checkpoint"
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    config, classes = checkpoint_config(checkpoint, path), list(checkpoint["classes"])
    try:
        model = build_model_from_config(config, num_classes=len(classes) + 1)
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
        raise InputError(f"weights do not fit a {config.backbone} model with "
                         f"{len(classes)} classes: {'; '.join(details)}", path)
    model.load_state_dict(state_dict)
    return model.to(device).eval(), dict(checkpoint, config=config)


def checkpoint_config(checkpoint: Dict[str, Any], path: Union[PathLike, str] = "checkpoint"
                      ) -> TrainConfig:
    """The run config a checkpoint holds, as a TrainConfig (configs of older checkpoints
    included); InputError naming ``path`` when it is not one."""
    config = checkpoint["config"]
    if isinstance(config, TrainConfig):
        return config
    if not isinstance(config, dict):
        raise InputError("checkpoint config is not a table of settings", path)
    try:
        return TrainConfig.from_dict(config)
    except InputError as error:
        raise InputError(f"checkpoint config: {error}", path) from None


def rng_state() -> Dict[str, Any]:
    """This process's random generators (torch, Python's, CUDA's when in use), as the
    plain data a checkpoint's ``"rng"`` holds (one entry per rank)."""
    state = {"torch": torch.get_rng_state(), "python": _lists(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Set the generators back to a :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lists(value: Any) -> Any:
    """Tuples -> lists, recursively: weights_only loading takes plain containers."""
    if isinstance(value, (tuple, list)):
        return [_lists(item) for item in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value
