"""Training: an epoch-native, distributed, resumable loop behind ``python -m maskdla.train``.

Three ways in::

    python -m maskdla.train --backbone vovnet39 --epochs 450 --data DATA   # or --config run.toml
    torchrun --nproc_per_node=2 -m maskdla.train --backbone vovnet39 --epochs 450 --data DATA
    maskdla.fit(maskdla.TrainConfig(backbone="vovnet39", epochs=450, data="DATA"))

The run is planned in epochs (:mod:`maskdla.schedule`) and stepped per iteration. A run
folder holds config.json, log.jsonl, energy.csv, metrics.json, metrics_history.jsonl,
summary.json, summary.md and the checkpoints (docs/training.md). Read from the top:
:func:`fit` sets up a :class:`Run`, :func:`train_one_pass` steps it through the loader,
:func:`finish` evaluates it and writes the summary. Around the loop, each in its module:
the run's state and resuming (:mod:`maskdla.run_state`), the hooks it calls
(:mod:`maskdla.hooks`), what it writes as it goes (:mod:`maskdla.run_output`), the flags
(:mod:`maskdla.train_cli`), checkpoint selection (:mod:`maskdla.evaluation.selection`) and
the evaluations it asks for (:mod:`maskdla.evaluation.evaluators`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from maskdla import distributed
from maskdla.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from maskdla.cli import run_main
from maskdla.config import LR_REFERENCE_BATCH, TrainConfig
from maskdla.data.dataset import Dataset, collate_fn
from maskdla.data.samplers import EpochBatches
from maskdla.data.sources import RunData, run_data
from maskdla.errors import InputError
from maskdla.evaluation import EvalSettings, evaluate
from maskdla.evaluation.evaluators import check_best_metric, evaluators_for
from maskdla.evaluation.selection import metric_value
from maskdla.files import check_output_folder, write_bytes_atomic, write_json_atomic
from maskdla.finetune import init_from_checkpoint
from maskdla.hooks import LOSS_NAMES, HookList, TrainHooks
from maskdla.inference import cpu_supports_bf16, resolve_device
from maskdla.model import build_model_from_config
from maskdla.run_output import (RunOutput, energy_meter, prepare_run_dir, remove_unstarted_run,
                                run_dir_before)
from maskdla.run_state import Run, resume_path, resumed_config
from maskdla.schedule import SchedulePlan, build_scheduler, check_batch_fits, plan, warmup_iterations
from maskdla.tables import ap_table, format_duration, summary_markdown
from maskdla.train_cli import config_from_argv

__all__ = ["TrainConfig", "TrainHooks", "TrainingDiverged", "Run", "fit", "main"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


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
    # Here rather than in validate(): the evaluators' table sits above the config.
    check_best_metric(config.best_metric)
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
    resumed_from = resume_path(config, config.run_dir)
    if resumed_from is not None:
        checkpoint = load_checkpoint(resumed_from)
        config = resumed_config(config, checkpoint, resumed_from)
    config = dataclasses.replace(config, norm=config.resolved_norm)

    data = run_data(config)
    run = build_run(config, device, context, amp, data, checkpoint)
    if checkpoint is not None:
        run.say(f"resumed from {resumed_from} at iteration {run.iteration} "
                f"(epoch {run.iteration / run.schedule.iterations_per_epoch:g})")
    batches = EpochBatches(data.train, config.batch_size, seed=config.seed, rank=context.rank,
                           world_size=context.world_size, repeat_threshold=config.repeat_threshold)
    loader = build_loader(config, data.train, batches, device, context.rank)
    before = run_dir_before(run.run_dir)
    prepare_run_dir(run, fresh=checkpoint is None, train_size=len(data.train))
    run.meter = energy_meter(run)
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
            remove_unstarted_run(run.run_dir, before)
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


def train_one_pass(run: Run, loader: DataLoader, output: RunOutput, hooks: TrainHooks) -> None:
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


def evaluate_during_training(run: Run) -> Dict[str, Any]:
    """COCO metrics of the model on the validation split (else the test split), appended to
    metrics_history.jsonl; keeps checkpoint_best.pth by ``--best-metric`` and decides an
    early stop by ``--patience``."""
    split, dataset = ("val", run.val_set) if run.val_set is not None else ("test", run.test_set)
    metrics = evaluate(run.bare_model, dataset, _eval_settings(run),
                       evaluators=evaluators_for(run.config.best_metric))
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


def _select(run: Run, value: float) -> bool:
    """Record an evaluation's value in ``run.selection``; True when it is the best so far
    (higher is better). Says why the run stops when ``--patience`` runs out."""
    going = run.selection.stop_reason is None
    improved = run.selection.record(value, run.iteration, run.config.best_metric,
                                    run.config.patience)
    if going and run.selection.stop_reason is not None:
        run.say(run.selection.stop_reason)
    return improved


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
    return evaluated, evaluate(run.bare_model, run.test_set, _eval_settings(run),
                               evaluators=evaluators_for(run.config.best_metric))


def _eval_settings(run: Run) -> EvalSettings:
    """How a run evaluates: its batch size, its device, autocast unless ``--amp off``."""
    return EvalSettings(batch_size=run.config.batch_size, device=run.device,
                        amp=run.amp != "off")


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
