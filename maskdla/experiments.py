"""Run a grid of training runs from a TOML file: ``python -m maskdla.experiments run FILE``.

An experiment file (experiments/*.toml) holds shared defaults and a list of runs; each run
is one :class:`maskdla.train.TrainConfig` (any field may be set, in defaults or per run)::

    description = "Epochs: 115 to 900 at batch 2"
    study_table = "STUDY.md, The parameter study: Epochs"
    out_dir = "runs/epochs"            # optional; default runs/<file stem>

    [defaults]
    backbone = "resnet50"
    data = "data/vorau253"
    total_batch_size = 2               # the study's batch: over all GPUs together
    epochs = 450

    [[runs]]
    name = "e225"                      # the run folder: <out_dir>/<name>
    epochs = 225

``total_batch_size`` (not a TrainConfig field) is the batch over all processes, as the
study counts it (detectron2's IMS_PER_BATCH); the runner passes ``--batch-size
total / nproc`` so a file means the same schedule on 1 GPU or 2. ``batch_size`` instead
sets the per-process batch directly. Relative paths are relative to the folder you run
from. Each run goes to ``python -m maskdla.train ...`` (under ``torch.distributed.run``
= torchrun when ``--nproc`` > 1). A run whose folder holds checkpoint_final.pth is
skipped; one with only checkpoint_last.pth is resumed (``--resume auto``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskdla.cli import positive_float, positive_int, run_main
from maskdla.data.coco import collect_xml
from maskdla.errors import InputError
from maskdla.schedule import SchedulePlan, plan
from maskdla.train import TrainConfig
from maskdla.train import build_parser as build_train_parser

try:  # Python 3.11+
    import tomllib
except ImportError:  # pragma: no cover - Python 3.9/3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ImportError:
        tomllib = None  # type: ignore[assignment]

#: Train pages of VORAU-253 (128 train / 100 test), assumed by --dry-run when the run's
#: data cannot be counted.
STUDY_TRAIN_SIZE = 128
#: Top-level keys of an experiment file.
FILE_KEYS = ("description", "study_table", "out_dir", "defaults", "runs")
#: Keys of a run entry that are the runner's, not TrainConfig fields.
RUNNER_KEYS = ("name", "total_batch_size")
#: Smallest image side a --scale smoke run shrinks to (the FPN's coarsest level is 1/64).
MIN_SCALED_SIZE = 64
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass
class Experiment:
    """One run of an experiment file, resolved.

    Attributes:
        name: the run's name (its folder under the file's out_dir).
        config: TrainConfig fields set for this run (defaults merged, out, per-process
            batch_size); fields not set keep TrainConfig's defaults.
        world_size: processes (GPUs) it runs on.
    """

    name: str
    config: Dict[str, Any]
    world_size: int

    @property
    def out(self) -> Path:
        return Path(self.config["out"])

    @property
    def status(self) -> str:
        """"finished" (checkpoint_final.pth), "unfinished" (checkpoint_last.pth only: it is
        resumed) or "new"."""
        if (self.out / "checkpoint_final.pth").is_file():
            return "finished"
        if (self.out / "checkpoint_last.pth").is_file():
            return "unfinished"
        return "new"


def _train_fields() -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _default(name: str) -> Any:
    """TrainConfig's default value of a field (None when it has none)."""
    spec = _train_fields()[name]
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return spec.default_factory()  # type: ignore[misc]
    return None


def read_experiment_file(path: os.PathLike | str) -> Dict[str, Any]:
    """Parse and check an experiment file's shape (keys, run names)."""
    path = Path(path)
    if tomllib is None:
        raise InputError("reading experiment files on Python < 3.11 needs tomli: "
                         "pip install tomli", path)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise InputError(f"cannot read: {error.strerror or error}", path) from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"malformed TOML: {error}", path) from None
    unknown = sorted(set(document) - set(FILE_KEYS))
    if unknown:
        raise InputError(f"unknown key(s) {', '.join(unknown)}; expected {', '.join(FILE_KEYS)}",
                         path)
    runs = document.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise InputError("expected at least one [[runs]] entry", path)
    if not isinstance(document.get("defaults", {}), dict):
        raise InputError("[defaults] must be a table", path)
    names = [run.get("name") for run in runs]
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise InputError(f"run {index + 1}: 'name' must be a plain folder name, "
                             f"got {name!r}", path)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InputError(f"duplicate run name(s): {', '.join(duplicates)}", path)
    return document


def _scale_config(config: Dict[str, Any], scale: float) -> Dict[str, Any]:
    """A smoke-run version of a run: epochs (and epoch-counted intervals) and warmup times
    ``scale``, image sizes times ``scale`` but at least :data:`MIN_SCALED_SIZE`."""
    scaled = dict(config)
    for name in ("epochs", "checkpoint_every", "eval_every"):
        value = config.get(name, _default(name))
        if isinstance(value, (int, float)) and value > 0:
            # 6 significant digits: 115 x 0.01 reads 1.15, not 1.1500000000000001.
            scaled[name] = float(f"{value * scale:.6g}")
    warmup = config.get("warmup_iters", _default("warmup_iters"))
    if isinstance(warmup, int) and warmup > 0:
        scaled["warmup_iters"] = max(1, round(warmup * scale))
    min_size = config.get("min_size", _default("min_size"))
    sizes = [min_size] if isinstance(min_size, int) else list(min_size or [])
    max_size = config.get("max_size", _default("max_size"))
    if sizes:
        scaled["min_size"] = sorted({max(MIN_SCALED_SIZE, round(size * scale))
                                     for size in sizes})
        if isinstance(max_size, int):
            # Keep the page's room to grow: max/min as before (1333/800), also after clamping.
            scaled["max_size"] = max(round(max_size * scale),
                                     round(max(scaled["min_size"]) * max_size / max(sizes)))
    elif isinstance(max_size, int):
        scaled["max_size"] = max(MIN_SCALED_SIZE, round(max_size * scale))
    return scaled


def resolve_experiments(path: os.PathLike | str, nproc: int = 1, scale: Optional[float] = None,
                        only: Optional[Sequence[str]] = None,
                        overrides: Optional[Dict[str, Any]] = None) -> List[Experiment]:
    """The runs of an experiment file, ready to plan and launch.

    Args:
        path: the TOML file.
        nproc: processes (GPUs) per run; ``total_batch_size`` is divided by it.
        scale: shrink for a smoke run (see :func:`_scale_config`); the runs then go to
            ``<out_dir>-scale<F>`` so they never mix with full runs.
        only: run names to keep (in file order); unknown names are an error.
        overrides: TrainConfig fields set on every run, after the file's values
            (``--set data=/scratch/vorau253``).

    Raises:
        InputError: bad file, unknown field, a batch that does not divide, unknown name.
    """
    path = Path(path)
    document = read_experiment_file(path)
    fields = _train_fields()
    out_dir = str(document.get("out_dir", f"runs/{path.stem}"))
    if scale is not None:
        out_dir = f"{out_dir.rstrip('/')}-scale{scale:g}"
    names = [run["name"] for run in document["runs"]]
    wanted = list(only or [])
    missing = [name for name in wanted if name not in names]
    if missing:
        raise InputError(f"no run named {', '.join(missing)}; runs: {', '.join(names)}", path)
    experiments = []
    for entry in document["runs"]:
        name = entry["name"]
        if wanted and name not in wanted:
            continue
        merged = {**document.get("defaults", {}), **entry, **(overrides or {})}
        unknown = sorted(key for key in merged if key not in fields and key not in RUNNER_KEYS)
        if unknown:
            raise InputError(f"run {name!r}: unknown field(s) {', '.join(unknown)} "
                             "(TrainConfig fields, or total_batch_size)", path)
        config = {key: value for key, value in merged.items() if key not in RUNNER_KEYS}
        total = merged.get("total_batch_size")
        if total is not None:
            if "batch_size" in merged:
                raise InputError(f"run {name!r}: set total_batch_size or batch_size, not both",
                                 path)
            if not isinstance(total, int) or total < 1 or total % nproc:
                raise InputError(f"run {name!r}: total_batch_size {total!r} does not split "
                                 f"over {nproc} process(es)", path)
            config["batch_size"] = total // nproc
        config.setdefault("out", f"{out_dir}/{name}")
        if scale is not None:
            config = _scale_config(config, scale)
        try:
            TrainConfig.from_dict(dict(config)).validate()
            train_arguments(config)
        except (InputError, TypeError, ValueError) as error:
            raise InputError(f"run {name!r}: {error}", path) from None
        experiments.append(Experiment(name=name, config=config, world_size=nproc))
    return experiments


def _train_flags() -> Dict[str, argparse.Action]:
    """The options of ``python -m maskdla.train``, by TrainConfig field (argparse dest)."""
    return {action.dest: action for action in build_train_parser()._actions
            if action.option_strings}


def train_arguments(config: Dict[str, Any]) -> List[str]:
    """``python -m maskdla.train`` flags for the TrainConfig fields in ``config``.

    Spelled the way maskdla.train's own parser reads them: a field's option string; a list
    as separate values where the option takes several (``--classes a b``), else joined with
    commas (``--min-size 640,800``); a mapping as ``OLD=NEW`` items; a switch
    (``--deterministic``, ``--no-energy``) only where the value is not the default; None
    left out (the default).

    Raises:
        InputError: a field the training CLI has no flag for, or a switch value it cannot
            express.
    """
    flags = _train_flags()
    arguments: List[str] = []
    for name, value in config.items():
        action = flags.get(name)
        if action is None:
            raise InputError(f"{name}: no python -m maskdla.train flag sets this field")
        flag = action.option_strings[0]
        if value is None:
            continue
        if action.nargs == 0:  # store_true / store_false
            if value == action.const:
                arguments.append(flag)
            elif value != action.default:
                raise InputError(f"{name} = {value!r}: {flag} can only set {action.const!r}")
        elif isinstance(value, dict):
            arguments += [flag, *(f"{key}={item}" for key, item in value.items())]
        elif isinstance(value, (list, tuple)):
            if action.nargs in ("+", "*"):
                arguments += [flag, *(str(item) for item in value)]
            else:
                arguments += [flag, ",".join(str(item) for item in value)]
        else:
            arguments += [flag, str(value)]
    return arguments


def command(experiment: Experiment) -> List[str]:
    """The command that trains ``experiment`` (resuming it when unfinished)."""
    arguments = train_arguments(experiment.config)
    if experiment.status == "unfinished" and "resume" not in experiment.config:
        arguments += ["--resume", "auto"]
    if experiment.world_size > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={experiment.world_size}"]
    else:
        launcher = [sys.executable]
    return [*launcher, "-m", "maskdla.train", *arguments]


def train_size(config: Dict[str, Any]) -> Tuple[int, str]:
    """(training pages, where the number comes from) for a dry run: counted from the run's
    data when it exists (DATA/train/page/*.xml, or the images of --train-ann), else the
    study's 128 VORAU-253 train pages."""
    annotations = config.get("train_ann")
    if annotations and Path(annotations).is_file():
        try:
            with open(annotations, encoding="utf-8") as file:
                images = json.load(file).get("images", [])
        except (OSError, ValueError, AttributeError) as error:
            raise InputError(f"cannot count training images: {error}", annotations) from None
        return len(images), f"counted in {annotations}"
    data = config.get("data")
    if data and (Path(data) / "train").is_dir():
        # The data module's own rule for a split folder: train/page/*.xml, else train/*.xml.
        try:
            pages = collect_xml([Path(data) / "train"])
        except InputError as error:
            return STUDY_TRAIN_SIZE, f"assumed: the study's VORAU-253 train split; {error}"
        return len(pages), f"counted in {Path(data) / 'train'}"
    if data:
        reason = f"{Path(data) / 'train'} not found"
    else:
        reason = "no data set (the embedded synthetic corpus is used)"
    return STUDY_TRAIN_SIZE, f"assumed: the study's VORAU-253 train split; {reason}"


def schedule(experiment: Experiment, size: int) -> SchedulePlan:
    """The run's schedule (iterations per epoch, total, LR milestones) on ``size`` pages."""
    config = experiment.config
    try:
        return plan(float(config.get("epochs", _default("epochs"))), size,
                    int(config.get("batch_size", _default("batch_size"))),
                    experiment.world_size, str(config.get("lr_steps", _default("lr_steps"))))
    except ValueError as error:
        raise InputError(f"run {experiment.name!r}: {error}") from None


def describe(experiment: Experiment) -> str:
    """The dry-run lines of one run: status, folder, schedule, command."""
    size, source = train_size(experiment.config)
    lines = [f"{experiment.name}: {experiment.status} -> {experiment.out}"]
    lines += ["  " + line for line in schedule(experiment, size).describe().splitlines()]
    lines.insert(2, f"    ({source})")
    lines.append("  command: " + shlex.join(command(experiment)))
    return "\n".join(lines)


def run_experiments(experiments: Sequence[Experiment], dry_run: bool = False) -> int:
    """Train each run in turn (skipping finished ones) or, with ``dry_run``, print the
    plans. A failed run is reported and the rest still run.

    Returns:
        Exit code: 0 when every run finished or was skipped, 1 when any failed.
    """
    failed, skipped, trained = [], [], []
    for number, experiment in enumerate(experiments, start=1):
        prefix = f"[{number}/{len(experiments)}]"
        if dry_run:
            print(f"{prefix} {describe(experiment)}")
            continue
        if experiment.status == "finished":
            print(f"{prefix} {experiment.name}: finished, skipped ({experiment.out})")
            skipped.append(experiment.name)
            continue
        arguments = command(experiment)
        action = "resuming" if experiment.status == "unfinished" else "training"
        print(f"{prefix} {experiment.name}: {action} -> {experiment.out}\n"
              f"  {shlex.join(arguments)}", flush=True)
        code = subprocess.run(arguments, check=False).returncode
        if code != 0:
            print(f"{prefix} {experiment.name}: failed with exit code {code}", file=sys.stderr)
            failed.append(experiment.name)
        else:
            trained.append(experiment.name)
    if dry_run:
        return 0
    print(f"trained {len(trained)}, skipped {len(skipped)} finished, failed {len(failed)}"
          + (f": {', '.join(failed)}" if failed else ""))
    if experiments:
        folders = sorted({str(experiment.out.parent) for experiment in experiments})
        print("report: python -m maskdla.report " + " ".join(folders))
    return 1 if failed else 0


def _parse_override(text: str) -> Tuple[str, Any]:
    """``--set KEY=VALUE``: VALUE read as a TOML value (450, 0.02, true, [640, 800]),
    else kept as a string (data/vorau253)."""
    key, separator, value = text.partition("=")
    if not separator or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if tomllib is not None:
        try:
            return key.strip(), tomllib.loads(f"value = {value}")["value"]
        except tomllib.TOMLDecodeError:
            pass
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.experiments",
        description="Run the study's grids of training runs from experiment files "
                    "(experiments/*.toml).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="train every run of an experiment file",
        description="Train every run of an experiment file in turn: finished runs "
                    "(checkpoint_final.pth) are skipped, unfinished ones resumed. Exit "
                    "code 1 if any run failed.")
    run.add_argument("file", type=Path, metavar="FILE", help="experiment file (TOML)")
    run.add_argument("--only", action="append", metavar="NAME",
                     help="run only this run (repeat or comma-separate for several)")
    run.add_argument("--dry-run", action="store_true",
                     help="print each run's epochs, iterations, LR milestones and command; "
                          "train nothing")
    run.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                     help="GPUs (processes) per run; N > 1 launches torchrun "
                          "(default: 1). total_batch_size is split over them")
    run.add_argument("--scale", type=positive_float, metavar="F",
                     help="smoke run: epochs, warmup and image size times F (images at "
                          f"least {MIN_SCALED_SIZE} px), into <out_dir>-scale<F>; "
                          "e.g. 0.01 for a CPU check of the wiring")
    run.add_argument("--set", dest="overrides", action="append", type=_parse_override,
                     default=[], metavar="KEY=VALUE",
                     help="set a TrainConfig field on every run, e.g. --set "
                          "data=/scratch/vorau253 or --set workers=8 (repeatable)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    only = [name.strip() for item in (args.only or []) for name in item.split(",")
            if name.strip()]
    experiments = resolve_experiments(args.file, nproc=args.nproc, scale=args.scale,
                                      only=only, overrides=dict(args.overrides))
    return run_experiments(experiments, dry_run=args.dry_run)


if __name__ == "__main__":
    run_main(main)
