"""Dispatcher of ``python -m maskdla.bench NAME``; see :mod:`maskdla.bench`."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from typing import Optional, Sequence

import torch

from maskdla.bench import BENCHMARKS
from maskdla.cli import run_main
from maskdla.train import TrainingDiverged


def machine_description() -> str:
    """One line naming the machine a benchmark ran on (CPU model and cores, GPU if used)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m maskdla.bench``: a subcommand per row of BENCHMARKS, its
    flags the benchmark module's ``add_arguments``, plus ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m maskdla.bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="benchmark", required=True, metavar="NAME")
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        sub.add_argument("--json", action="store_true",
                         help="print the figures as one JSON object on the last line")
        module.add_arguments(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"machine: {machine_description()}")
    try:
        result = importlib.import_module(BENCHMARKS[args.benchmark]).run(args)
    except TrainingDiverged as error:  # a finding of the benchmark, not a bug: one line
        print(f"maskdla: bench {args.benchmark} stopped: {error}", file=sys.stderr)
        return 1
    if args.json:
        result = dict(result, machine=machine_description())
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    run_main(main)
