"""Epochs <-> iterations, LR milestone presets, warmup: training is planned in epochs.

The study's arithmetic: iterations per epoch I = |D_train| / batch_size, epochs
E = iterations * batch_size / |D_train|; 90,000 iterations at batch 2 on 128 images are
1,406.25 epochs. ``batch_size`` here is always the total over all processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from maskdla.errors import InputError

#: LR step presets as fractions of training: the study's default (2/3, 8/9),
#: "modification 1" (early) and "modification 2" (late).
LR_STEP_PRESETS: Dict[str, Tuple[float, ...]] = {
    "default": (2 / 3, 8 / 9),
    "early": (0.4, 0.7),
    "late": (0.75, 0.9),
}


def iterations_per_epoch(train_size: int, total_batch_size: int) -> float:
    """|D_train| / batch size; fractional when the batch does not divide the set."""
    if train_size < 1 or total_batch_size < 1:
        raise ValueError("train_size and total_batch_size must be >= 1")
    return train_size / total_batch_size


def epochs_to_iterations(epochs: float, train_size: int, total_batch_size: int) -> int:
    """Iterations of ``epochs`` epochs, rounded to the nearest whole iteration."""
    return round(epochs * train_size / total_batch_size)


def parse_lr_steps(spec: str, epochs: float) -> List[float]:
    """LR milestones in epochs from a preset name (``default``, ``early``, ``late``),
    explicit epochs (``"300,400"``) or fractions of training (``"0.4,0.7"``, all < 1).
    ``"none"`` or ``""`` means a constant LR. Raises ValueError for anything else."""
    spec = spec.strip().lower()
    if spec in ("", "none"):
        return []
    if spec in LR_STEP_PRESETS:
        return [fraction * epochs for fraction in LR_STEP_PRESETS[spec]]
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(f"--lr-steps {spec!r}: expected a preset ({', '.join(LR_STEP_PRESETS)}), "
                         "epochs like '300,400' or fractions like '0.4,0.7'") from None
    if any(value <= 0 for value in values) or values != sorted(values):
        raise ValueError(f"--lr-steps {spec!r}: milestones must be positive and increasing")
    if all(value < 1 for value in values):
        values = [value * epochs for value in values]
    if values[-1] > epochs:
        raise ValueError(f"--lr-steps {spec!r}: milestone {values[-1]:g} is beyond the "
                         f"{epochs:g} epochs of training")
    return values


@dataclass(frozen=True)
class SchedulePlan:
    """A run's schedule in both units."""

    epochs: float
    train_size: int
    batch_size: int  # per process
    world_size: int
    milestone_epochs: Tuple[float, ...]

    @property
    def total_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def iterations_per_epoch(self) -> float:
        return iterations_per_epoch(self.train_size, self.total_batch_size)

    @property
    def total_iterations(self) -> int:
        return max(1, epochs_to_iterations(self.epochs, self.train_size, self.total_batch_size))

    @property
    def milestone_iterations(self) -> Tuple[int, ...]:
        return tuple(epochs_to_iterations(epoch, self.train_size, self.total_batch_size)
                     for epoch in self.milestone_epochs)

    def describe(self) -> str:
        """The lines printed at the start of training."""
        lines = [
            f"train set: {self.train_size} images",
            f"batch: {self.batch_size} per process x {self.world_size} processes = {self.total_batch_size}",
            f"iterations per epoch: {self.iterations_per_epoch:g}",
            f"epochs: {self.epochs:g} = {self.total_iterations} iterations",
        ]
        for epoch, iteration in zip(self.milestone_epochs, self.milestone_iterations):
            lines.append(f"LR step at epoch {epoch:g} = iteration {iteration}")
        return "\n".join(lines)


def plan(epochs: float, train_size: int, batch_size: int, world_size: int = 1,
         lr_steps: str = "default") -> SchedulePlan:
    if epochs <= 0:
        raise ValueError(f"epochs must be positive, got {epochs:g}")
    return SchedulePlan(epochs, train_size, batch_size, world_size,
                        tuple(parse_lr_steps(lr_steps, epochs)))


def check_batch_fits(train_size: int, batch_size: int, world_size: int = 1) -> None:
    """InputError when one iteration's batch (over all processes) is larger than the
    training set: an epoch would be a fraction of an iteration, and the sampler would
    repeat the pages to fill the batch (1,000,000 of them: 24 GB)."""
    total = batch_size * world_size
    if total > train_size:
        over = f" x {world_size} processes = {total} pages an iteration" if world_size > 1 else ""
        raise InputError(f"--batch-size {batch_size}{over} is larger than the training set "
                         f"({train_size} page{'s' if train_size != 1 else ''}): give a batch "
                         f"of at most {max(train_size // world_size, 1)} per process, or more "
                         "training pages")


#: warmup a short run keeps even when that is more than a tenth of it (at most half of it)
SHORT_RUN_WARMUP = 50


def warmup_iterations(requested: int, total_iterations: int) -> int:
    """The warmup a run of ``total_iterations`` gets from ``--warmup-iters requested``: at
    most a tenth of the run, so that short runs are not all warmup, but at least
    ``min(SHORT_RUN_WARMUP, half the run)``, so that they are warmed up at all (a
    12-iteration run gets 6, the quick start's 192 get 50, 28,800 get the full 1,000)."""
    floor = min(SHORT_RUN_WARMUP, total_iterations // 2)
    return min(requested, max(total_iterations // 10, floor))


def lr_lambda(milestones: Tuple[int, ...], gamma: float, warmup_iters: int,
              warmup_factor: float = 0.001):
    """Multiplier of the base LR at iteration ``i`` (0-based): linear warmup from
    ``warmup_factor`` over ``warmup_iters``, times ``gamma`` per milestone passed."""
    def multiplier(iteration: int) -> float:
        steps = sum(iteration >= milestone for milestone in milestones)
        factor = gamma ** steps
        if iteration < warmup_iters:
            alpha = iteration / warmup_iters
            factor *= warmup_factor * (1 - alpha) + alpha
        return factor
    return multiplier


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: SchedulePlan, gamma: float,
                    warmup_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler: call ``step()`` after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule.milestone_iterations, gamma, warmup_iters))
