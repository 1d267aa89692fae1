"""Where a training step goes: ``torch.profiler`` over the bare step, cut by model part.

The step is :mod:`maskdla.bench.train`'s bare step (the run's model, batches, SGD, LR
schedule and clipping) on the same synthetic corpus. Each part of the torchvision Mask
R-CNN (the transform, the backbone's body and FPN, the RPN's head and the rest of the RPN,
the RoI heads' pools, heads and predictors, and the rest of the RoI heads: sampling and
the losses) runs inside a ``record_function`` span opened by forward hooks. An operator's
own (self) time goes to the innermost span around it; a backward function
(``autograd::engine::evaluate_function: ...``) goes to the part whose forward operator has
the same autograd sequence number, so that the backward of the mask head is counted as
the mask head's. What no part owns is counted apart (the sum of the losses' graph, the
gradient accumulation). The optimizer row holds zero_grad, clipping, SGD and the LR
scheduler; the data row the wait for the next batch.

The profiler's own cost per operator makes profiled steps slower than plain ones; the
same number of plain steps is timed first, in the same process, and both are printed.
Operators are also ranked by their own time over the whole window, with the share spent in
allocation, filling and copying (``aten::empty``, ``fill_``, ``copy_``, ...).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

from maskdla.bench.train import (PHASES, add_step_arguments, clip_gradients, prepare_step,
                                 rebuild, reference_optimizer, step_config, _to_device)
from maskdla.config import TrainConfig
from maskdla.data.synthetic import generate_corpus
from maskdla.hooks import LOSS_NAMES

DESCRIPTION = ("where a training step goes: torch.profiler over the bare step, by model part "
               "(backbone, FPN, RPN, RoI box and mask heads, losses), backward per part, "
               "optimizer, data wait, and the operators that take the time")

#: the model parts, by module name in torchvision's MaskRCNN, with the row they print as
PARTS: Tuple[Tuple[str, str], ...] = (
    ("transform", "transform (normalise, batch)"),
    ("backbone.body", "backbone body"),
    ("backbone.fpn", "FPN"),
    ("rpn.head", "RPN head (convs)"),
    ("rpn", "RPN anchors, proposals, NMS, loss"),
    ("roi_heads.box_roi_pool", "box RoIAlign"),
    ("roi_heads.box_head", "box head (2 FC)"),
    ("roi_heads.box_predictor", "box predictor"),
    ("roi_heads.mask_roi_pool", "mask RoIAlign"),
    ("roi_heads.mask_head", "mask head (convs)"),
    ("roi_heads.mask_predictor", "mask predictor (deconv)"),
    ("roi_heads", "RoI sampling, box and mask losses"),
)
SPAN_PREFIX = "maskdla.part::"
#: operators that allocate, fill or copy memory rather than compute
MEMORY_OPERATORS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros", "aten::zeros_like",
    "aten::zero_", "aten::fill_", "aten::ones", "aten::ones_like", "aten::full",
    "aten::copy_", "aten::clone", "aten::_to_copy", "aten::to", "aten::contiguous",
    "aten::resize_", "aten::cat", "aten::stack", "aten::new_zeros", "aten::new_empty",
    "aten::new_full", "aten::as_strided_"})
UNOWNED = "no part (loss sum, gradient accumulation)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_step_arguments(parser)
    parser.add_argument("--top", type=int, default=15,
                        help="operators listed by their own time (default 15)")
    parser.add_argument("--trace", type=Path,
                        help="also write the profiled steps as a Chrome trace (JSON) here")


def add_part_spans(model: torch.nn.Module) -> List[Any]:
    """Forward hooks that run each part of :data:`PARTS` inside a ``record_function`` span
    named ``SPAN_PREFIX + module name``; returns the hook handles."""
    modules = dict(model.named_modules())
    handles: List[Any] = []
    for name, _ in PARTS:
        if name not in modules:
            continue
        open_spans: List[Any] = []

        def enter(module: torch.nn.Module, inputs: Any, name: str = name,
                  open_spans: List[Any] = open_spans) -> None:
            span = record_function(SPAN_PREFIX + name)
            span.__enter__()
            open_spans.append(span)

        def leave(module: torch.nn.Module, inputs: Any, output: Any,
                  open_spans: List[Any] = open_spans) -> None:
            open_spans.pop().__exit__(None, None, None)

        handles += [modules[name].register_forward_pre_hook(enter),
                    modules[name].register_forward_hook(leave)]
    return handles


def steps(model: torch.nn.Module, loader: DataLoader, config: TrainConfig,
          device: torch.device, amp: str, count: int) -> Iterator[float]:
    """``count`` bare training steps, each phase in a ``record_function`` span; yields
    each step's seconds (the wait for its batch included)."""
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    optimizer, scheduler = reference_optimizer(model, config, len(loader.dataset))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    batches = iter(loader)
    model.train()
    for _ in range(count):
        started = time.perf_counter()
        with record_function("maskdla.phase::data wait"):
            images, targets = next(batches)
        with record_function("maskdla.phase::host-to-device copy"):
            images, targets = _to_device(images, targets, device)
        with record_function("maskdla.phase::forward"):
            with torch.autocast(device.type, dtype=autocast_dtype,
                                enabled=autocast_dtype is not None):
                losses = model(images, targets)
            loss = sum(losses[name] for name in LOSS_NAMES)
        with record_function("maskdla.phase::backward"):
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
        with record_function("maskdla.phase::optimizer"):
            scaler.unscale_(optimizer)
            clip_gradients(optimizer, config)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield time.perf_counter() - started


def _span(event: Any, prefix: str) -> Optional[str]:
    """The innermost span named ``prefix...`` around ``event`` (itself included)."""
    while event is not None:
        if event.name.startswith(prefix):
            return event.name[len(prefix):]
        event = event.cpu_parent
    return None


def attribute(events: Any) -> Dict[str, Any]:
    """Milliseconds (summed over the profiled steps) per part and direction, per phase, and
    per operator, from the profiler's events."""
    forward: Dict[str, float] = defaultdict(float)
    backward: Dict[str, float] = defaultdict(float)
    phases: Dict[str, float] = defaultdict(float)
    operators: Dict[str, float] = defaultdict(float)
    part_of_sequence: Dict[Tuple[int, int], str] = {}
    backward_functions = []
    for event in events:
        if event.name.startswith("maskdla.phase::"):
            phases[event.name.split("::", 1)[1]] += event.cpu_time_total / 1e3
            continue
        if event.name.startswith(SPAN_PREFIX):
            continue
        if event.name.startswith("autograd::engine::evaluate_function:"):
            backward_functions.append(event)
            continue
        part = _span(event, SPAN_PREFIX)
        if part is not None and event.sequence_nr >= 0:
            part_of_sequence[(event.thread, event.sequence_nr)] = part
        operators[event.name] += event.self_cpu_time_total / 1e3
        if _span(event, "maskdla.phase::") == "forward":
            forward[part or UNOWNED] += event.self_cpu_time_total / 1e3
    for event in backward_functions:
        # the backward of a CPU graph runs on the thread that called backward(); its
        # sequence numbers are those of the forward thread
        thread = event.fwd_thread if getattr(event, "fwd_thread", None) else event.thread
        part = part_of_sequence.get((thread, event.sequence_nr), UNOWNED)
        backward[part] += event.cpu_time_total / 1e3
    attributed = sum(backward.values())
    backward[UNOWNED] += max(0.0, phases["backward"] - attributed)
    return {"forward": dict(forward), "backward": dict(backward), "phases": dict(phases),
            "operators": dict(operators)}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    device, amp = prepare_step(args)
    count = args.warmup + 2 * args.steps
    pages = count * args.batch_size
    with tempfile.TemporaryDirectory(prefix="maskdla-bench-profile-") as temporary:
        corpus = generate_corpus(Path(temporary) / "corpus", pages=pages + 1, train=pages,
                                 seed=0, width=args.page_width or min(args.size))
        config = step_config(args, corpus, Path(temporary) / "run", device, amp, count)
        model, loader_factory = rebuild(config, device)
        handles = add_part_spans(model)
        timed = steps(model, loader_factory(), config, device, amp, count)
        plain = [next(timed) for _ in range(args.warmup + args.steps)][args.warmup:]
        with profile(activities=[ProfilerActivity.CPU]
                     + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])) as profiler:
            profiled = list(timed)
        for handle in handles:
            handle.remove()
        if args.trace:
            profiler.export_chrome_trace(str(args.trace))
        shares = attribute(profiler.events())
    return report(args, shares, plain, profiled, device, amp)


def report(args: argparse.Namespace, shares: Dict[str, Any], plain: List[float],
           profiled: List[float], device: torch.device, amp: str) -> Dict[str, Any]:
    """Print the tables (milliseconds per step); return the figures."""
    per_step = 1.0 / args.steps
    forward, backward, phases = shares["forward"], shares["backward"], shares["phases"]
    step_ms = sum(phases.get(phase, 0.0) for phase in PHASES) * per_step
    rows = [(label, forward.get(name, 0.0) * per_step, backward.get(name, 0.0) * per_step)
            for name, label in PARTS]
    rows.append((UNOWNED, forward.get(UNOWNED, 0.0) * per_step,
                 backward.get(UNOWNED, 0.0) * per_step))
    rows += [(phase, phases.get(phase, 0.0) * per_step, 0.0)
             for phase in ("data wait", "host-to-device copy", "optimizer")]
    print(f"\n{args.backbone}, batch {args.batch_size}, training size {min(args.size)}x"
          f"{max(args.size)}, amp {amp}, device {device}, {torch.get_num_threads()} torch "
          f"threads, rois/image {args.rois_per_image}; {args.steps} profiled steps after "
          f"{args.steps} plain ones ({args.warmup} warmup)")
    print(f"plain step {statistics.median(plain):.3f} s, profiled step "
          f"{statistics.median(profiled):.3f} s (medians; the profiler's own cost is the "
          f"difference)")
    print(f"{'part':<40} {'forward ms':>10} {'backward ms':>11} {'total ms':>9} {'share':>6}")
    for label, forward_ms, backward_ms in rows:
        total = forward_ms + backward_ms
        print(f"{label:<40} {forward_ms:10.1f} {backward_ms:11.1f} {total:9.1f} "
              f"{100 * total / step_ms:5.1f}%")
    print(f"{'step (sum of the phases)':<40} {'':>10} {'':>11} {step_ms:9.1f}")
    operators = sorted(shares["operators"].items(), key=lambda item: -item[1])
    operator_ms = sum(ms for _, ms in operators)
    memory_ms = sum(ms for name, ms in operators if name in MEMORY_OPERATORS)
    print(f"\noperators by own time (ms per step; {100 * memory_ms / operator_ms:.1f} % of all "
          f"operator time allocates, fills or copies):")
    for name, ms in operators[:args.top]:
        print(f"  {name:<60} {ms * per_step:9.1f}  {100 * ms / operator_ms:5.1f} %")
    return {
        "backbone": args.backbone, "batch_size": args.batch_size, "size": list(args.size),
        "amp": amp, "device": str(device), "threads": torch.get_num_threads(),
        "rois_per_image": args.rois_per_image, "steps": args.steps,
        "plain_seconds_per_step": round(statistics.median(plain), 5),
        "profiled_seconds_per_step": round(statistics.median(profiled), 5),
        "step_ms": round(step_ms, 2),
        "parts_ms": {label: {"forward": round(f, 2), "backward": round(b, 2)}
                     for label, f, b in rows},
        "memory_operator_percent": round(100 * memory_ms / operator_ms, 2),
        "top_operators_ms": {name: round(ms * per_step, 2) for name, ms in operators[:args.top]},
    }
