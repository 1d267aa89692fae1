"""Training: an epoch-native, distributed, resumable loop behind ``python -m maskdla.train``.

Three ways in::

    python -m maskdla.train --backbone vovnet39 --epochs 450 --data DATA   # or --config run.toml
    torchrun --nproc_per_node=2 -m maskdla.train --backbone vovnet39 --epochs 450 --data DATA
    maskdla.fit(maskdla.TrainConfig(backbone="vovnet39", epochs=450, data="DATA"))

The run is planned in epochs (:mod:`maskdla.schedule`) and stepped per iteration. A run
folder holds config.json, log.jsonl, energy.csv, metrics.json, metrics_history.jsonl,
summary.json, summary.md and the checkpoints (docs/training.md). Read from the top:
:func:`fit` sets up a :class:`Run`, :func:`train_one_pass` steps it through the loader,
:func:`finish` evaluates it and writes the summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, TextIO, Tuple

import torch
from torch.utils.data import DataLoader

from maskdla import distributed
from maskdla.backbones import BACKBONES, NORMS
from maskdla.checkpoint import (checkpoint_config, load_checkpoint, restore_rng, rng_state,
                                save_checkpoint)
from maskdla.cli import non_negative_float, positive_int, run_main
from maskdla.config import (AMP_MODES, ANCHOR_SCALES, LOADER_PASSES, LR_REFERENCE_BATCH,
                            MASK_RESOLUTIONS, RESUME_AUTO, TASKS, TrainConfig)
from maskdla.data.dataset import Dataset, collate_fn
from maskdla.data.pagexml import parse_class_map
from maskdla.data.samplers import EpochBatches
from maskdla.data.sources import RunData, run_data
from maskdla.energy import EnergyMeter, add_energy, merge_node_summaries, should_measure
from maskdla.errors import InputError
from maskdla.evaluation import evaluate
from maskdla.files import check_output_folder, write_bytes_atomic, write_json_atomic
from maskdla.inference import cpu_supports_bf16, resolve_device
from maskdla.finetune import init_from_checkpoint
from maskdla.model import build_model_from_config
from maskdla.schedule import (LR_STEP_PRESETS, SHORT_RUN_WARMUP, SchedulePlan, build_scheduler,
                              check_batch_fits, plan, warmup_iterations)
from maskdla.tables import ap_table, format_duration, summary_markdown

__all__ = ["TrainConfig", "TrainHooks", "TrainingDiverged", "Run", "fit", "main"]

LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


class TrainHooks:
    """Seams of the loop for whoever watches a run without changing it (the training
    benchmark's clock, a TensorBoard writer). Every method is a no-op here; a subclass
    overrides what it needs. Hooks run on every rank."""

    def started(self, run: "Run") -> None:
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

    def started(self, run: "Run") -> None:
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


# --------------------------------------------------------------------------------------------
# the run's state
# --------------------------------------------------------------------------------------------

class Stability:
    """Steps skipped for a NaN/inf loss or gradient, and steps whose gradients clipping
    scaled down (counted on the device: no host sync per step)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.in_a_row = 0
        self.clipped: Optional[torch.Tensor] = None
        self.clipped_before = 0

    def count_clipped(self, clipped: torch.Tensor) -> None:
        self.clipped = clipped.long() if self.clipped is None else self.clipped + clipped

    @property
    def clipped_steps(self) -> int:
        return self.clipped_before + (int(self.clipped) if self.clipped is not None else 0)

    def counts(self) -> Dict[str, int]:
        return {"skipped_steps": self.skipped, "clipped_steps": self.clipped_steps}

    def restore(self, progress: Dict[str, Any]) -> None:
        self.skipped = int(progress.get("skipped_steps", 0))
        self.clipped_before = int(progress.get("clipped_steps", 0))


@dataclass
class Selection:
    """Model selection by ``--best-metric``: the best value so far, where it was reached,
    evaluations since, and why the run stops early (``--patience``)."""

    best: Optional[float] = None
    best_iteration: Optional[int] = None
    since_best: int = 0
    stop_reason: Optional[str] = None
    #: (iteration, split) of the last evaluation, and its metrics
    last: Optional[Dict[str, Any]] = None


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
    stability: "Stability" = field(default_factory=lambda: Stability())
    selection: "Selection" = field(default_factory=lambda: Selection())

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
# setting a run up
# --------------------------------------------------------------------------------------------

def fit(config: TrainConfig, hooks: Sequence[TrainHooks] = ()) -> Dict[str, Any]:
    """Train (or resume) the run ``config`` describes; evaluate on the test split at the end
    (the best checkpoint's weights where ``--eval-every`` kept one).

    Returns the run's summary (also written to summary.json; metrics under "metrics"), or
    ``{"stopped_at_iteration": N}`` when ``stop_after_iterations`` ended the run early.
    Raises InputError for bad settings or data, TrainingDiverged when the loss stays
    NaN/inf for ``nonfinite_limit`` steps in a row.
    """
    config.validate()
    device = resolve_device(config.device)
    watchers = list(hooks)
    if config.tensorboard:
        from maskdla.tensorboard import TensorBoardWriter  # the extra, only when asked for

        watchers.append(TensorBoardWriter())
    context = distributed.init_distributed(device.type)
    if device.type == "cuda" and context.enabled:
        device = torch.device("cuda", context.local_rank)
    try:
        return _fit(config, device, context, HookList(watchers))
    finally:
        distributed.shutdown_distributed()


def _fit(config: TrainConfig, device: torch.device, context: distributed.DistributedContext,
         hooks: TrainHooks) -> Dict[str, Any]:
    amp = resolve_amp(config.amp, device)
    seed_everything(config.seed + context.rank, config.deterministic)
    check_output_folder(config.run_dir)  # a file or read-only --out: one line, before the data
    checkpoint = None
    resume_path = _resume_path(config, config.run_dir)
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path)
        config = _resumed_config(config, checkpoint, resume_path)
    config = dataclasses.replace(config, norm=config.resolved_norm)

    data = run_data(config)
    run = build_run(config, device, context, amp, data, checkpoint)
    if checkpoint is not None:
        run.say(f"resumed from {resume_path} at iteration {run.iteration} "
                f"(epoch {run.iteration / run.schedule.iterations_per_epoch:g})")
    batches = EpochBatches(data.train, config.batch_size, seed=config.seed, rank=context.rank,
                           world_size=context.world_size, repeat_threshold=config.repeat_threshold)
    loader = build_loader(config, data.train, batches, device, context.rank)
    before = _run_dir_before(run.run_dir)
    _prepare_run_dir(run, fresh=checkpoint is None, train_size=len(data.train))
    run.meter = _energy_meter(run)
    start_iteration, run.started = run.iteration, time.perf_counter()
    try:
        hooks.started(run)
        if run.meter:
            run.meter.start()
        train_to_end(run, loader, batches, hooks)
    except BaseException:  # a truncated image, Ctrl-C, out of memory... before any step?
        if run.meter:
            run.meter.stop()  # its timeline is written now, not after the cleanup
        if checkpoint is None and run.iteration == 0 and context.is_main:
            _remove_unstarted_run(run.run_dir, before)
        raise
    finally:
        if run.meter:
            run.meter.stop()
    if run.iteration < run.schedule.total_iterations and run.selection.stop_reason is None:
        run.say(f"stopped at iteration {run.iteration} as asked; resume with --resume auto")
        summary: Dict[str, Any] = {"stopped_at_iteration": run.iteration}
    else:
        summary = finish(run, start_iteration, len(data.train))
    hooks.finished(summary)
    return summary


def build_run(config: TrainConfig, device: torch.device, context: distributed.DistributedContext,
              amp: str, data: RunData, checkpoint: Optional[Dict[str, Any]]) -> Run:
    """Model, optimizer, LR schedule and scaler of the run, restored from ``checkpoint``
    (a resumed run) or fresh; prints the schedule."""
    check_batch_fits(len(data.train), config.batch_size, context.world_size)
    schedule = plan(config.epochs, len(data.train), config.batch_size, context.world_size,
                    config.lr_steps)
    classes = data.train.classes
    if context.is_main:
        print(f"run: {config.run_dir}  backbone: {config.backbone}  device: {device}  amp: {amp}\n"
              f"{schedule.describe()}\n{_splits(data)}", flush=True)
    model = build_model_from_config(config, len(classes) + 1, with_pretrained=checkpoint is None)
    if config.init_from and checkpoint is None:
        transfer = init_from_checkpoint(model, config.init_from, classes)
        if context.is_main:
            print(transfer.describe(), flush=True)
    model.to(device)
    if context.enabled:
        if config.norm == "syncbn" and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    optimizer, scheduler = build_optimizer(model, config, schedule)
    run = Run(config, device, context, amp, schedule, classes, model, optimizer, scheduler,
              torch.amp.GradScaler(device.type, enabled=amp == "fp16"), data.test, data.val)
    if checkpoint is not None:
        run.restore(checkpoint)
    return run


def build_optimizer(model: torch.nn.Module, config: TrainConfig, schedule: SchedulePlan,
                    **sgd_options: Any
                    ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD on the trainable parameters with the run's settings (``--scale-lr`` applied;
    ``sgd_options`` on top) and its per-iteration LR schedule, warmup included."""
    lr = config.lr * (schedule.total_batch_size / LR_REFERENCE_BATCH if config.scale_lr else 1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                                momentum=config.momentum, weight_decay=config.weight_decay,
                                **sgd_options)
    warmup = warmup_iterations(config.warmup_iters, schedule.total_iterations)
    return optimizer, build_scheduler(optimizer, schedule, config.gamma, warmup)


def _splits(data: RunData) -> str:
    if data.val is None:
        return f"test set: {len(data.test)} images (evaluations during training use it)"
    return f"validation set: {len(data.val)} images, test set: {len(data.test)} images"


def build_loader(config: TrainConfig, dataset: Dataset, batches: EpochBatches,
                 device: torch.device, rank: int = 0) -> DataLoader:
    """The run's DataLoader over ``batches``.

    It draws its workers' base seed from its own generator, not from the global RNG that
    the model's samplers use: a resumed run then replays the same random stream.
    """
    return DataLoader(dataset, batch_sampler=batches, num_workers=config.workers,
                      collate_fn=collate_fn, pin_memory=device.type == "cuda",
                      persistent_workers=config.workers > 0,
                      prefetch_factor=4 if config.workers > 0 else None,
                      generator=torch.Generator().manual_seed(config.seed + rank))


def _prepare_run_dir(run: Run, fresh: bool, train_size: int) -> None:
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


def _run_dir_before(run_dir: Path) -> Tuple[Set[str], List[Path]]:
    """What was there before the run wrote anything: the run folder's entries, and the
    folders of its path that did not exist (the run folder first)."""
    missing = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    return (set(os.listdir(run_dir)) if not missing else set()), missing


def _remove_unstarted_run(run_dir: Path, before: Tuple[Set[str], List[Path]]) -> None:
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


def _energy_meter(run: Run) -> Optional[EnergyMeter]:
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
# the loop
# --------------------------------------------------------------------------------------------

def train_to_end(run: Run, loader: DataLoader, batches: EpochBatches, hooks: TrainHooks) -> None:
    """Step ``run`` from its iteration to :attr:`Run.stop_at` (or an early stop): one loader
    pass per epoch, or one for the rest of the run (``--loader-pass run``)."""
    output = RunOutput(run)
    run.model.train()
    try:
        while run.iteration < run.stop_at and run.selection.stop_reason is None:
            # The sampler's epochs are whole batches: with per_epoch not an integer
            # (fractional epochs), an iteration's sampler epoch is iteration // per epoch.
            epoch, skip = divmod(run.iteration, batches.per_epoch)
            count = run.stop_at - run.iteration
            if run.config.loader_pass == "epoch":
                count = min(count, batches.per_epoch - skip)
            batches.start(epoch, skip, count)
            train_one_pass(run, loader, output, hooks)
    finally:
        output.close()


def train_one_pass(run: Run, loader: DataLoader, output: "RunOutput", hooks: TrainHooks) -> None:
    """One pass over ``loader``: a step per batch, then what is due at that iteration
    (a log line, a checkpoint, an evaluation)."""
    waiting_since = time.perf_counter()
    for images, targets in loader:
        wait = time.perf_counter() - waiting_since
        hooks.batch_ready(run.iteration, wait)
        losses, skipped = train_step(run, images, targets)
        run.scheduler.step()
        run.iteration += 1
        _count_nonfinite(run, skipped)
        hooks.step_done(run.iteration, losses)
        output.window.add(losses, wait, skipped)
        output.bar.update(1)
        if output.due_log():
            hooks.logged(output.write_log())
        if run.iteration in output.checkpoint_at:
            state = run.checkpoint()
            if run.context.is_main:
                save_checkpoint(state, run.run_dir / "checkpoint_last.pth")
        if run.iteration in output.evaluate_at:
            hooks.evaluated(run.iteration, evaluate_during_training(run))
            run.model.train()
            if run.selection.stop_reason is not None:
                return
        waiting_since = time.perf_counter()


def train_step(run: Run, images: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]]
               ) -> Tuple[torch.Tensor, bool]:
    """One optimisation step on a batch, gradients clipped to ``clip_grad_norm``.

    Returns the loss terms (``LOSS_NAMES`` order) as a detached tensor on the device, and
    whether the step was skipped: a NaN/inf loss (or gradient norm) changes no weight and
    no optimizer state, as GradScaler does for fp16 overflows. That decision is the one
    host synchronisation of the step (taken alike on every rank).
    """
    device = run.device
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()}
               for target in targets]
    dtype = run.autocast_dtype
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        losses = run.model(images, targets)
    loss = sum(losses[name] for name in LOSS_NAMES)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    nonfinite = ~torch.isfinite(loss.detach())
    clip = run.config.clip_grad_norm
    if clip > 0:
        run.scaler.unscale_(run.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(run.parameters, clip)
        run.stability.count_clipped(norm > clip)
        if not run.scaler.is_enabled():  # under fp16 an inf gradient is the scaler's to handle
            nonfinite |= ~torch.isfinite(norm)
    skipped = bool(distributed.any_rank(nonfinite))
    if not skipped or run.scaler.is_enabled():
        run.scaler.step(run.optimizer)
    run.scaler.update()
    return torch.stack([losses[name].detach().float() for name in LOSS_NAMES]), skipped


def _count_nonfinite(run: Run, skipped: bool) -> None:
    """Count a skipped step; ``nonfinite_limit`` in a row stop the run."""
    stability = run.stability
    if not skipped:
        stability.in_a_row = 0
        return
    stability.skipped += 1
    stability.in_a_row += 1
    run.say(f"iteration {run.iteration}: NaN or infinite loss, step skipped "
            f"({stability.in_a_row} in a row, {stability.skipped} in all)")
    if stability.in_a_row >= run.config.nonfinite_limit:
        last = run.run_dir / "checkpoint_last.pth"
        raise TrainingDiverged(
            f"the loss became NaN or infinite by iteration {run.iteration} "
            f"({stability.in_a_row} steps in a row, --nonfinite-limit "
            f"{run.config.nonfinite_limit}); stopped before saving anything from it. The last "
            f"good checkpoint is {last if last.exists() else 'none'}: lower --lr, raise "
            "--warmup-iters, lower --clip-grad-norm or use --amp off/bf16, then --resume.")


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


def evaluate_during_training(run: Run) -> Dict[str, Any]:
    """COCO metrics of the model on the validation split (else the test split), appended to
    metrics_history.jsonl; keeps checkpoint_best.pth by ``--best-metric`` and decides an
    early stop by ``--patience``."""
    split, dataset = ("val", run.val_set) if run.val_set is not None else ("test", run.test_set)
    metrics = evaluate(run.bare_model, dataset, batch_size=run.config.batch_size,
                       device=run.device, amp=run.amp != "off", layout=_selects_by_layout(run))
    value = metric_value(metrics, run.config.best_metric)
    improved = _select(run, value)
    if improved:  # the checkpoint holds the selection state that chose it
        state = run.checkpoint()
        if run.context.is_main:
            save_checkpoint(state, run.run_dir / "checkpoint_best.pth")
    run.selection.last = {"iteration": run.iteration, "split": split, "metrics": metrics}
    if run.context.is_main:
        epoch = run.iteration / run.schedule.iterations_per_epoch
        with open(run.run_dir / "metrics_history.jsonl", "a") as file:
            file.write(json.dumps({"epoch": epoch, "iteration": run.iteration, "split": split,
                                   **metrics, "best_metric": run.config.best_metric,
                                   "value": value if math.isfinite(value) else None,
                                   "best": improved}) + "\n")
        run.say(f"epoch {epoch:g} ({split}): bbox AP {metrics['bbox']['AP']:.2f}, segm AP "
                f"{metrics['segm']['AP']:.2f}; {run.config.best_metric} {value:.2f}"
                + (" (best so far)" if improved else f", best {run.selection.best:.2f}"))
    return metrics


def metric_value(metrics: Dict[str, Any], path: str) -> float:
    """The figure at dotted ``path`` (``segm.AP``, ``bbox.AP50``, ``segm.per_class.staff``)
    of a metrics.json dict; InputError naming the path and the keys there otherwise."""
    value: Any = metrics
    for depth, key in enumerate(path.split(".")):
        if not isinstance(value, dict) or key not in value:
            where = ".".join(path.split(".")[:depth]) or "metrics.json"
            keys = ", ".join(sorted(value)) if isinstance(value, dict) else "none"
            raise InputError(f"--best-metric {path}: {where} has no {key!r} (keys: {keys})")
        value = value[key]
    if value is None:  # undefined on these pages (a layout figure with nothing to count)
        return float("-inf")
    if not isinstance(value, (int, float)):
        raise InputError(f"--best-metric {path}: not a number but {type(value).__name__}")
    return float(value)


def _select(run: Run, value: float) -> bool:
    """Record an evaluation's value; True when it is the best so far (higher is better)."""
    selection, patience = run.selection, run.config.patience
    if selection.best is None or value > selection.best:
        selection.best, selection.best_iteration, selection.since_best = value, run.iteration, 0
        return True
    selection.since_best += 1
    if patience and selection.since_best >= patience:
        selection.stop_reason = (
            f"early stop at iteration {run.iteration}: {run.config.best_metric} did not "
            f"improve on {selection.best:.2f} (iteration {selection.best_iteration}) for "
            f"{patience} evaluations")
        run.say(selection.stop_reason)
    return False


# --------------------------------------------------------------------------------------------
# the end of a run
# --------------------------------------------------------------------------------------------

def finish(run: Run, start_iteration: int, train_size: int) -> Dict[str, Any]:
    """Final checkpoint, evaluation on the test split (of the best checkpoint where one was
    kept), summary.json/summary.md."""
    segment_time = time.perf_counter() - run.started
    # Every rank must end with the same weights; a checksum per rank makes that visible.
    checksums = distributed.all_gather_objects(parameter_checksum(run.bare_model))
    if len(set(checksums)) > 1:
        run.say(f"warning: ranks ended with different weights: {checksums}")
    final = run.checkpoint()
    if run.context.is_main:
        save_checkpoint(final, run.run_dir / "checkpoint_final.pth")
    evaluated, metrics = _test_evaluation(run)
    images = (run.iteration - start_iteration) * run.schedule.total_batch_size
    training_time = final["progress"]["training_time_s"]
    summary = {"training_time_s": training_time, "images_per_s": images / segment_time,
               "epochs": run.config.epochs, "iterations": run.iteration,
               "world_size": run.context.world_size, "train_size": train_size,
               "val_size": len(run.val_set) if run.val_set is not None else None,
               "backbone": run.config.backbone,
               "energy": final["progress"]["energy"] if run.config.energy else None,
               "stop_reason": run.selection.stop_reason or "end of the schedule",
               **run.stability.counts(), "evaluated": evaluated,
               "parameter_checksums": checksums, "metrics": metrics}
    if run.context.is_main:
        write_json_atomic(run.run_dir / "metrics.json", metrics)
        write_json_atomic(run.run_dir / "summary.json", summary)
        write_bytes_atomic(run.run_dir / "summary.md",
                           summary_markdown(run.config, summary).encode("utf-8"))
        run.say(ap_table(metrics))
        run.say(f"training time {format_duration(training_time)}, "
                f"{summary['images_per_s']:.2f} images/s; run folder {run.run_dir}")
    return summary


def _test_evaluation(run: Run) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(which weights were tested, their test metrics): checkpoint_best.pth's where
    evaluations kept one, else the final weights."""
    selection = run.selection
    evaluated: Dict[str, Any] = {"checkpoint": "checkpoint_final.pth", "iteration": run.iteration}
    if selection.best_iteration is not None:
        evaluated = {"checkpoint": "checkpoint_best.pth", "iteration": selection.best_iteration,
                     "best_metric": run.config.best_metric, "value": selection.best,
                     "split": "val" if run.val_set is not None else "test"}
        if selection.best_iteration != run.iteration:
            distributed.barrier()  # rank 0 wrote it
            best = load_checkpoint(run.run_dir / "checkpoint_best.pth")
            run.bare_model.load_state_dict(best["model"])
    run.say(f"test evaluation of {evaluated['checkpoint']} (iteration {evaluated['iteration']}"
            + (f", {evaluated['best_metric']} {evaluated['value']:.2f} on {evaluated['split']})"
               if "best_metric" in evaluated else ")"))
    last = selection.last
    if last and last["split"] == "test" and last["iteration"] == evaluated["iteration"]:
        return evaluated, last["metrics"]
    return evaluated, evaluate(run.bare_model, run.test_set, batch_size=run.config.batch_size,
                               device=run.device, amp=run.amp != "off",
                               layout=_selects_by_layout(run))


def _selects_by_layout(run: Run) -> bool:
    """Whether evaluations compute the layout metrics too: when the best checkpoint is
    chosen by one of them (``--best-metric layout.region_f1``)."""
    return run.config.best_metric.split(".", 1)[0] == "layout"


# --------------------------------------------------------------------------------------------
# settings of the process
# --------------------------------------------------------------------------------------------

def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # CUDA kernels without a deterministic version (roi_align backward) only warn.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_amp(amp: Optional[str], device: torch.device) -> str:
    """Default: bf16 on CUDA cards that support it, else off. fp16 needs CUDA; bf16 runs
    on CUDA and on CPUs with bfloat16 kernels (AVX-512 BF16, AMX)."""
    if amp is None:
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp == "bf16" and device.type == "cpu":
        if not cpu_supports_bf16():
            raise InputError("--amp bf16: this CPU has no bfloat16 kernels (AVX-512 BF16 or "
                             "AMX); use --amp off")
        return amp
    if amp != "off" and device.type != "cuda":
        raise InputError(f"--amp {amp} needs a CUDA device; on {device.type} use --amp off "
                         "(or bf16 on a CPU with AVX-512 BF16)")
    return amp


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state dict (names and bytes), as hex."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _resume_path(config: TrainConfig, run_dir: Path) -> Optional[Path]:
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


def _resumed_config(config: TrainConfig, checkpoint: Dict[str, Any], path: Path) -> TrainConfig:
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


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def _min_sizes(text: str) -> List[int]:
    try:
        sizes = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 800 or 640,672,704, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _ratios(text: str) -> List[float]:
    try:
        ratios = [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.25,0.5,1,2, got {text!r}") from None
    if not ratios or min(ratios) <= 0:
        raise argparse.ArgumentTypeError(f"ratios must be positive, got {text!r}")
    return ratios


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="a saved TrainConfig (.json or "
                        ".toml); flags given next to it override its settings")
    _data_flags(parser.add_argument_group(
        "data (no --data and no --train-ann: the embedded synthetic corpus)"), defaults)
    _model_flags(parser.add_argument_group("model"), defaults)
    _optimisation_flags(parser.add_argument_group("optimisation"), defaults)
    _run_flags(parser.add_argument_group("run folder, evaluation, devices"), defaults)
    return parser


def _data_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--task", choices=TASKS, default=defaults.task,
        help="what the model finds: regions (default: the layout's zones) or lines (the "
             "TextLine elements of PAGE/ALTO, classed by line type: a line model)")
    add("--data", help="dataset folder: DATA/train/*.jpg with its PAGE or ALTO files in "
        "DATA/train/page/, DATA/train/alto/ or next to the images; same for test/ (and val/: "
        "the validation split)")
    add("--train-ann", help="COCO JSON of the training split")
    add("--train-images", help="image folder of --train-ann (default: its folder)")
    add("--test-ann", help="COCO JSON of the test split")
    add("--test-images", help="image folder of --test-ann (default: its folder)")
    add("--val-fraction", type=_fraction, default=defaults.val_fraction,
        help="validation split: this fraction of the train pages, drawn by --seed (0: "
             "DATA/val/ when present, else evaluations during training use the test split)")
    add("--classes", nargs="+", help="class names in label order (default: sorted names found)")
    add("--class-map", nargs="+", default=[], metavar="OLD=NEW",
        help="rename or merge classes (paragraph=text); OLD= drops a class, *= drops every "
             "class not named")
    add("--fold-subtypes", action="store_true",
        help="fold SegmOnto sub-types to their main type (MainZone#1 -> MainZone) before the "
             "class map")
    add("--synthetic-pages", type=positive_int, default=defaults.synthetic_pages,
        help="synthetic corpus: pages in all")
    add("--synthetic-train", type=positive_int, default=defaults.synthetic_train,
        help="synthetic corpus: pages in the train split (the rest is test)")
    add("--synthetic-width", type=positive_int, default=defaults.synthetic_width,
        help="synthetic corpus: page width in pixels")
    add("--min-size", type=_min_sizes, default=defaults.min_size,
        help="short side at training; several (640,672,704) pick one per image; test uses the last")
    add("--max-size", type=positive_int, default=defaults.max_size, help="cap on the long side")
    add("--brightness-contrast", type=_fraction, default=defaults.brightness_contrast,
        help="augmentation: random brightness and contrast factors in [1 - x, 1 + x] (0: off)")
    add("--min-region-size", type=non_negative_float, default=defaults.min_region_size,
        metavar="PX", help="regions under PX pixels (sqrt(w x h) at the test size) are specks: "
        "left out of the training targets, ignored (COCO iscrowd) by evaluation (0: none)")
    add("--repeat-threshold", type=non_negative_float, default=defaults.repeat_threshold,
        help="class-balanced sampling: pages with a class on fewer than this fraction of the "
             "training pages are repeated (LVIS repeat factors; 0: uniform, the default)")
    add("--workers", type=int, default=defaults.workers, help="data loader worker processes per process")
    add("--cache-images", action="store_true",
        help="keep decoded training images in memory after the first epoch (faster loading, ~3 MB/page/worker)")
    add("--loader-pass", choices=LOADER_PASSES, default=defaults.loader_pass,
        help="epoch (default): a new pass over the data loader each epoch; run: one pass for "
             "the whole run, so prefetching goes on through epoch ends (less data wait where "
             "the workers have cores of their own)")


def _model_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--backbone", default=defaults.backbone, help=f"one of: {', '.join(sorted(BACKBONES))}")
    add("--norm", choices=NORMS, help="normalisation (default: frozenbn with --pretrained, else gn)")
    add("--pretrained", help="state dict file for the backbone body, or 'imagenet' (resnet50/101; downloads)")
    add("--init-from", metavar="CHECKPOINT", help="start a new run (new schedule and optimizer) "
        "from a trained maskdla model: every weight whose shape fits is kept, the class layers "
        "are rebuilt for other classes, keeping the rows of classes shared by name")
    add("--freeze-at", type=int, default=defaults.freeze_at, help="leading stages frozen (stem = 1)")
    add("--fpn-channels", type=positive_int, help="FPN width (default 256; 128 for vovnet19lite/slim)")
    add("--anchor-ratios", type=_ratios, default=defaults.anchor_ratios,
        help="RPN anchor aspect ratios height/width, e.g. 0.1,0.25,0.5,1,2 for wide text lines "
             "(default 0.5,1,2 as in the study)")
    add("--anchor-scales", type=int, choices=ANCHOR_SCALES, default=defaults.anchor_scales,
        help="anchor sizes per FPN level, spread over an octave: 1 = torchvision's (32, 64, "
             "..., 512), 3 = RetinaNet's (32, 40, 51 at the first level), for regions whose "
             "size falls between two levels (drop capitals, numbering)")
    add("--mask-resolution", type=int, choices=MASK_RESOLUTIONS, default=defaults.mask_resolution,
        help="side of the predicted masks: 28 (torchvision's) or 56 (finer along the short "
             "side of long thin regions: lyrics lines, running titles, margin notes)")
    add("--rois-per-image", type=positive_int, default=defaults.rois_per_image,
        help="RoIs sampled per image for the box head's loss (fewer: faster CPU steps)")
    add("--detections-per-image", type=positive_int, default=defaults.detections_per_image,
        help="at most this many detections per image at test time (a line model: 300)")


def _optimisation_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--epochs", type=float, default=defaults.epochs, help="epochs to train (fractions allowed)")
    add("--batch-size", type=positive_int, default=defaults.batch_size, help="images per process and iteration")
    add("--lr", type=float, default=defaults.lr,
        help=f"base learning rate; 0.02 is the study's for a total batch of {LR_REFERENCE_BATCH}")
    add("--scale-lr", action="store_true",
        help=f"scale --lr linearly by total batch / {LR_REFERENCE_BATCH} (batch x processes)")
    add("--momentum", type=float, default=defaults.momentum, help="SGD momentum")
    add("--weight-decay", type=float, default=defaults.weight_decay, help="SGD weight decay")
    add("--lr-steps", default=defaults.lr_steps,
        help=f"LR milestones: a preset ({', '.join(f'{k}={v[0]:.3g},{v[1]:.3g}' for k, v in LR_STEP_PRESETS.items())} "
             "of training), explicit epochs '300,400', fractions '0.4,0.7', or 'none'")
    add("--gamma", type=float, default=defaults.gamma, help="LR factor at each milestone")
    add("--warmup-iters", type=int, default=defaults.warmup_iters,
        help=f"linear warmup iterations: at most a tenth of the run, but at least "
             f"{SHORT_RUN_WARMUP} (or half of a shorter run)")
    add("--clip-grad-norm", type=non_negative_float, default=defaults.clip_grad_norm,
        help="clip the gradients' global L2 norm to this (0: off)")
    add("--nonfinite-limit", type=positive_int, default=defaults.nonfinite_limit,
        help="steps with a NaN/inf loss are skipped; this many in a row stop the run")
    add("--amp", choices=AMP_MODES, help="mixed precision (default: bf16 on CUDA where supported, else off)")
    add("--seed", type=int, default=defaults.seed, help="random seed")
    add("--deterministic", action="store_true", help="deterministic algorithms (resumed runs end with identical weights on CPU)")


def _run_flags(group: argparse._ArgumentGroup, defaults: TrainConfig) -> None:
    add = group.add_argument
    add("--out", help="run folder (default runs/BACKBONE-EPOCHSep)")
    add("--resume", nargs="?", const=RESUME_AUTO, help="resume from PATH, or 'auto': the run folder's checkpoint_last.pth")
    add("--checkpoint-every", type=non_negative_float, default=defaults.checkpoint_every,
        help="epochs between checkpoint_last.pth saves (0: only at the end)")
    add("--eval-every", type=non_negative_float, default=defaults.eval_every,
        help="epochs between evaluations on the validation split (else the test split), "
             "which keep checkpoint_best.pth (0: only the final test evaluation)")
    add("--best-metric", default=defaults.best_metric,
        help="what checkpoint_best.pth maximises: a dotted path into metrics.json "
             "(segm.AP, segm.AP50, bbox.AP, segm.per_class.NAME, ...)")
    add("--patience", type=int, default=defaults.patience,
        help="stop after this many evaluations without a better --best-metric (0: never)")
    add("--log-every", type=positive_int, default=defaults.log_every, help="iterations between log.jsonl lines")
    add("--tensorboard", action="store_true",
        help="also write TensorBoard event files to RUN/tensorboard (the 'tensorboard' extra)")
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add("--no-energy", dest="energy", action="store_false", help="do not run the energy meter")
    add("--energy-interval", type=float, default=defaults.energy_interval, help="seconds between energy samples")
    add("--price-per-kwh", type=non_negative_float, default=defaults.price_per_kwh, help="electricity price for the cost")
    add("--cpu-watts-per-core", type=float, default=defaults.cpu_watts_per_core,
        help="watts one busy core draws, for the CPU energy estimate where RAPL is unreadable "
             "(an estimate, marked so; default: Green Algorithms' per-core TDP, docs/energy.md)")
    add("--currency", default=defaults.currency, help="currency of --price-per-kwh")


def _fraction(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def config_from_argv(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The run's TrainConfig from the command line: ``--config FILE`` (if given) for the
    settings, the flags given next to it over them; validated."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        saved = TrainConfig.load(known.config).to_dict()
        saved["class_map"] = [f"{old}={new or ''}" for old, new in (saved["class_map"] or {}).items()]
        parser.set_defaults(**saved)
    return config_from_args(parser.parse_args(argv))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags (``--config`` already applied), validated."""
    values = vars(args).copy()
    values.pop("config", None)
    values["class_map"] = parse_class_map(values.get("class_map") or []) or None
    return TrainConfig.from_dict(values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = config_from_argv(argv)
    try:
        fit(config)
    except TrainingDiverged as error:
        print(f"maskdla: training stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
