"""Training: an epoch-native, distributed, resumable loop behind ``python -m maskdla.train``.

Three ways in::

    python -m maskdla.train --backbone vovnet39 --epochs 450 --data DATA
    torchrun --nproc_per_node=2 -m maskdla.train --backbone vovnet39 --epochs 450 --data DATA
    maskdla.train(TrainConfig(backbone="vovnet39", epochs=450, data="DATA"))

The run is planned in epochs (:mod:`maskdla.schedule`) and stepped per iteration. A run
folder holds config.json, log.jsonl, energy.csv, metrics.json, metrics_history.jsonl,
summary.json, summary.md and the checkpoints (docs/training.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler

from maskdla import distributed
from maskdla.backbones import BACKBONES, NORMS, default_norm, resolve_name
from maskdla.checkpoint import load_checkpoint, save_checkpoint
from maskdla.cli import non_negative_float, positive_int, run_main
from maskdla.evaluation.coco import format_table
from maskdla.data.pagexml import parse_class_map
from maskdla.data.dataset import Dataset, GroupedBatchSampler, aspect_ratio_groups, collate_fn
from maskdla.data.sources import run_datasets
from maskdla.energy import EnergyMeter, efficiency_row, format_duration, merge_node_summaries, should_measure
from maskdla.errors import InputError
from maskdla.files import read_json, write_json_atomic
from maskdla.inference import resolve_device
from maskdla.evaluation import evaluate
from maskdla.model import build_model, model_kwargs_from_config
from maskdla.schedule import LR_STEP_PRESETS, SchedulePlan, build_scheduler, plan

#: the total batch size the default LR (0.02) was tuned for in the study (450-epoch runs)
LR_REFERENCE_BATCH = 2
LOADER_PASSES = ("epoch", "run")
LOSS_NAMES = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint and in config.json.

    Field names are the CLI flags with underscores (``--lr-steps`` -> ``lr_steps``).
    """

    backbone: str = "resnet50"
    data: Optional[str] = None
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    test_ann: Optional[str] = None
    test_images: Optional[str] = None
    classes: Optional[List[str]] = None
    class_map: Optional[Dict[str, Optional[str]]] = None
    epochs: float = 450.0
    batch_size: int = 2
    lr: float = 0.02
    scale_lr: bool = False
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: str = "default"
    gamma: float = 0.1
    warmup_iters: int = 1000
    min_size: List[int] = field(default_factory=lambda: [800])
    max_size: int = 1333
    norm: Optional[str] = None
    pretrained: Optional[str] = None
    freeze_at: int = 0
    fpn_channels: Optional[int] = None
    vovnet_version: int = 2
    #: RPN anchor aspect ratios (height / width); None = (0.5, 1, 2), the study's
    anchor_ratios: Optional[List[float]] = None
    #: RoIs sampled per image for the box head's loss (torchvision/detectron2 default 512);
    #: fewer make a CPU step several times cheaper
    rois_per_image: int = 512
    amp: Optional[str] = None
    workers: int = 2
    #: keep decoded, resized training images in each loader worker's memory (decoding is
    #: most of a page's loading time; costs ~3 MB per page at 800 px per worker)
    cache_images: bool = False
    #: "epoch": a new pass over the DataLoader each epoch (its prefetch queue drains at each
    #: epoch's end); "run": one pass over the rest of the run (see EpochBatches). On the
    #: 2-core CPU "run" halves the data wait but is 6 % slower: the workers then load while
    #: the main process computes, instead of while it waits (docs/benchmarks.md)
    loader_pass: str = "epoch"
    seed: int = 0
    deterministic: bool = False
    out: Optional[str] = None
    resume: Optional[str] = None
    checkpoint_every: float = 5.0
    eval_every: float = 0.0
    log_every: int = 20
    device: Optional[str] = None
    energy: bool = True
    energy_interval: float = 1.0
    price_per_kwh: float = 0.246
    currency: str = "EUR"
    synthetic_pages: int = 228
    synthetic_train: int = 128
    synthetic_width: int = 1000
    #: stop, as if interrupted, after this many iterations (time-boxed jobs, tests);
    #: the run stays resumable. Not part of the schedule.
    stop_after_iterations: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """From a plain dict (a checkpoint's or an experiment file's); unknown keys are an
        error naming them and the valid fields."""
        names = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown training setting(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(names))}")
        return cls(**values)

    def validate(self) -> "TrainConfig":
        """Check values a flag parser cannot; ValueError... no: InputError naming the flag."""
        try:
            resolve_name(self.backbone)
        except ValueError as error:
            raise InputError(f"--backbone: {error}") from None
        if self.norm is not None and self.norm not in NORMS:
            raise InputError(f"--norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if self.amp is not None and self.amp not in ("off", "fp16", "bf16"):
            raise InputError(f"--amp {self.amp!r}: choose off, fp16 or bf16")
        if not self.epochs > 0 or not math.isfinite(self.epochs):
            raise InputError(f"--epochs must be a positive number, got {self.epochs!r}")
        if self.batch_size < 1 or self.max_size < 1 or not self.min_size or min(self.min_size) < 1:
            raise InputError("--batch-size, --min-size and --max-size must be positive")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr!r}")
        if self.data and (self.train_ann or self.test_ann):
            raise InputError("give either --data or --train-ann/--test-ann, not both")
        if bool(self.train_ann) != bool(self.test_ann):
            raise InputError("--train-ann and --test-ann go together")
        if self.loader_pass not in LOADER_PASSES:
            raise InputError(f"--loader-pass {self.loader_pass!r}: choose one of "
                             f"{', '.join(LOADER_PASSES)}")
        if not 0 <= self.freeze_at <= 5:
            raise InputError(f"--freeze-at must be between 0 and 5, got {self.freeze_at}")
        try:
            plan(self.epochs, 1, 1, 1, self.lr_steps)
        except ValueError as error:
            raise InputError(str(error)) from None
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{resolve_name(self.backbone)}-{self.epochs:g}ep")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

class EpochBatches:
    """Batch sampler of one rank over the rest of a run: a DistributedSampler (shuffled by
    seed and epoch, so the order is reproducible) grouped by aspect ratio, epoch after
    epoch, that can start mid-epoch.

    ``start(epoch, skip, count)`` before iterating: the epoch's first ``skip`` batches are
    skipped without loading them (resuming a run killed mid-epoch), and ``count`` batches
    follow, across epoch boundaries. With ``--loader-pass run`` one pass over the DataLoader
    covers the rest of the run, so the workers keep prefetching through each epoch's end
    instead of draining their queue and making the next epoch's first step wait for a full
    load.
    """

    def __init__(self, dataset: Dataset, batch_size: int, context: distributed.DistributedContext,
                 seed: int):
        sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank,
                                     shuffle=True, seed=seed, drop_last=False)
        self.batches = GroupedBatchSampler(sampler, aspect_ratio_groups(dataset.aspect_ratios()),
                                           batch_size)
        self.start(0)

    @property
    def per_epoch(self) -> int:
        """Batches of one epoch on this rank."""
        return len(self.batches)

    def start(self, epoch: int, skip: int = 0, count: Optional[int] = None) -> None:
        """Begin at batch ``skip`` of ``epoch``; ``count`` batches in all (default: the rest
        of that epoch)."""
        self.epoch, self.skip = epoch, skip
        self.count = self.per_epoch - skip if count is None else count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[List[int]]:
        epoch, skip, left = self.epoch, self.skip, self.count
        while left > 0:
            self.batches.set_epoch(epoch)
            before = left
            for batch in itertools.islice(self.batches, skip, skip + left):
                yield batch
                left -= 1
            if left == before:  # an epoch with nothing (left): never loop forever
                return
            epoch, skip = epoch + 1, 0


# --------------------------------------------------------------------------------------------
# run state
# --------------------------------------------------------------------------------------------

def _rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(_plain(random.getstate()))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively: weights_only loading takes plain containers."""
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # CUDA kernels without a deterministic version (roi_align backward) only warn.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resolve_amp(amp: Optional[str], device: torch.device) -> str:
    """Default: bf16 on CUDA cards that support it, else off. fp16/bf16 need CUDA."""
    if amp is None:
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    if amp != "off" and device.type != "cuda":
        raise InputError(f"--amp {amp} needs a CUDA device; on {device.type} use --amp off")
    return amp


def parameter_checksum(model: torch.nn.Module) -> str:
    """SHA-256 of the model's state dict (names and bytes), as hex."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def add_energy(earlier: Optional[Dict[str, Any]], later: Optional[Dict[str, Any]]
               ) -> Optional[Dict[str, Any]]:
    """Energy summary of a run resumed after ``earlier`` (None: no earlier segment): the
    later segment's summary with durations, energies and costs added up, peaks maxed."""
    if earlier is None or later is None:
        return later or earlier
    total = dict(later, segments=earlier.get("segments", 1) + 1)
    for key in ("duration_s", "gpu_energy_kwh", "cpu_energy_kwh", "energy_kwh", "cost"):
        if earlier.get(key) is not None:
            total[key] = earlier[key] + (later.get(key) or 0.0)
    gpus = []
    for index, gpu in enumerate(later.get("gpus", [])):
        before = earlier["gpus"][index] if index < len(earlier.get("gpus", [])) else {}
        gpu = dict(gpu)
        gpu["energy_kwh"] = gpu.get("energy_kwh", 0.0) + before.get("energy_kwh", 0.0)
        peaks = [value for value in (gpu.get("peak_memory_mib"), before.get("peak_memory_mib"))
                 if value is not None]
        gpu["peak_memory_mib"] = max(peaks) if peaks else None
        gpus.append(gpu)
    total["gpus"] = gpus
    return total


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) the run ``config`` describes; evaluate on the test split at the end.

    Returns the run's summary (also written to summary.json; metrics under "metrics").
    Raises InputError for bad settings or data, TrainingDiverged on a NaN/inf loss.
    """
    config.validate()
    device = resolve_device(config.device)
    context = distributed.init_distributed(device.type)
    if device.type == "cuda" and context.enabled:
        device = torch.device("cuda", context.local_rank)
    try:
        return _train(config, device, context)
    finally:
        distributed.shutdown_distributed()


def _train(config: TrainConfig, device: torch.device, context: distributed.DistributedContext
           ) -> Dict[str, Any]:
    amp = resolve_amp(config.amp, device)
    config.norm = config.norm or default_norm(config.pretrained)
    run_dir = config.run_dir
    seed_everything(config.seed + context.rank, config.deterministic)

    checkpoint = None
    resume_path = _resume_path(config, run_dir)
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path)
        _check_resumable(config, checkpoint, resume_path)

    train_set, test_set = run_datasets(config.to_dict())
    classes = train_set.classes
    schedule = plan(config.epochs, len(train_set), config.batch_size, context.world_size,
                    config.lr_steps)
    log = _printer(context)
    log(f"run: {run_dir}  backbone: {config.backbone}  device: {device}  amp: {amp}")
    log(schedule.describe())

    model = build_model(config.backbone, num_classes=len(classes) + 1,
                        pretrained=None if checkpoint else config.pretrained,
                        freeze_at=config.freeze_at, box_batch_size_per_image=config.rois_per_image,
                        **model_kwargs_from_config(config.to_dict()))
    model.to(device)
    if context.enabled:
        if config.norm == "syncbn" and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True)
    bare_model = model.module if context.enabled else model

    lr = config.lr * (schedule.total_batch_size / LR_REFERENCE_BATCH if config.scale_lr else 1)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    # Warmup is capped at a tenth of the run, so short runs are not all warmup.
    warmup = min(config.warmup_iters, schedule.total_iterations // 10)
    scheduler = build_scheduler(optimizer, schedule, config.gamma, warmup)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    iteration = 0
    if checkpoint is not None:
        bare_model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        iteration = int(checkpoint["iteration"])
        _restore_rng(checkpoint["rng"][min(context.rank, len(checkpoint["rng"]) - 1)])
        log(f"resumed from {resume_path} at iteration {iteration} "
            f"(epoch {iteration / schedule.iterations_per_epoch:g})")

    batches = EpochBatches(train_set, config.batch_size, context, config.seed)
    # The loader draws its workers' base seed from its own generator, not from the global
    # RNG that the model's samplers use: a resumed run then replays the same random stream.
    loader = DataLoader(train_set, batch_sampler=batches, num_workers=config.workers,
                        collate_fn=collate_fn, pin_memory=device.type == "cuda",
                        persistent_workers=config.workers > 0,
                        prefetch_factor=4 if config.workers > 0 else None,
                        generator=torch.Generator().manual_seed(config.seed + context.rank))

    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:  # a fresh run: no lines of an earlier attempt in its logs
            for stale in ("log.jsonl", "metrics_history.jsonl"):
                (run_dir / stale).unlink(missing_ok=True)
        write_json_atomic(run_dir / "config.json", dict(config.to_dict(), world_size=context.world_size,
                                                  train_size=len(train_set), classes=classes))
    distributed.barrier()

    # Time and energy of earlier segments of a resumed run, carried in its checkpoints.
    earlier = (checkpoint or {}).get("progress", {"training_time_s": 0.0, "energy": None})
    meter = None
    if config.energy and should_measure(context.local_rank):
        # One meter per node; on a shared file system each node writes its own timeline,
        # and a resumed segment its own file.
        timeline = "energy" + ("" if context.is_main else f"-rank{context.rank}")
        timeline += f"-from-iteration{iteration}.csv" if iteration else ".csv"
        meter = EnergyMeter(config.energy_interval, price_per_kwh=config.price_per_kwh,
                            currency=config.currency,
                            csv_path=run_dir / timeline if run_dir.is_dir() else None)
    start_iteration = iteration
    started = time.perf_counter()

    def progress() -> Dict[str, Any]:
        """Training time and energy so far, this segment and the earlier ones together."""
        nodes = [summary for summary in distributed.all_gather_objects(
            meter.summary() if meter else None) if summary is not None]
        energy = merge_node_summaries(nodes) if nodes else None
        return {"training_time_s": earlier["training_time_s"] + time.perf_counter() - started,
                "energy": add_energy(earlier["energy"], energy)}

    def make_checkpoint(at_iteration: int) -> Dict[str, Any]:
        return {"model": bare_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": at_iteration / schedule.iterations_per_epoch, "iteration": at_iteration,
                "rng": distributed.all_gather_objects(_rng_state()),
                "config": config.to_dict(), "classes": classes, "progress": progress()}

    try:
        if meter:
            meter.start()
        iteration = _loop(config, model, optimizer, scheduler, scaler, loader, batches, schedule,
                          device, amp, context, iteration, run_dir, make_checkpoint, test_set,
                          log)
    finally:
        if meter:
            meter.stop()
    segment_time = time.perf_counter() - started
    if config.stop_after_iterations is not None and iteration < schedule.total_iterations:
        log(f"stopped at iteration {iteration} as asked; resume with --resume auto")
        return {"stopped_at_iteration": iteration}

    # Every rank must end with the same weights; a checksum per rank makes that visible.
    checksums = distributed.all_gather_objects(parameter_checksum(bare_model))
    if len(set(checksums)) > 1:
        log(f"warning: ranks ended with different weights: {checksums}")
    checkpoint_final = make_checkpoint(iteration)
    if context.is_main:
        save_checkpoint(checkpoint_final, run_dir / "checkpoint_final.pth")
    metrics = evaluate(bare_model, test_set, batch_size=config.batch_size, device=device,
                       amp=amp != "off")
    images = (iteration - start_iteration) * schedule.total_batch_size
    totals = checkpoint_final["progress"]
    training_time = totals["training_time_s"]
    summary = {"training_time_s": training_time, "images_per_s": images / segment_time,
               "epochs": config.epochs, "iterations": iteration, "world_size": context.world_size,
               "train_size": len(train_set), "backbone": config.backbone,
               "energy": totals["energy"] if config.energy else None,
               "parameter_checksums": checksums, "metrics": metrics}
    if context.is_main:
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_json_atomic(run_dir / "summary.json", summary)
        (run_dir / "summary.md").write_text(summary_markdown(config, summary))
        log(format_table(metrics))
        log(f"training time {format_duration(training_time)}, {summary['images_per_s']:.2f} images/s; "
            f"run folder {run_dir}")
    return summary


def train_step(model: torch.nn.Module, images: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
               autocast_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """One optimisation step on a batch; returns the loss terms (``LOSS_NAMES`` order) as a
    detached tensor on ``device``, so that reading them needs no host synchronisation."""
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{key: value.to(device, non_blocking=True) for key, value in target.items()}
               for target in targets]
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        losses = model(images, targets)
    loss = sum(losses[name] for name in LOSS_NAMES)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return torch.stack([losses[name].detach().float() for name in LOSS_NAMES])


def _loop(config, model, optimizer, scheduler, scaler, loader, batches, schedule: SchedulePlan,
          device, amp, context, iteration, run_dir, make_checkpoint, test_set, log) -> int:
    """Iterate from ``iteration`` to the end of the schedule; returns the last iteration."""
    from tqdm import tqdm

    total = schedule.total_iterations
    stop_at = total if config.stop_after_iterations is None else min(total, config.stop_after_iterations)
    per_epoch = schedule.iterations_per_epoch
    checkpoint_at = _every(config.checkpoint_every, per_epoch, total)
    evaluate_at = _every(config.eval_every, per_epoch, total) - {total}
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    bar = tqdm(total=total, initial=iteration, disable=not context.is_main, unit="it",
               dynamic_ncols=True, file=sys.stderr)
    log_file = open(run_dir / "log.jsonl", "a") if context.is_main else None
    # Loss sums live on the device between log lines: no host sync inside the step.
    loss_sums = torch.zeros(len(LOSS_NAMES), device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    logged_iterations, window_start, data_time = 0, time.perf_counter(), 0.0
    started = time.perf_counter()
    model.train()
    try:
        while iteration < stop_at:
            # The sampler's epochs are whole batches: with per_epoch not an integer
            # (fractional epochs), an iteration's sampler epoch is iteration // per epoch.
            epoch, skip = divmod(iteration, batches.per_epoch)
            count = stop_at - iteration  # "run": the rest of the run in one pass
            if config.loader_pass == "epoch":
                count = min(count, batches.per_epoch - skip)
            batches.start(epoch, skip, count)
            waiting_since = time.perf_counter()
            for images, targets in loader:
                data_time += time.perf_counter() - waiting_since
                losses = train_step(model, images, targets, optimizer, scaler, device, autocast_dtype)
                scheduler.step()
                iteration += 1
                loss_sums += losses
                nonfinite |= ~torch.isfinite(losses.sum())
                logged_iterations += 1
                bar.update(1)
                last = iteration >= stop_at
                if iteration % config.log_every == 0 or last or iteration in checkpoint_at:
                    _check_finite(nonfinite, iteration, run_dir)
                    means = distributed.all_reduce_mean(loss_sums / logged_iterations).tolist()
                    elapsed = time.perf_counter() - window_start
                    record = {"epoch": iteration / per_epoch, "iteration": iteration,
                              "lr": optimizer.param_groups[0]["lr"], "loss": sum(means),
                              **dict(zip(LOSS_NAMES, means)),
                              "time": time.perf_counter() - started,
                              "images_per_s": logged_iterations * schedule.total_batch_size / elapsed,
                              "data_wait_percent": 100 * data_time / elapsed}
                    if log_file:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                    bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                    img_s=f"{record['images_per_s']:.1f}")
                    loss_sums.zero_()
                    logged_iterations, window_start, data_time = 0, time.perf_counter(), 0.0
                if iteration in checkpoint_at:
                    state = make_checkpoint(iteration)
                    if context.is_main:
                        save_checkpoint(state, run_dir / "checkpoint_last.pth")
                if iteration in evaluate_at:
                    _evaluate_during_training(model, test_set, config, device, amp, iteration,
                                              per_epoch, run_dir, context, log)
                    model.train()
                waiting_since = time.perf_counter()
    finally:
        bar.close()
        if log_file:
            log_file.close()
    return iteration


def _every(epochs: float, per_epoch: float, total: int) -> set:
    """Iterations at which something happens every ``epochs`` epochs (0: only at the end)."""
    points = {total}
    if epochs > 0:
        step = epochs * per_epoch
        points |= {round(step * k) for k in range(1, int(total / step) + 1)}
    return {point for point in points if 0 < point <= total}


def _check_finite(nonfinite: torch.Tensor, iteration: int, run_dir: Path) -> None:
    if bool(nonfinite):
        last = run_dir / "checkpoint_last.pth"
        raise TrainingDiverged(
            f"the loss became NaN or infinite by iteration {iteration}; stopped before saving "
            f"anything from it. The last good checkpoint is {last if last.exists() else 'none'}: "
            "lower --lr, raise --warmup-iters or use --amp off/bf16, then --resume.")


def _evaluate_during_training(model, test_set, config, device, amp, iteration, per_epoch,
                              run_dir, context, log) -> None:
    bare = model.module if context.enabled else model
    metrics = evaluate(bare, test_set, batch_size=config.batch_size, device=device,
                       amp=amp != "off")
    if context.is_main:
        epoch = iteration / per_epoch
        with open(run_dir / "metrics_history.jsonl", "a") as file:
            file.write(json.dumps({"epoch": epoch, "iteration": iteration, **metrics}) + "\n")
        log(f"epoch {epoch:g}: bbox AP {metrics['bbox']['AP']:.2f}, segm AP {metrics['segm']['AP']:.2f}")


def _resume_path(config: TrainConfig, run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: --resume PATH, or with --resume auto (and after a
    torchrun restart) the run folder's checkpoint_last.pth when it exists."""
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if config.resume in ("auto", None):
        last = run_dir / "checkpoint_last.pth"
        if (config.resume == "auto" or restarted) and last.is_file():
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


def _check_resumable(config: TrainConfig, checkpoint: Dict[str, Any], path: Path) -> None:
    saved = checkpoint["config"]
    for key in ("backbone", "norm", "min_size", "max_size", "fpn_channels", "vovnet_version",
                "anchor_ratios"):
        ours = getattr(config, key) if key != "norm" else (config.norm or default_norm(config.pretrained))
        if key in saved and saved[key] != ours and not (key == "norm" and config.norm is None):
            raise InputError(f"cannot resume: the checkpoint was trained with {key}={saved[key]!r}, "
                             f"this run asks for {ours!r}", path)
    if "optimizer" not in checkpoint or "iteration" not in checkpoint:
        raise InputError("cannot resume: not a training checkpoint (no optimizer state)", path)


def _printer(context: distributed.DistributedContext):
    def log(message: str) -> None:
        if context.is_main:
            print(message, flush=True)
    return log


# --------------------------------------------------------------------------------------------
# summary.md
# --------------------------------------------------------------------------------------------

def summary_markdown(config: TrainConfig, summary: Dict[str, Any]) -> str:
    """The run's summary: efficiency row (the study's columns) and the AP table."""
    lines = [f"# Run {config.run_dir.name}", "",
             f"- backbone: {config.backbone}, epochs: {config.epochs:g}, batch: "
             f"{config.batch_size} x {summary['world_size']} processes, train images: "
             f"{summary['train_size']}, iterations: {summary['iterations']}",
             f"- training time: {format_duration(summary['training_time_s'])}, "
             f"{summary['images_per_s']:.2f} images/s", ""]
    energy = summary.get("energy")
    if energy:
        row = efficiency_row(dict(energy, duration_s=summary["training_time_s"]))
        lines += ["| " + " | ".join(row) + " |", "|" + "---|" * len(row),
                  "| " + " | ".join(row.values()) + " |", ""]
        lines.append(f"- energy method: {energy['method']}"
                     + (f" ({energy['nodes'][0].get('gpu_unavailable_reason')})"
                        if energy["method"] == "unavailable" and energy.get("nodes") else ""))
        rss = energy.get("nodes", [{}])[0].get("process_peak_rss_mib")
        if rss:
            lines.append(f"- peak process memory (RSS): {rss:,.0f} MiB")
        lines.append("")
    lines += ["## Evaluation on the test split", "", format_table(summary["metrics"]), ""]
    return "\n".join(lines)


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
    add = parser.add_argument
    data = parser.add_argument_group("data (no --data and no --train-ann: the embedded synthetic corpus)")
    data.add_argument("--data", help="dataset folder: DATA/train/*.jpg + DATA/train/page/*.xml, same for test/")
    data.add_argument("--train-ann", help="COCO JSON of the training split")
    data.add_argument("--train-images", help="image folder of --train-ann (default: its folder)")
    data.add_argument("--test-ann", help="COCO JSON of the test split")
    data.add_argument("--test-images", help="image folder of --test-ann (default: its folder)")
    data.add_argument("--classes", nargs="+", help="class names in label order (default: sorted names found)")
    data.add_argument("--class-map", nargs="+", default=[], metavar="OLD=NEW",
                      help="rename or merge classes (paragraph=text); OLD= drops a class")
    data.add_argument("--synthetic-pages", type=positive_int, default=defaults.synthetic_pages,
                      help="synthetic corpus: pages in all")
    data.add_argument("--synthetic-train", type=positive_int, default=defaults.synthetic_train,
                      help="synthetic corpus: pages in the train split (the rest is test)")
    data.add_argument("--synthetic-width", type=positive_int, default=defaults.synthetic_width,
                      help="synthetic corpus: page width in pixels")
    add("--backbone", default=defaults.backbone, help=f"one of: {', '.join(sorted(BACKBONES))}")
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
        help="linear warmup iterations (at most a tenth of the run)")
    add("--min-size", type=_min_sizes, default=defaults.min_size,
        help="short side at training; several (640,672,704) pick one per image; test uses the last")
    add("--max-size", type=positive_int, default=defaults.max_size, help="cap on the long side")
    add("--norm", choices=NORMS, help="normalisation (default: frozenbn with --pretrained, else gn)")
    add("--pretrained", help="state dict file for the backbone body, or 'imagenet' (resnet50/101; downloads)")
    add("--freeze-at", type=int, default=defaults.freeze_at, help="leading stages frozen (stem = 1)")
    add("--fpn-channels", type=positive_int, help="FPN width (default 256; 128 for vovnet19lite/slim)")
    add("--vovnet-version", type=int, choices=(1, 2), default=defaults.vovnet_version,
        help="VoVNet OSA modules: 2 (eSE + identity) or 1 (plain)")
    add("--anchor-ratios", type=_ratios, default=None,
        help="RPN anchor aspect ratios height/width, e.g. 0.1,0.25,0.5,1,2 for wide text lines "
             "(default 0.5,1,2 as in the study)")
    add("--rois-per-image", type=positive_int, default=defaults.rois_per_image,
        help="RoIs sampled per image for the box head's loss (fewer: faster CPU steps)")
    add("--amp", choices=("off", "fp16", "bf16"), help="mixed precision (default: bf16 on CUDA where supported, else off)")
    add("--workers", type=int, default=defaults.workers, help="data loader worker processes per process")
    add("--cache-images", action="store_true",
        help="keep decoded training images in memory after the first epoch (faster loading, ~3 MB/page/worker)")
    add("--loader-pass", choices=LOADER_PASSES, default=defaults.loader_pass,
        help="epoch (default): a new pass over the data loader each epoch; run: one pass for "
             "the whole run, so prefetching goes on through epoch ends (less data wait where "
             "the workers have cores of their own)")
    add("--seed", type=int, default=defaults.seed, help="random seed")
    add("--deterministic", action="store_true", help="deterministic algorithms (resumed runs end with identical weights on CPU)")
    add("--out", help="run folder (default runs/BACKBONE-EPOCHSep)")
    add("--resume", nargs="?", const="auto", help="resume from PATH, or 'auto': the run folder's checkpoint_last.pth")
    add("--checkpoint-every", type=non_negative_float, default=defaults.checkpoint_every,
        help="epochs between checkpoint_last.pth saves (0: only at the end)")
    add("--eval-every", type=non_negative_float, default=defaults.eval_every,
        help="epochs between evaluations on the test split (0: at the end only)")
    add("--log-every", type=positive_int, default=defaults.log_every, help="iterations between log.jsonl lines")
    add("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    add("--no-energy", dest="energy", action="store_false", help="do not run the energy meter")
    add("--energy-interval", type=float, default=defaults.energy_interval, help="seconds between energy samples")
    add("--price-per-kwh", type=non_negative_float, default=defaults.price_per_kwh, help="electricity price for the cost")
    add("--currency", default=defaults.currency, help="currency of --price-per-kwh")
    add("--config", help="JSON or TOML file of TrainConfig fields (what experiments writes); "
                         "flags given as well override it")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = vars(args).copy()
    values.pop("config", None)
    if not isinstance(values.get("class_map"), dict):  # a --config file holds the mapping
        values["class_map"] = parse_class_map(values.get("class_map") or []) or None
    return TrainConfig.from_dict(values)


def read_config_file(path: str) -> Dict[str, Any]:
    """The TrainConfig fields in a JSON or TOML file; InputError naming the file."""
    if Path(path).suffix == ".toml":
        import tomllib
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise InputError(f"cannot read config: {error}", path) from None
    else:
        values = read_json(path, "config")
    try:
        TrainConfig.from_dict(values)
    except (InputError, TypeError) as error:
        raise InputError(str(error), path) from None
    return values


def config_from_argv(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The run's TrainConfig from the command line: --config FILE, then the flags given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**read_config_file(args.config))
        args = parser.parse_args(argv)
    return config_from_args(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = config_from_argv(argv)
    try:
        train(config)
    except TrainingDiverged as error:
        print(f"maskdla: training stopped: {error}", file=sys.stderr)
        return 1
    return 0


class _CallableModule(types.ModuleType):
    """``maskdla.train(config)`` runs :func:`train`, while ``maskdla.train`` stays this module
    (so ``python -m maskdla.train`` and ``from maskdla.train import TrainConfig`` work)."""

    def __call__(self, config: TrainConfig) -> Dict[str, Any]:
        return train(config)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    run_main(main)
