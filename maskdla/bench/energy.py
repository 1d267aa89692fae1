"""Energy meter overhead: training-step time with and without the EnergyMeter thread.

The workload is a Mask R-CNN train step (maskdla.model.build_model, random 2-image batch) or
a matrix-multiply stand-in as short as a GPU training step (the default on CPU). Blocks of steps (each at least
``--block-seconds`` long, so the meter samples several times inside) run with the meter on
and off, interleaved (on/off, then off/on, ...) so drift cancels; the overhead is the median
over block pairs of (median step with meter / median step without - 1). On a busy
machine that ratio is noise; two direct figures bound the overhead instead: the CPU time the
meter thread used over the metered wall time, and the time of one sample over the interval.

``--gpu-check`` instead runs the real-GPU check of docs/energy.md: a matrix-multiply load for
``--duration`` seconds on cuda:0 with the meter on, and the NVML energy counter against the
trapezoidal integral of the sampled power.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from maskdla.cli import non_negative_float, positive_int
from maskdla.energy import JOULES_PER_KWH, EnergyMeter
from maskdla.errors import InputError

DESCRIPTION = ("overhead of the EnergyMeter thread on a training step (interleaved blocks, "
               "medians); --gpu-check: NVML energy counter vs integrated power on a GPU")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=1.0,
                        help="meter sampling interval in seconds (default 1.0, the default of "
                             "EnergyMeter and of the study)")
    parser.add_argument("--workload", choices=("auto", "maskrcnn", "matmul"), default="auto",
                        help="what one step is: a Mask R-CNN train step or a matrix-multiply "
                             "stand-in of about 0.25 s on a 2-core CPU, as short as a GPU "
                             "training step; auto (default) = maskrcnn on a GPU, matmul on CPU, "
                             "where a Mask R-CNN step takes 10-20 s and would hide any overhead")
    parser.add_argument("--backbone", default="resnet50",
                        help="backbone of the Mask R-CNN workload (default resnet50)")
    parser.add_argument("--size", type=positive_int, default=256,
                        help="side of the square training images, px (default 256)")
    parser.add_argument("--device", default=None,
                        help="device of the workload (default: cuda if available, else cpu)")
    parser.add_argument("--pairs", type=positive_int, default=6,
                        help="pairs of blocks (one with, one without the meter; default 6)")
    parser.add_argument("--block-seconds", type=non_negative_float, default=5.0,
                        help="minimum length of one block of steps in seconds (default 5)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (default: torch's default, all cores)")
    parser.add_argument("--gpu-check", action="store_true",
                        help="run the real-GPU check instead: NVML energy counter against "
                             "integrated sampled power under a matrix-multiply load on cuda:0")
    parser.add_argument("--duration", type=non_negative_float, default=60.0,
                        help="seconds of matrix-multiply load for --gpu-check (default 60)")


# --------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------

def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def maskrcnn_step(backbone: str, size: int, device: torch.device) -> Callable[[], None]:
    """One SGD step of Mask R-CNN on a fixed batch of two random size x size images, each with
    two boxes and their masks."""
    from maskdla.model import build_model  # only this workload needs the model

    model = build_model(backbone, num_classes=4, min_size=size, max_size=size).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(2):
        images.append(torch.rand(3, size, size, generator=generator).to(device))
        boxes = torch.tensor([[0.1, 0.1, 0.6, 0.3], [0.2, 0.5, 0.9, 0.8]]) * size
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.round().long().tolist()):
            mask[y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes.to(device), "labels": torch.tensor([1, 2], device=device),
                        "masks": masks.to(device)})

    def step() -> None:
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        _synchronize(device)

    return step


def matmul_step(device: torch.device, size: int = 1024, repeats: int = 4) -> Callable[[], None]:
    """``repeats`` products of two size x size float32 matrices."""
    left = torch.rand(size, size, device=device)
    right = torch.rand(size, size, device=device)

    def step() -> None:
        for _ in range(repeats):
            torch.mm(left, right)
        _synchronize(device)

    return step


# --------------------------------------------------------------------------------------------
# overhead
# --------------------------------------------------------------------------------------------

def time_block(step: Callable[[], None], seconds: float) -> List[float]:
    """Run ``step`` until ``seconds`` have passed (at least 3 times); the time of each step."""
    times: List[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    return times


def sample_cost_s(interval: float, repeats: int = 200) -> Dict[str, Any]:
    """Median time of one meter sample on this machine, and what the meter measures here."""
    meter = EnergyMeter(interval=interval)
    with meter:
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            meter.sample()
            times.append(time.perf_counter() - begin)
    summary = meter.summary()
    return {"sample_s": statistics.median(times), "method": summary["method"],
            # measured means RAPL: without it cpu_energy_kwh holds the CPU-seconds estimate
            "gpus": len(summary["gpus"]), "cpu_energy_measured": summary["cpu_method"] == "rapl",
            "gpu_unavailable_reason": summary["gpu_unavailable_reason"]}


def run_overhead(args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    workload_name = args.workload
    if workload_name == "auto":
        workload_name = "maskrcnn" if device.type == "cuda" else "matmul"
    if workload_name == "maskrcnn":
        step = maskrcnn_step(args.backbone, args.size, device)
        workload = f"Mask R-CNN {args.backbone} train step, 2 images {args.size}x{args.size}"
    else:
        step = matmul_step(device)
        workload = "4 x matmul 1024x1024 float32"
    for _ in range(3):
        step()  # warm-up: allocator, kernel selection
    ratios, with_meter, without_meter = [], [], []
    meter_cpu_s = metered_s = 0.0
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 == 0 else (False, True)
        medians = {}
        for metered in order:
            if metered:
                with EnergyMeter(interval=args.interval) as meter:
                    times = time_block(step, args.block_seconds)
                meter_cpu_s += meter.summary()["meter_cpu_s"] or 0.0
                metered_s += meter.summary()["duration_s"]
            else:
                times = time_block(step, args.block_seconds)
            medians[metered] = statistics.median(times)
        with_meter.append(medians[True])
        without_meter.append(medians[False])
        ratios.append(medians[True] / medians[False])
    sample = sample_cost_s(args.interval)
    result = {
        "workload": workload, "device": str(device), "interval_s": args.interval,
        "pairs": args.pairs, "block_seconds": args.block_seconds,
        "step_s_without_meter": statistics.median(without_meter),
        "step_s_with_meter": statistics.median(with_meter),
        "overhead_percent": (statistics.median(ratios) - 1) * 100,
        "overhead_percent_min": (min(ratios) - 1) * 100,
        "overhead_percent_max": (max(ratios) - 1) * 100,
        "meter_thread_cpu_percent": meter_cpu_s / metered_s * 100,
        "sample_ms": sample["sample_s"] * 1000,
        "sample_share_of_interval_percent": sample["sample_s"] / args.interval * 100,
        "meter_method": sample["method"], "meter_gpus": sample["gpus"],
        "meter_cpu_energy_measured": sample["cpu_energy_measured"],
    }
    print(f"workload: {workload} on {device}; meter interval {args.interval:g} s; "
          f"meter here: method {sample['method']}, {sample['gpus']} GPU(s)"
          + (f" ({sample['gpu_unavailable_reason']})" if sample["gpu_unavailable_reason"] else "")
          + f", CPU energy {'measured' if sample['cpu_energy_measured'] else 'not readable'}")
    print(f"{'pair':>4} {'step s, meter on':>17} {'step s, meter off':>18} {'ratio':>7}")
    for pair, (on, off, ratio) in enumerate(zip(with_meter, without_meter, ratios)):
        print(f"{pair:>4} {on:>17.4f} {off:>18.4f} {ratio:>7.4f}")
    print(f"overhead (median of {args.pairs} pairs): {result['overhead_percent']:+.2f} % "
          f"(pairs range {result['overhead_percent_min']:+.2f} .. "
          f"{result['overhead_percent_max']:+.2f} %)")
    print(f"meter thread CPU time: {result['meter_thread_cpu_percent']:.4f} % of the metered "
          f"wall time")
    print(f"one sample: {result['sample_ms']:.3f} ms = "
          f"{result['sample_share_of_interval_percent']:.4f} % of the interval")
    return result


# --------------------------------------------------------------------------------------------
# real-GPU check
# --------------------------------------------------------------------------------------------

def run_gpu_check(args: argparse.Namespace) -> Dict[str, Any]:
    """Counter vs integrated power over ``args.duration`` s of matmul load on cuda:0."""
    if not torch.cuda.is_available():
        raise InputError("--gpu-check needs a CUDA GPU; none is available here")
    device = torch.device("cuda", 0)
    step = matmul_step(device, size=8192, repeats=1)
    step()  # warm-up
    steps = 0
    with EnergyMeter(interval=args.interval, devices=None) as meter:
        started = time.perf_counter()
        while time.perf_counter() - started < args.duration:
            step()
            steps += 1
    summary = meter.summary()
    if not summary["gpus"]:
        raise InputError(f"--gpu-check: the meter sees no GPU: "
                         f"{summary['gpu_unavailable_reason']}")
    print(f"{steps} matmuls 8192x8192 float32 on cuda:0 in {summary['duration_s']:.1f} s, "
          f"meter interval {args.interval:g} s, {summary['samples']} samples")
    print(f"{'gpu':>3} {'name':<28} {'method':<14} {'energy J':>10} {'power-integral J':>17} "
          f"{'diff %':>7} {'mean W':>7} {'peak MiB':>9} {'util %':>7}")
    gpus = []
    for gpu in summary["gpus"]:
        energy_j = gpu["energy_kwh"] * JOULES_PER_KWH
        integral_j = gpu["sampled_power_energy_kwh"] * JOULES_PER_KWH
        difference: Optional[float] = ((integral_j / energy_j - 1) * 100
                                       if gpu["method"] == "counter" and energy_j > 0 else None)
        gpus.append({"index": gpu["index"], "name": gpu["name"], "method": gpu["method"],
                     "energy_j": energy_j, "power_integral_j": integral_j,
                     "integral_vs_counter_percent": difference,
                     "mean_power_w": gpu["mean_power_w"], "peak_memory_mib": gpu["peak_memory_mib"],
                     "mean_utilization": gpu["mean_utilization"], "errors": gpu["errors"]})
        print(f"{gpu['index']:>3} {gpu['name'][:28]:<28} {gpu['method']:<14} {energy_j:>10.1f} "
              f"{integral_j:>17.1f} "
              f"{'n/a' if difference is None else format(difference, '+.2f'):>7} "
              f"{gpu['mean_power_w'] or 0:>7.1f} {gpu['peak_memory_mib'] or 0:>9.0f} "
              f"{gpu['mean_utilization'] or 0:>7.1f}")
    return {"duration_s": summary["duration_s"], "interval_s": args.interval,
            "matmuls": steps, "samples": summary["samples"], "gpus": gpus}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.interval > 0:
        raise InputError(f"--interval must be positive, got {args.interval}")
    if args.gpu_check:
        return run_gpu_check(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return run_overhead(args, device)
