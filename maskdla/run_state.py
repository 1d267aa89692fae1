"""A training run's state (:class:`Run`) and what a resumed run continues from.

:class:`Run` is what the loop (:mod:`maskdla.train`) steps and what its hooks
(:mod:`maskdla.hooks`) get to look at: the config, the model and its optimizer, the data
splits it evaluates, where it stands (iteration, steps skipped and clipped, model
selection) and its checkpoint. :func:`resume_path` and :func:`resumed_config` decide
which checkpoint a run resumes and with which settings.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from maskdla import distributed
from maskdla.checkpoint import checkpoint_config, restore_rng, rng_state
from maskdla.config import RESUME_AUTO, TrainConfig
from maskdla.data.dataset import Dataset
from maskdla.energy import EnergyMeter, add_energy, merge_node_summaries
from maskdla.errors import InputError
from maskdla.evaluation.selection import Selection
from maskdla.schedule import SchedulePlan

__all__ = ["Run", "Stability", "RESUME_MUST_MATCH", "resume_path", "resumed_config"]


class Stability:
    """Steps skipped for a NaN/inf loss or gradient, and steps whose gradients clipping
    scaled down (counted on the device: no host sync per step)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.in_a_row = 0
        self.clipped: Optional[torch.Tensor] = None
        self.clipped_before = 0

    def count_clipped(self, clipped: torch.Tensor) -> None:
        """Add a step's Bool[] "clipping scaled its gradients down" (on the device)."""
        self.clipped = clipped.long() if self.clipped is None else self.clipped + clipped

    @property
    def clipped_steps(self) -> int:
        return self.clipped_before + (int(self.clipped) if self.clipped is not None else 0)

    def counts(self) -> Dict[str, int]:
        """summary.json's ``skipped_steps`` and ``clipped_steps``."""
        return {"skipped_steps": self.skipped, "clipped_steps": self.clipped_steps}

    def restore(self, progress: Dict[str, Any]) -> None:
        """Continue the counts of a checkpoint's ``progress``."""
        self.skipped = int(progress.get("skipped_steps", 0))
        self.clipped_before = int(progress.get("clipped_steps", 0))


@dataclass
class Run:
    """One run's state: what it trains, how, and where it stands."""

    config: TrainConfig
    device: torch.device
    context: distributed.DistributedContext
    amp: str
    schedule: SchedulePlan
    classes: List[str]
    model: torch.nn.Module  # DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    test_set: Dataset
    #: the split evaluations during training use: validation, else None (then: test)
    val_set: Optional[Dataset] = None
    iteration: int = 0
    #: training time and energy of the earlier segments of a resumed run
    earlier: Dict[str, Any] = field(default_factory=lambda: {"training_time_s": 0.0,
                                                              "energy": None})
    meter: Optional[EnergyMeter] = None
    started: float = field(default_factory=time.perf_counter)
    stability: Stability = field(default_factory=lambda: Stability())
    selection: Selection = field(default_factory=lambda: Selection())

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def bare_model(self) -> torch.nn.Module:
        return self.model.module if self.context.enabled else self.model

    @property
    def stop_at(self) -> int:
        """The last iteration of this segment (``stop_after_iterations`` ends it early)."""
        total, stop = self.schedule.total_iterations, self.config.stop_after_iterations
        return total if stop is None else min(total, stop)

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)

    @property
    def parameters(self) -> List[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def say(self, message: str) -> None:
        """Print ``message`` on rank 0."""
        if self.context.is_main:
            print(message, flush=True)

    def progress(self) -> Dict[str, Any]:
        """Training time and energy so far, this segment and the earlier ones together,
        the steps skipped and clipped, and where model selection stands."""
        nodes = [summary for summary in distributed.all_gather_objects(
            self.meter.summary() if self.meter else None) if summary is not None]
        energy = merge_node_summaries(nodes) if nodes else None
        return {"training_time_s": self.earlier["training_time_s"] + time.perf_counter() - self.started,
                "energy": add_energy(self.earlier["energy"], energy),
                **self.stability.counts(), "selection": dataclasses.asdict(self.selection)}

    def restore(self, checkpoint: Dict[str, Any]) -> None:
        """Continue from a training checkpoint (a resumed run)."""
        self.bare_model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.iteration = int(checkpoint["iteration"])
        progress = checkpoint.get("progress", {})
        self.earlier = {"training_time_s": progress.get("training_time_s", 0.0),
                        "energy": progress.get("energy")}
        self.stability.restore(progress)
        self.selection = Selection(**progress.get("selection", {}))
        rng = checkpoint["rng"]
        restore_rng(rng[min(self.context.rank, len(rng) - 1)])

    def checkpoint(self) -> Dict[str, Any]:
        """Everything a resumed run needs (docs/training.md lists the keys)."""
        return {"model": self.bare_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.iteration / self.schedule.iterations_per_epoch,
                "iteration": self.iteration,
                "rng": distributed.all_gather_objects(rng_state()),
                "config": self.config.to_dict(), "classes": self.classes,
                "progress": self.progress()}


# --------------------------------------------------------------------------------------------
# resuming
# --------------------------------------------------------------------------------------------

def resume_path(config: TrainConfig, run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: --resume PATH, or with --resume auto (and after a
    torchrun restart) the run folder's checkpoint_last.pth when it exists."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if config.resume in (RESUME_AUTO, None):
        last = run_dir / "checkpoint_last.pth"
        if (config.resume == RESUME_AUTO or restarted) and last.is_file():
            return last
        if last.is_file() or (run_dir / "checkpoint_final.pth").is_file():
            # Starting afresh would overwrite a run that someone may want to keep.
            raise InputError("the run folder holds a checkpoint already: continue it with "
                             "--resume auto, or choose another --out", run_dir)
        return None
    path = Path(config.resume)
    if not path.is_file():
        raise InputError("--resume: checkpoint file not found", path)
    return path


#: settings that fix the model: a resumed run must ask for the checkpoint's
RESUME_MUST_MATCH = ("backbone", "norm", "min_size", "max_size", "fpn_channels", "anchor_ratios",
                     "anchor_scales", "mask_resolution")


def resumed_config(config: TrainConfig, checkpoint: Dict[str, Any], path: Path) -> TrainConfig:
    """``config`` for resuming ``checkpoint``: a norm left to its default is the
    checkpoint's (a ``--pretrained`` run resumes without repeating the flag); the
    settings of :data:`RESUME_MUST_MATCH` must match."""
    if "optimizer" not in checkpoint or "iteration" not in checkpoint:
        raise InputError("cannot resume: not a training checkpoint (no optimizer state)", path)
    saved = checkpoint_config(checkpoint, path)
    if config.norm is None:
        config = dataclasses.replace(config, norm=saved.resolved_norm)
    for key in RESUME_MUST_MATCH:
        if getattr(saved, key) != getattr(config, key):
            raise InputError(f"cannot resume: the checkpoint was trained with "
                             f"{key}={getattr(saved, key)!r}, this run asks for "
                             f"{getattr(config, key)!r}", path)
    return config
