"""Checkpoints: atomic save, safe load (``weights_only=True``), model rebuilt from one.

A checkpoint is a dict with the keys ``model`` (state dict), ``optimizer``,
``scheduler``, ``scaler``, ``epoch``, ``iteration``, ``rng``, ``config`` (the run's
TrainConfig as plain types) and ``classes`` (names, background excluded: label ``i + 1``
is ``classes[i]``). It is data, never code: loading never unpickles arbitrary objects.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from typing import Any, Dict, Tuple, Union

import torch
from torchvision.models.detection import MaskRCNN

from maskdla.errors import InputError, error_line, torch_load_problem
from maskdla.files import write_atomic
from maskdla.config import TrainConfig
from maskdla.model import build_model_from_config
from maskdla.zoo import SHIPPED, is_shipped, read_shipped

REQUIRED_KEYS = ("model", "config", "classes")
#: how torch.save's zip writer reports a write that failed
WRITE_FAILED = re.compile(r"inline_container|file write failed|unexpected pos", re.IGNORECASE)
PathLike = Union[str, os.PathLike]


def save_checkpoint(checkpoint: Dict[str, Any], path: PathLike) -> None:
    """Write ``checkpoint`` to ``path`` atomically and durably (fsync before the rename):
    a crash or power cut mid-write leaves the previous file intact.

    Raises:
        InputError: naming the file, when it cannot be written (a full disk, a read-only
            folder); no partial file is left.
    """
    try:
        write_atomic(path, lambda file: torch.save(checkpoint, file), durable=True)
    except RuntimeError as error:
        # torch's zip writer reports a failed write (a full disk, mostly) as RuntimeError
        # "[enforce fail at inline_container.cc:...] ... file write failed", not OSError
        if not WRITE_FAILED.search(str(error)):
            raise
        raise InputError(f"cannot write the checkpoint, is the disk full? ({error_line(error)})",
                         path) from None


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a maskdla checkpoint with ``torch.load(weights_only=True)``.

    Raises InputError naming the file when it is missing, truncated, not a torch file,
    holds anything but plain data (e.g. a pickle that would run code), lacks the keys
    of a maskdla checkpoint, or has weights that are NaN or infinite. ``path`` may be the
    name of a model shipped in the package (:mod:`maskdla.zoo`: ``segmonto-base``).
    """
    if is_shipped(path):
        checkpoint = read_shipped(str(path))
        check_finite_weights(checkpoint["model"], path)
        return checkpoint
    if not os.path.isfile(path):
        known = ", ".join(sorted(SHIPPED))
        raise InputError(f"checkpoint file not found (nor a shipped model: {known})", path)
    try:
        with warnings.catch_warnings():  # torch's aside on a plain pickle, beside our line
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # random bytes, a truncated file, a pickle with code...
        raise InputError(f"cannot load checkpoint: {torch_load_problem(error)}", path) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise InputError("not a maskdla checkpoint (needs the keys "
                         f"{', '.join(REQUIRED_KEYS)})", path)
    check_finite_weights(checkpoint["model"], path)
    return checkpoint


def check_finite_weights(state_dict: Any, path: PathLike) -> None:
    """InputError naming the file when weights hold NaN or infinity: such a model predicts
    nothing on every page (or NaN losses on resuming) without any other sign."""
    if not isinstance(state_dict, dict):
        return  # load_model reports a state dict that does not fit
    broken = [key for key, value in state_dict.items()
              if isinstance(value, torch.Tensor) and value.is_floating_point()
              and not bool(torch.isfinite(value).all())]
    if broken:
        raise InputError(f"{len(broken)} of the model's {len(state_dict)} tensors hold NaN or "
                         f"infinite values (e.g. {broken[0]}): the run that saved it diverged; "
                         "use an earlier checkpoint", path)


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


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed this process's generators (Python's, torch's) with ``seed``; with
    ``deterministic``, ask torch for deterministic algorithms (as resumed runs need to end
    with an uninterrupted run's weights)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # CUDA kernels without a deterministic version (roi_align backward) only warn.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


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
