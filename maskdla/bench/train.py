"""Training-step benchmark: images/s of maskdla's training loop against a bare torchvision step.

Data: a synthetic corpus written to a temporary folder, one page per image of the timed
run (pages ``--page-width`` px wide, default the short side of ``--size``, so the Dataset
delivers them at the ``--size`` training size), read by the run's Dataset (``train=True``).

Three loops run on the same model (``maskdla.build_model``, same seed, same arguments)
and the same batches (same DataLoader settings: workers, pinning, prefetching, sampler):

* ours: ``maskdla.train.fit(TrainConfig(...))`` itself, everything as a user runs it
  (log every 20 iterations, LR scheduler, progress bar, loss bookkeeping on the device),
  stopped with ``stop_after_iterations`` before any checkpoint or evaluation. Nothing in
  it is replaced: the loop's :class:`maskdla.hooks.TrainHooks` stamp the time each batch
  arrives and how long the loader waited for it;
* bare: ``loss = sum(model(images, targets).values()); opt.zero_grad(); loss.backward();
  clip_grad_norm_(...); opt.step(); lr_scheduler.step()`` after copying the batch to the
  device (plus autocast and, for fp16, a GradScaler): the step of torchvision's
  references/detection with the run's optimizer, per-iteration LR schedule (warmup
  included) and gradient clipping, so that both loops train the same model the same way.
  Without the warmup and the clipping, the bare step at LR 0.02 collapses the RPN within
  a few steps (0 proposals of 4,000 left by the fifth on resnet31 at 256 px) and then
  does a fraction of the work, which once read as a loop overhead of +97-169 %. Every
  step's losses of the two loops are compared (``same_losses_every_step``);
* instrumented: the bare step with the clock read (after ``torch.cuda.synchronize`` on
  CUDA) between data wait, host-to-device copy, forward, backward and optimizer; it only
  splits a step into phases and takes no part in the overhead ratio.

Per repeat ours and bare run ``--warmup`` untimed then ``--steps`` timed iterations, in
alternating order (ours first, then bare first, ...); the window runs from the arrival of
batch ``warmup`` to the arrival of batch ``warmup + steps`` (synchronised on CUDA at both
ends only), so each timed iteration includes the wait for its next batch. Figures are
medians over repeats; ``overhead_percent`` is the median of the per-repeat ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import random
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

import maskdla.train as training
from maskdla.cli import positive_int
from maskdla.config import TrainConfig
from maskdla.data.samplers import EpochBatches
from maskdla.data.sources import run_data
from maskdla.data.synthetic import generate_corpus
from maskdla.errors import InputError
from maskdla.hooks import LOSS_NAMES, TrainHooks
from maskdla.model import build_model_from_config
from maskdla.schedule import plan

DESCRIPTION = ("images/s of maskdla's training loop against a bare torchvision Mask R-CNN step "
               "on the same model and batches: overhead, data wait, phases, peak memory")



@dataclass(frozen=True)
class Variant:
    """One change to the bare step, timed (``--variant``) against the plain bare step."""

    description: str
    channels_last: bool = False
    compile_backbone: bool = False
    optimizer_options: Tuple[Tuple[str, Any], ...] = ()
    cudnn_benchmark: bool = False
    #: mixed precision of the variant's step in place of the run's (``--amp``)
    amp: Optional[str] = None
    #: TrainConfig fields the variant's model is built with (a lighter head, fewer RoIs)
    config_changes: Tuple[Tuple[str, Any], ...] = ()


#: the changes issue 9 asks to keep only where a measured number says so
VARIANTS: Dict[str, Variant] = {
    "none": Variant("no change"),
    "channels-last": Variant("model in channels_last memory format",
                             channels_last=True),
    "compile-backbone": Variant("torch.compile of the backbone", compile_backbone=True),
    "fused-sgd": Variant("SGD(fused=True): the whole update in one kernel",
                         optimizer_options=(("fused", True),)),
    "cudnn-benchmark": Variant("torch.backends.cudnn.benchmark = True (one page size: shapes "
                               "repeat)", cudnn_benchmark=True),
    "bf16": Variant("the step under torch.autocast(bfloat16) (CPUs with AVX-512 BF16 or AMX, "
                    "CUDA cards with bf16)", amp="bf16"),
    "fpn-96": Variant("FPN 96 wide (the RPN, box and mask heads follow it)",
                      config_changes=(("fpn_channels", 96),)),
    "fpn-64": Variant("FPN 64 wide (the RPN, box and mask heads follow it)",
                      config_changes=(("fpn_channels", 64),)),
    "rois-64": Variant("64 RoIs per image for the box head's loss",
                       config_changes=(("rois_per_image", 64),)),
}


def parse_size(text: str) -> Tuple[int, int]:
    """``"800x1333"`` -> (800, 1333): the short and the long side cap, in either order."""
    try:
        first, second = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 800x1333, got {text!r}") from None
    if first < 1 or second < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return first, second


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which training step runs (also ``bench profile``'s)."""
    parser.add_argument("--backbone", default="vovnet19slim", help="backbone name (default vovnet19slim)")
    parser.add_argument("--batch-size", type=positive_int, default=2, help="images per step (default 2)")
    parser.add_argument("--size", type=parse_size, default=(256, 384),
                        help="training size HxW: short side = min(H, W), long side cap = "
                             "max(H, W), as --min-size/--max-size of training (default 256x384)")
    parser.add_argument("--amp", choices=("off", "fp16", "bf16"),
                        help="mixed precision (default as training: bf16 on CUDA where supported, else off)")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per loop and repeat (default 10)")
    parser.add_argument("--warmup", type=positive_int, default=2,
                        help="untimed steps before them (default 2; more with compile-backbone)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr,
                        help="learning rate of both loops (default 0.02, the study's)")
    parser.add_argument("--rois-per-image", type=positive_int, default=TrainConfig.rois_per_image,
                        help="RoIs sampled per image for the box head's loss (default 512, as training)")
    parser.add_argument("--page-width", type=positive_int,
                        help="width of the synthetic pages in px (default: the short side of --size; "
                             "2700 gives the study's scans and makes the loader work harder)")
    parser.add_argument("--threads", type=positive_int,
                        help="torch threads of this process (default: torch's default)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_step_arguments(parser)
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="interleaved repeats of ours and bare; medians are reported (default 3)")
    parser.add_argument("--variant", choices=VARIANTS, default="none",
                        help="also time the bare step with this change, interleaved, against "
                             "bare: " + "; ".join(f"{name}: {variant.description}"
                                                  for name, variant in VARIANTS.items()
                                                  if name != "none"))


# --------------------------------------------------------------------------------------------
# timing the batches of a loop
# --------------------------------------------------------------------------------------------

@dataclass
class BatchClock:
    """Arrival time of each batch and the wait inside ``next()`` for it, for one loop.

    ``sync_at``: batch numbers (0-based) at whose arrival the device is synchronised first
    (the two ends of the timed window), so that the window covers the device's work.
    """

    device: torch.device
    sync_at: Tuple[int, ...] = ()
    arrivals: List[float] = field(default_factory=list)
    arrivals_cpu: List[float] = field(default_factory=list)
    waits: List[float] = field(default_factory=list)

    def arrived(self, wait_s: float) -> None:
        """A batch arrived after ``wait_s`` seconds in ``next()``."""
        if len(self.arrivals) in self.sync_at and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.waits.append(wait_s)
        self.arrivals.append(time.perf_counter())
        self.arrivals_cpu.append(time.process_time())

    def batches(self, loader_iterator: Iterator[Any]) -> Iterator[Any]:
        while True:
            asked = time.perf_counter()
            try:
                batch = next(loader_iterator)
            except StopIteration:
                return
            self.arrived(time.perf_counter() - asked)
            yield batch

    def window(self, start: int, stop: int) -> Tuple[float, float, float]:
        """(seconds from the arrival of batch ``start`` to that of batch ``stop``, seconds
        of that spent waiting for batches ``start + 1 .. stop``, CPU seconds of this
        process's threads in the window)."""
        if len(self.arrivals) <= stop:
            raise RuntimeError(f"the loop delivered {len(self.arrivals)} batches, "
                               f"the timed window needs {stop + 1}")
        return (self.arrivals[stop] - self.arrivals[start], sum(self.waits[start + 1:stop + 1]),
                self.arrivals_cpu[stop] - self.arrivals_cpu[start])


class ClockHooks(TrainHooks):
    """The training loop's seams, watched: each batch's arrival goes to ``clock``, the
    first step's losses are kept (on the device: no sync)."""

    def __init__(self, clock: BatchClock):
        self.clock = clock
        self.losses: List[torch.Tensor] = []

    def batch_ready(self, iteration: int, wait_s: float) -> None:
        self.clock.arrived(wait_s)

    def step_done(self, iteration: int, losses: torch.Tensor) -> None:
        self.losses.append(losses.detach().clone())


# --------------------------------------------------------------------------------------------
# the loops
# --------------------------------------------------------------------------------------------

@dataclass
class LoopResult:
    seconds: float  # timed window
    wait_seconds: float  # of which waiting for batches
    cpu_seconds: float  # CPU time of this process (all its threads, not the workers)
    peak_memory_mib: Optional[float]  # CUDA only
    #: every step's loss terms, LOSS_NAMES order, [steps, 5]
    losses: Optional[torch.Tensor] = None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run_ours(config: TrainConfig, device: torch.device, warmup: int, steps: int) -> LoopResult:
    """``maskdla.train.fit(config)`` for ``warmup + steps + 1`` iterations, timed through
    its hooks."""
    hooks = ClockHooks(BatchClock(device, sync_at=(warmup, warmup + steps)))
    _reset_peak(device)
    quiet = io.StringIO()  # the run's messages and progress bar, out of the table
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        training.fit(config, [hooks])
    return LoopResult(*hooks.clock.window(warmup, warmup + steps), _peak(device),
                      torch.stack(hooks.losses).cpu())


def rebuild(config: TrainConfig, device: torch.device
            ) -> Tuple[torch.nn.Module, Callable[[], DataLoader]]:
    """The model ``maskdla.train.fit(config)`` builds (same function, same seed, fresh
    weights) on ``device``, and a factory of the DataLoaders it builds (same function,
    same batch sampler)."""
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    train_set = run_data(config).train
    model = build_model_from_config(config, len(train_set.classes) + 1,
                                    with_pretrained=True).to(device)
    batches = EpochBatches(train_set, config.batch_size, seed=config.seed)

    def loader() -> DataLoader:
        batches.start(0)
        return training.build_loader(config, train_set, batches, device)

    return model, loader


def _to_device(images: List[torch.Tensor], targets: List[Dict[str, torch.Tensor]],
               device: torch.device) -> Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    return ([image.to(device, non_blocking=True) for image in images],
            [{key: value.to(device, non_blocking=True) for key, value in target.items()}
             for target in targets])


def reference_optimizer(model: torch.nn.Module, config: TrainConfig, train_size: int,
                        optimizer_options: Optional[Dict[str, Any]] = None
                        ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer and LR schedule ``maskdla.train`` builds for ``train_size`` pages on
    one process (``optimizer_options`` on top of the run's SGD settings)."""
    schedule = plan(config.epochs, train_size, config.batch_size, 1, config.lr_steps)
    return training.build_optimizer(model, config, schedule, **(optimizer_options or {}))


def clip_gradients(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    """The run's gradient clipping (``clip_grad_norm``; 0: none)."""
    if config.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(
            [p for group in optimizer.param_groups for p in group["params"]],
            config.clip_grad_norm)


def run_bare(model: torch.nn.Module, loader: DataLoader, config: TrainConfig,
             device: torch.device, amp: str, warmup: int, steps: int,
             optimizer_options: Optional[Dict[str, Any]] = None) -> LoopResult:
    """The plain torchvision training step (with the run's LR schedule and clipping) over
    ``warmup + steps + 1`` batches, timed; ``optimizer_options`` go to SGD on top of the
    run's settings."""
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    optimizer, scheduler = reference_optimizer(model, config, len(loader.dataset),
                                               optimizer_options)
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    clock = BatchClock(device, sync_at=(warmup, warmup + steps))
    step_losses: List[torch.Tensor] = []
    _reset_peak(device)
    model.train()
    for number, (images, targets) in enumerate(clock.batches(iter(loader))):
        images, targets = _to_device(images, targets, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            clip_gradients(optimizer, config)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            clip_gradients(optimizer, config)
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        step_losses.append(torch.stack([losses[name].detach().float()
                                        for name in LOSS_NAMES]))
        if number == warmup + steps:
            break
    return LoopResult(*clock.window(warmup, warmup + steps), _peak(device),
                      torch.stack(step_losses).cpu())


PHASES = ("data wait", "host-to-device copy", "forward", "backward", "optimizer")


def run_instrumented(model: torch.nn.Module, loader: DataLoader, config: TrainConfig,
                     device: torch.device, amp: str, warmup: int, steps: int) -> Dict[str, float]:
    """Median seconds of each of :data:`PHASES` over ``steps`` steps after ``warmup``,
    the step of ``maskdla.train.train_step`` cut into phases (synchronised on CUDA)."""
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    optimizer, scheduler = reference_optimizer(model, config, len(loader.dataset))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    clock = BatchClock(device)

    def stamp() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    timings: Dict[str, List[float]] = {phase: [] for phase in PHASES}
    model.train()
    for number, (images, targets) in enumerate(clock.batches(iter(loader))):
        started = stamp()
        images, targets = _to_device(images, targets, device)
        copied = stamp()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses = model(images, targets)
        loss = sum(losses[name] for name in LOSS_NAMES)
        forward = stamp()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        backward = stamp()
        scaler.unscale_(optimizer)
        clip_gradients(optimizer, config)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        stepped = stamp()
        if number >= warmup:
            for phase, seconds in zip(PHASES, (clock.waits[-1], copied - started,
                                               forward - copied, backward - forward,
                                               stepped - backward)):
                timings[phase].append(seconds)
        if number + 1 == warmup + steps:
            break
    return {phase: statistics.median(values) for phase, values in timings.items()}


def apply_variant(model: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    """The model with ``variant``'s changes to the model applied (in place)."""
    if variant.channels_last:
        model.to(memory_format=torch.channels_last)
    if variant.compile_backbone:
        model.backbone = torch.compile(model.backbone)
    return model


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark`` set to ``enabled`` inside, restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _release() -> None:
    """Collect the last loop's loader (its persistent workers would compete for the CPU)
    and cached device memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------

def check_arguments(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    TrainConfig(backbone=args.backbone).validate()


def step_config(args: argparse.Namespace, corpus: Path, out: Path, device: torch.device,
                amp: str, iterations: int) -> TrainConfig:
    """The run whose step the benchmark times: ``args``' settings on ``corpus``, stopped
    after ``iterations``."""
    return TrainConfig(
        backbone=args.backbone, data=str(corpus), epochs=2, batch_size=args.batch_size,
        lr=args.lr, min_size=[min(args.size)], max_size=max(args.size),
        rois_per_image=args.rois_per_image, amp=amp, workers=args.workers, seed=0,
        out=str(out), energy=False, device=str(device), stop_after_iterations=iterations)


def prepare_step(args: argparse.Namespace) -> Tuple[torch.device, str]:
    """Check the step flags, set ``--threads``; the device and the resolved ``--amp``."""
    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = training.resolve_device(args.device)
    return device, training.resolve_amp(args.amp, device)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device, amp = prepare_step(args)
    short, long = min(args.size), max(args.size)
    page_width = args.page_width or short
    iterations = args.warmup + args.steps + 1  # the batch after the window closes it
    pages = iterations * args.batch_size  # one epoch: no epoch boundary inside the window
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="maskdla-bench-train-") as temporary:
        corpus = generate_corpus(Path(temporary) / "corpus", pages=pages + 1, train=pages,
                                 seed=0, width=page_width)

        def config(repeat: int) -> TrainConfig:
            return step_config(args, corpus, Path(temporary) / f"run{repeat}", device, amp,
                               iterations)

        results: Dict[str, List[LoopResult]] = {"ours": [], "bare": []}
        if args.variant != "none":
            results[args.variant] = []
        for repeat in range(args.repeats):
            order = list(results) if repeat % 2 == 0 else list(reversed(results))
            for loop in order:
                print(f"repeat {repeat + 1}/{args.repeats}: {loop} ...", flush=True)
                if loop == "ours":
                    result = run_ours(config(repeat), device, args.warmup, args.steps)
                else:
                    variant = VARIANTS[loop if loop != "bare" else "none"]
                    model, loader = rebuild(replace(config(0), **dict(variant.config_changes)),
                                            device)
                    model = apply_variant(model, variant)
                    with cudnn_benchmark(variant.cudnn_benchmark):
                        result = run_bare(model, loader(), config(repeat), device,
                                          training.resolve_amp(variant.amp, device)
                                          if variant.amp else amp, args.warmup, args.steps,
                                          dict(variant.optimizer_options))
                    del model, loader
                results[loop].append(result)
                _release()
        print("instrumented step ...", flush=True)
        model, loader = rebuild(config(0), device)
        phases = run_instrumented(model, loader(), config(0), device, amp, args.warmup, args.steps)
        del model, loader
        _release()
    load_after = os.getloadavg()[0]
    return report(args, results, phases, device, amp, (short, long), page_width,
                  (load_before, load_after))


#: the largest relative difference of one step's loss term between the two loops that still
#: counts as the same training (float sums in another order drift a little over steps)
SAME_LOSSES_TOLERANCE = 1e-2


def max_relative_difference(ours: torch.Tensor, bare: torch.Tensor) -> float:
    """The largest ``|ours - bare| / max(|bare|, 1e-4)`` over the steps both loops took
    (``[steps, loss terms]`` each)."""
    steps = min(len(ours), len(bare))
    ours, bare = ours[:steps].double(), bare[:steps].double()
    return float(((ours - bare).abs() / bare.abs().clamp(min=1e-4)).max())


def report(args: argparse.Namespace, results: Dict[str, List[LoopResult]],
           phases: Dict[str, float], device: torch.device, amp: str, size: Tuple[int, int],
           page_width: int, load: Tuple[float, float]) -> Dict[str, Any]:
    """Print the table; return the figures."""
    def per_step(loop: str) -> float:
        return statistics.median(result.seconds for result in results[loop]) / args.steps

    ratios = [ours.seconds / bare.seconds for ours, bare in zip(results["ours"], results["bare"])]
    overhead = 100 * (statistics.median(ratios) - 1)
    # CPU time of the main process: less sensitive than wall time to other jobs on the machine
    cpu_ratios = [ours.cpu_seconds / bare.cpu_seconds
                  for ours, bare in zip(results["ours"], results["bare"])]
    cpu_overhead = 100 * (statistics.median(cpu_ratios) - 1)
    wait_shares = [100 * result.wait_seconds / result.seconds for result in results["ours"]]
    bare_wait_shares = [100 * result.wait_seconds / result.seconds for result in results["bare"]]
    losses_ours, losses_bare = results["ours"][0].losses, results["bare"][0].losses
    same_first_losses = bool(torch.allclose(losses_ours[0], losses_bare[0], rtol=1e-3, atol=1e-5))
    loss_difference = max_relative_difference(losses_ours, losses_bare)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    print(f"\n{args.backbone}, batch {args.batch_size}, training size {size[0]}x{size[1]} "
          f"(pages {page_width} px wide), amp {amp}, device {device}, {args.workers} workers, "
          f"{torch.get_num_threads()} torch threads, rois/image {args.rois_per_image}; "
          f"{args.warmup} warmup + {args.steps} timed steps x {args.repeats} interleaved repeats, "
          f"medians; 1-min load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(f"{'loop':<18} {'s/step':>8} {'images/s':>9} {'data wait %':>12} {'CUDA MiB':>9}")
    for loop, loop_results in results.items():
        peak = [r.peak_memory_mib for r in loop_results if r.peak_memory_mib is not None]
        shares = [100 * r.wait_seconds / r.seconds for r in loop_results]
        print(f"{loop:<18} {per_step(loop):8.3f} {args.batch_size / per_step(loop):9.2f} "
              f"{statistics.median(shares):12.2f} {f'{max(peak):.0f}' if peak else '-':>9}")
    print(f"overhead of ours over bare: {overhead:+.2f} % (per repeat: "
          f"{', '.join(f'{100 * (r - 1):+.1f}' for r in ratios)}); data wait in ours: "
          f"{statistics.median(wait_shares):.2f} %; first-step losses identical: {same_first_losses}; "
          f"every step's losses within {100 * loss_difference:.3g} % (the loops train alike: "
          f"{loss_difference <= SAME_LOSSES_TOLERANCE})")
    print(f"in CPU seconds of this process: {cpu_overhead:+.2f} % (per repeat: "
          f"{', '.join(f'{100 * (r - 1):+.1f}' for r in cpu_ratios)})")
    _print_phases(phases, device, results, peak_rss)

    figures: Dict[str, Any] = {
        "backbone": args.backbone, "batch_size": args.batch_size, "size": list(size),
        "page_width": page_width, "amp": amp, "device": str(device), "workers": args.workers,
        "threads": torch.get_num_threads(), "rois_per_image": args.rois_per_image,
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "images_per_s": round(args.batch_size / per_step("ours"), 4),
        "bare_images_per_s": round(args.batch_size / per_step("bare"), 4),
        "seconds_per_step": round(per_step("ours"), 5),
        "bare_seconds_per_step": round(per_step("bare"), 5),
        "overhead_percent": round(overhead, 3),
        "overhead_percent_per_repeat": [round(100 * (r - 1), 3) for r in ratios],
        "cpu_overhead_percent": round(cpu_overhead, 3),
        "cpu_overhead_percent_per_repeat": [round(100 * (r - 1), 3) for r in cpu_ratios],
        "seconds_per_step_per_repeat": {loop: [round(r.seconds / args.steps, 5) for r in rs]
                                        for loop, rs in results.items()},
        "data_wait_percent": round(statistics.median(wait_shares), 3),
        "bare_data_wait_percent": round(statistics.median(bare_wait_shares), 3),
        "phases_s": {phase: round(seconds, 5) for phase, seconds in phases.items()},
        "same_first_step_losses": same_first_losses,
        "max_relative_loss_difference": round(loss_difference, 6),
        "same_losses_every_step": loss_difference <= SAME_LOSSES_TOLERANCE,
        "peak_rss_mib": round(peak_rss, 1),
        "load_average": [round(load[0], 2), round(load[1], 2)],
    }
    if device.type == "cuda":
        figures["peak_memory_mib"] = round(max(r.peak_memory_mib for r in results["ours"]), 1)
        figures["bare_peak_memory_mib"] = round(max(r.peak_memory_mib for r in results["bare"]), 1)
    if args.variant != "none":
        figures.update(_variant_figures(args.variant, results))
    return figures


def _print_phases(phases: Dict[str, float], device: torch.device,
                  results: Dict[str, List[LoopResult]], peak_rss: float) -> None:
    """The instrumented step's phases and the peak memory."""
    step_sum = sum(phases.values())
    print(f"\ninstrumented step (median s per phase{', synchronised' if device.type == 'cuda' else ''}):")
    for phase, seconds in phases.items():
        print(f"  {phase:<20} {seconds:8.4f}  {100 * seconds / step_sum:5.1f} %")
    print(f"  {'sum':<20} {step_sum:8.4f}")
    memory = (f"peak CUDA memory allocated (ours): {max(r.peak_memory_mib for r in results['ours']):.0f} MiB"
              if device.type == "cuda" else f"peak process RSS: {peak_rss:.0f} MiB")
    print(memory)


def _variant_figures(variant: str, results: Dict[str, List[LoopResult]]) -> Dict[str, Any]:
    """Print and return the variant's speed-up over the bare step, per repeat."""
    speedups = [bare.seconds / changed.seconds - 1
                for bare, changed in zip(results["bare"], results[variant])]
    print(f"{variant} on the bare step: {100 * statistics.median(speedups):+.2f} % "
          f"images/s (per repeat: {', '.join(f'{100 * s:+.1f}' for s in speedups)})")
    return {"variant": variant,
            "variant_speedup_percent": round(100 * statistics.median(speedups), 3)}
