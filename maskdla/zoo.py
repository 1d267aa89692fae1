"""Models shipped inside the package: trained weights reached by a name, offline.

``segmonto-base`` works wherever a checkpoint path does (``python -m maskdla.predict
segmonto-base scans/``, ``--init-from segmonto-base``, ``maskdla.Predictor("segmonto-base")``,
``python -m maskdla.eval segmonto-base``): :func:`maskdla.checkpoint.load_checkpoint` asks
:func:`read_shipped` for a name that is not a file. ``python -m maskdla.models`` lists them.

A shipped model is one ``.safetensors`` file in ``maskdla/weights/``: the model's state dict
(float16 where :func:`pack` was asked for it, read back as float32) and, in the file's
metadata, the run's config and class names as JSON. Its SHA-256 is in :data:`SHIPPED`, in
the code rather than beside the file, so that a damaged or replaced file is refused at load.
Adding a model: :func:`pack` a checkpoint into ``maskdla/weights/``, add its row to
:data:`SHIPPED`, and its model card to docs/models.md.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch

from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

WEIGHTS_FOLDER = Path(__file__).parent / "weights"
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ShippedModel:
    """One model of the package: its file in :data:`WEIGHTS_FOLDER` and that file's SHA-256."""

    file: str
    sha256: str
    summary: str  # one line for the listing; the model card is in docs/models.md

    @property
    def path(self) -> Path:
        return WEIGHTS_FOLDER / self.file


#: name -> shipped model (docs/models.md has each one's model card)
SHIPPED: Dict[str, ShippedModel] = {
    "segmonto-base": ShippedModel(
        "segmonto-base.safetensors",
        "2c403f2f04076d275b20ad9f5f7da850e937138fd6c8c8ff8d392895812dcd45",
        "vovnet19slim, five SegmOnto zones (MainZone, DropCapitalZone, MarginTextZone, "
        "NumberingZone, RunningTitleZone), trained on 755 real pages of 13 public corpora"),
    "segmonto-lines": ShippedModel(
        "segmonto-lines.safetensors",
        "5105af30409ab5d9a9363a569b63ea76d7427c5f216963550b43996665421ad5",
        "vovnet19slim line model (--task lines): text-line polygons and baselines of "
        "DefaultLine, HeadingLine, InterlinearLine; segmonto-base fine-tuned on the 209 "
        "HTRomance training pages"),
}


def is_shipped(name: PathLike) -> bool:
    """Whether ``name`` names a shipped model (and not a file of that name)."""
    return str(name) in SHIPPED and not os.path.exists(name)


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shipped(name: str) -> Dict[str, Any]:
    """The shipped model ``name`` as a checkpoint dict (``model`` in float32, ``config``,
    ``classes``, ``shipped``: its name); InputError when the file is missing or its
    checksum is not the one recorded (a damaged or replaced file)."""
    from safetensors import safe_open  # a dependency of the package, imported where used

    shipped = SHIPPED[name]
    if not shipped.path.is_file():
        raise InputError(f"shipped model {name!r}: its weights file is missing from the "
                         "installed package; reinstall maskdla", shipped.path)
    actual = file_sha256(shipped.path)
    if actual != shipped.sha256:
        raise InputError(f"shipped model {name!r}: checksum {actual[:12]}... is not the "
                         f"recorded {shipped.sha256[:12]}...: the file is damaged or was "
                         "replaced; reinstall maskdla", shipped.path)
    with safe_open(str(shipped.path), framework="pt") as weights:
        metadata = weights.metadata() or {}
        state_dict = {key: weights.get_tensor(key) for key in weights.keys()}
    state_dict = {key: value.float() if value.is_floating_point() else value
                  for key, value in state_dict.items()}
    return {"model": state_dict, "config": json.loads(metadata["config"]),
            "classes": json.loads(metadata["classes"]), "shipped": name}


def pack(checkpoint: Dict[str, Any], path: PathLike, *, half: bool = True) -> Tuple[str, int]:
    """Write a checkpoint's model (float16 when ``half``), config and classes as a shipped
    ``.safetensors`` file; returns its (SHA-256, size in bytes). Optimizer state, RNG and
    progress stay out: a shipped model predicts and starts new runs, it is not resumed."""
    from safetensors.torch import save

    state_dict = {key: (value.half() if half and value.is_floating_point() else value)
                  .detach().cpu().contiguous() for key, value in checkpoint["model"].items()}
    config = checkpoint["config"]
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    for key in ("resume", "init_from", "out", "data", "pretrained"):
        config[key] = None  # the facts of the run that trained it, not settings of the model
    metadata = {"config": json.dumps(config), "classes": json.dumps(list(checkpoint["classes"])),
                "format": "maskdla shipped model 1"}
    data = save(state_dict, metadata=metadata)
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest(), len(data)


__all__ = ["SHIPPED", "ShippedModel", "is_shipped", "read_shipped", "pack", "file_sha256"]
