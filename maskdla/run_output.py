"""What a training run writes as it goes, apart from checkpoints and evaluations: its
folder (config.json; removed again when a fresh run fails before its first step), the
energy meter's timeline, log.jsonl and the progress bar, and the iterations at which
checkpoints and evaluations fall due. The loop (:mod:`maskdla.train`) drives it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, TextIO, Tuple

import torch

from maskdla import distributed
from maskdla.energy import EnergyMeter, should_measure
from maskdla.files import write_json_atomic
from maskdla.hooks import LOSS_NAMES
from maskdla.run_state import Run

__all__ = ["RunOutput", "LossWindow", "prepare_run_dir", "run_dir_before",
           "remove_unstarted_run", "energy_meter"]


# --------------------------------------------------------------------------------------------
# the run folder
# --------------------------------------------------------------------------------------------

def prepare_run_dir(run: Run, fresh: bool, train_size: int) -> None:
    """The run folder with config.json; a fresh run starts its logs afresh."""
    if run.context.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        if fresh:
            for stale in ("log.jsonl", "metrics_history.jsonl"):
                (run.run_dir / stale).unlink(missing_ok=True)
        write_json_atomic(run.run_dir / "config.json",
                          dict(run.config.to_dict(), world_size=run.context.world_size,
                               train_size=train_size, classes=run.classes))
    distributed.barrier()


def run_dir_before(run_dir: Path) -> Tuple[Set[str], List[Path]]:
    """What was there before the run wrote anything: the run folder's entries, and the
    folders of its path that did not exist (the run folder first)."""
    missing = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    return (set(os.listdir(run_dir)) if not missing else set()), missing


def remove_unstarted_run(run_dir: Path, before: Tuple[Set[str], List[Path]]) -> None:
    """Remove what a fresh run that never trained a step wrote (config.json, log.jsonl, an
    energy timeline, TensorBoard events) and the folders it made: left, they look like a
    run that started (reports list it, ``--resume auto`` has nothing to resume). What was
    in the folder before (an experiment's files) stays."""
    entries, missing = before
    try:
        for name in (set(os.listdir(run_dir)) - entries) | {"config.json", "log.jsonl"}:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for folder in missing:
            folder.rmdir()
    except OSError:
        pass  # the run's own error is the one to report


def energy_meter(run: Run) -> Optional[EnergyMeter]:
    """One meter per node; on a shared file system each node writes its own timeline
    (energy-rankN.csv), and a resumed segment its own (energy-from-iterationN.csv)."""
    config, context = run.config, run.context
    if not (config.energy and should_measure(context.local_rank)):
        return None
    timeline = "energy" + ("" if context.is_main else f"-rank{context.rank}")
    timeline += f"-from-iteration{run.iteration}.csv" if run.iteration else ".csv"
    return EnergyMeter(config.energy_interval, price_per_kwh=config.price_per_kwh,
                       currency=config.currency,
                       csv_path=run.run_dir / timeline if run.run_dir.is_dir() else None,
                       cpu_watts_per_core=config.cpu_watts_per_core)


# --------------------------------------------------------------------------------------------
# as the loop goes
# --------------------------------------------------------------------------------------------

class LossWindow:
    """Loss sums between two log lines, on the device (no host sync inside the step), and
    the time spent waiting for data. Skipped steps count, their losses do not."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(LOSS_NAMES), device=device)
        self.reset(0)

    def reset(self, clipped_before: int) -> None:
        self.sums.zero_()
        self.steps, self.skipped, self.data_s = 0, 0, 0.0
        self.clipped_before, self.started = clipped_before, time.perf_counter()

    def add(self, losses: torch.Tensor, data_s: float, skipped: bool) -> None:
        if skipped:
            self.skipped += 1
        else:
            self.sums += losses
        self.steps += 1
        self.data_s += data_s


class RunOutput:
    """What the loop writes as it goes: log.jsonl, the progress bar, and the iterations at
    which checkpoints and evaluations are due."""

    def __init__(self, run: Run):
        from tqdm import tqdm

        total, per_epoch = run.schedule.total_iterations, run.schedule.iterations_per_epoch
        self.stop_at, self.log_every = run.stop_at, run.config.log_every
        self.checkpoint_at = _every(run.config.checkpoint_every, per_epoch, total)
        # the end of the schedule is evaluated too when evaluations pick the best weights
        self.evaluate_at = _every(run.config.eval_every, per_epoch, total)
        if not run.config.eval_every:
            self.evaluate_at.clear()
        self.window = LossWindow(run.device)
        self.window.reset(run.stability.clipped_steps)
        self.bar = tqdm(total=total, initial=run.iteration, disable=not run.context.is_main,
                        unit="it", dynamic_ncols=True, file=sys.stderr)
        self.file: Optional[TextIO] = (open(run.run_dir / "log.jsonl", "a")
                                       if run.context.is_main else None)
        self.iteration, self.started = run.iteration, time.perf_counter()
        self.run = run

    def due_log(self) -> bool:
        iteration = self.run.iteration
        return (iteration % self.log_every == 0 or iteration >= self.stop_at
                or iteration in self.checkpoint_at)

    def write_log(self) -> Dict[str, Any]:
        """The window's line of log.jsonl (losses averaged across ranks); starts a new window."""
        run, window = self.run, self.window
        finite = window.steps - window.skipped
        means = (distributed.all_reduce_mean(window.sums / finite).tolist() if finite
                 else [None] * len(LOSS_NAMES))
        elapsed = time.perf_counter() - window.started
        clipped = run.stability.clipped_steps
        record = {"epoch": run.iteration / run.schedule.iterations_per_epoch,
                  "iteration": run.iteration, "lr": run.optimizer.param_groups[0]["lr"],
                  "loss": sum(means) if finite else None, **dict(zip(LOSS_NAMES, means)),
                  "time": time.perf_counter() - self.started,
                  "images_per_s": window.steps * run.schedule.total_batch_size / elapsed,
                  "data_wait_percent": 100 * window.data_s / elapsed,
                  "skipped_steps": window.skipped, "clipped_steps": clipped - window.clipped_before,
                  **_resources(run)}
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if finite:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                 img_s=f"{record['images_per_s']:.1f}")
        window.reset(clipped)
        return record

    def close(self) -> None:
        self.bar.close()
        if self.file:
            self.file.close()


def _resources(run: Run) -> Dict[str, float]:
    """GPU memory (this process's peak), power and energy so far (this node's meter,
    earlier segments included) for the log line; only what is measured."""
    figures: Dict[str, float] = {}
    if run.device.type == "cuda":
        figures["gpu_memory_mib"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    if run.meter is not None:
        energy = run.meter.summary()
        powers = [gpu["mean_power_w"] for gpu in energy["gpus"] if gpu.get("mean_power_w")]
        if powers:
            figures["gpu_power_w"] = sum(powers)
        if energy["energy_kwh"] is not None:
            before = (run.earlier["energy"] or {}).get("energy_kwh") or 0.0
            figures["energy_kwh"] = before + energy["energy_kwh"]
    return figures


def _every(epochs: float, per_epoch: float, total: int) -> Set[int]:
    """Iterations at which something happens every ``epochs`` epochs (0: only at the end)."""
    points = {total}
    if epochs > 0:
        step = epochs * per_epoch
        points |= {round(step * k) for k in range(1, int(total / step) + 1)}
    return {point for point in points if 0 < point <= total}
