"""``python -m maskdla.experiments run|status FILE``: the command line."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskdla.cli import positive_float, positive_int
from maskdla.errors import InputError
from maskdla.experiments.grid import (MIN_SCALED_SIZE, Experiment, read_experiment_file,
                                      resolve_experiments, tomllib)
from maskdla.experiments.launchers import (SlurmSpec, describe_local, describe_slurm,
                                           run_local, submit_slurm)
from maskdla.experiments.status import print_status

LAUNCHERS = ("local", "slurm")


def _parse_assignment(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE``: VALUE read as a TOML value (450, 0.02, true, [640, 800]), else kept
    as a string (data/vorau253)."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if tomllib is not None:
        try:
            return key.strip(), tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            pass
    return key.strip(), value


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="experiment file (TOML)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this run (repeat or comma-separate for several)")
    parser.add_argument("--scale", type=positive_float, metavar="F",
                        help="smoke run: epochs, warmup and image size times F (images at "
                             f"least {MIN_SCALED_SIZE} px), into <out_dir>-scale<F>; "
                             "e.g. 0.01 for a CPU check of the wiring")
    parser.add_argument("--set", dest="overrides", action="append", type=_parse_assignment,
                        default=[], metavar="KEY=VALUE",
                        help="set a TrainConfig field on every run, e.g. --set "
                             "data=/scratch/vorau253 or --set workers=8 (repeatable)")
    shape = parser.add_argument_group("the job of each run (default: [launcher] of FILE)")
    shape.add_argument("--gpus-per-node", "--nproc", dest="gpus_per_node", type=positive_int,
                       metavar="N", help="GPUs (processes) per node and run; N > 1 starts "
                                         "torchrun (default 1); total_batch_size is split "
                                         "over nodes x N")
    shape.add_argument("--nodes", type=positive_int, metavar="N",
                       help="machines per run (slurm only; default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.experiments",
        description="Run the study's grids of training runs from experiment files "
                    "(experiments/*.toml), here or on a SLURM cluster.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="train (local) or submit (slurm) every run of an experiment file",
        description="Train every run of an experiment file in turn (--launcher local) or "
                    "submit each as a SLURM job (--launcher slurm). Finished runs "
                    "(summary.json) are skipped, unfinished ones resume from their last "
                    "checkpoint. Exit code 1 if a local run failed.")
    _add_selection(run)
    run.add_argument("--launcher", choices=LAUNCHERS, default="local",
                     help="local: one run after the other on this machine (default); "
                          "slurm: one job per run through submitit (pip install "
                          "'maskdla[slurm]')")
    run.add_argument("--dry-run", action="store_true",
                     help="print each run's schedule and command (and with slurm its sbatch "
                          "options); train and submit nothing")
    slurm = run.add_argument_group("slurm (override [launcher] of FILE)")
    slurm.add_argument("--cpus-per-task", type=positive_int, metavar="N",
                       help="CPU cores per node (one task per node)")
    slurm.add_argument("--mem-gb", type=positive_float, metavar="GB", help="memory per node")
    slurm.add_argument("--time", metavar="MIN", help="time limit: minutes or HH:MM:SS; a "
                       "run that needs longer is requeued and resumes (default 240)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--account", help="SLURM account")
    slurm.add_argument("--qos", help="SLURM quality of service")
    slurm.add_argument("--max-requeues", type=int, metavar="N",
                       help="requeues after time limits or preemptions (default 3)")
    slurm.add_argument("--sbatch", dest="sbatch", action="append", type=_parse_assignment,
                       default=[], metavar="OPTION=VALUE",
                       help="any other sbatch option, e.g. --sbatch exclusive=true "
                            "--sbatch mail-type=END (repeatable)")
    status = commands.add_parser(
        "status", help="one line per run: not started, queued, running, finished, failed",
        description="Where each run of an experiment file stands, from its run folder "
                    "(and squeue, where there is one).")
    _add_selection(status)
    return parser


def _slurm_flags(args: argparse.Namespace) -> Dict[str, Any]:
    names = ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "time", "partition",
             "account", "qos", "max_requeues")
    flags = {name: getattr(args, name, None) for name in names}
    flags["sbatch"] = dict(getattr(args, "sbatch", []))
    return flags


def _resolve(args: argparse.Namespace, launcher: str) -> Tuple[List[Experiment], SlurmSpec]:
    only = [name.strip() for item in (args.only or []) for name in item.split(",")
            if name.strip()]
    table = read_experiment_file(args.file).get("launcher", {})
    spec = SlurmSpec.from_sources(table, _slurm_flags(args), args.file)
    if launcher == "local" and spec.nodes > 1:
        raise InputError(f"--launcher local runs on this machine; nodes = {spec.nodes} "
                         "needs --launcher slurm", args.file)
    experiments = resolve_experiments(args.file, nproc=spec.world_size, scale=args.scale,
                                      only=only, overrides=dict(args.overrides),
                                      nodes=spec.nodes)
    return experiments, spec


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        experiments, _ = _resolve(args, "slurm")
        return print_status(experiments)
    experiments, spec = _resolve(args, args.launcher)
    if args.dry_run:
        for number, experiment in enumerate(experiments, start=1):
            text = describe_slurm(experiment, spec) if args.launcher == "slurm" else \
                describe_local(experiment)
            print(f"[{number}/{len(experiments)}] {text}")
        return 0
    if args.launcher == "slurm":
        submit_slurm(experiments, spec)
        return 0
    return run_local(experiments)
