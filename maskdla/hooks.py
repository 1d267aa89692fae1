"""The training loop's seams: :class:`TrainHooks`, for whoever watches a run without
changing it (the training benchmark's clock, the TensorBoard writer).

The loop (:mod:`maskdla.train`) imports this module; a watcher subclasses
:class:`TrainHooks` from here and never imports the loop, so that nothing imports in a
circle. ``fit(config, hooks)`` calls every hook on every rank.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from maskdla.run_state import Run

__all__ = ["LOSS_NAMES", "TrainHooks", "HookList"]

#: Mask R-CNN's loss terms, in the order of the losses tensor ``step_done`` gets
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


class TrainHooks:
    """Seams of the loop for whoever watches a run without changing it (the training
    benchmark's clock, a TensorBoard writer). Every method is a no-op here; a subclass
    overrides what it needs. Hooks run on every rank."""

    def started(self, run: Run) -> None:
        """The run is set up and about to take its first step (of this segment)."""

    def batch_ready(self, iteration: int, wait_s: float) -> None:
        """A batch arrived for step ``iteration + 1``, after ``wait_s`` seconds in the loader."""

    def step_done(self, iteration: int, losses: torch.Tensor) -> None:
        """Step ``iteration`` is done; ``losses`` in ``LOSS_NAMES`` order, on the device."""

    def logged(self, record: Dict[str, Any]) -> None:
        """A line of log.jsonl was made (on rank 0 only it is also written)."""

    def evaluated(self, iteration: int, metrics: Dict[str, Any]) -> None:
        """An evaluation during training (validation split, else test) at ``iteration`` ended."""

    def finished(self, summary: Dict[str, Any]) -> None:
        """The run ended (summary.json's contents), or stopped early."""


class HookList(TrainHooks):
    """Several hooks as one, called in order."""

    def __init__(self, hooks: Sequence[TrainHooks]):
        self.hooks = list(hooks)

    def started(self, run: Run) -> None:
        for hook in self.hooks:
            hook.started(run)

    def batch_ready(self, iteration: int, wait_s: float) -> None:
        for hook in self.hooks:
            hook.batch_ready(iteration, wait_s)

    def step_done(self, iteration: int, losses: torch.Tensor) -> None:
        for hook in self.hooks:
            hook.step_done(iteration, losses)

    def logged(self, record: Dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.logged(record)

    def evaluated(self, iteration: int, metrics: Dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.evaluated(iteration, metrics)

    def finished(self, summary: Dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.finished(summary)
