"""Experiment files: a grid of runs, each one TrainConfig, and their schedules.

An experiment file (experiments/*.toml) holds shared defaults, a list of runs and, for the
SLURM launcher, the job's shape (``[launcher]``, see :mod:`maskdla.experiments.launchers`);
each run is one :class:`maskdla.train.TrainConfig` (any field may be set, in defaults or
per run)::

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
study counts it (detectron2's IMS_PER_BATCH); the runner sets ``batch_size = total /
processes`` so a file means the same schedule on 1 GPU or 2. ``batch_size`` instead sets
the per-process batch directly. Relative paths are relative to the folder you run from.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskdla.config import RESUME_AUTO
from maskdla.data.layout import collect_layout_files
from maskdla.errors import InputError
from maskdla.schedule import SchedulePlan, plan
from maskdla.train import TrainConfig

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
FILE_KEYS = ("description", "study_table", "out_dir", "defaults", "runs", "launcher")
#: Keys of a run entry that are the runner's, not TrainConfig fields.
RUNNER_KEYS = ("name", "total_batch_size")
#: Smallest image side a --scale smoke run shrinks to (the FPN's coarsest level is 1/64).
MIN_SCALED_SIZE = 64
#: The run's TrainConfig as the launchers hand it to ``python -m maskdla.train --config``.
#: Not config.json: training writes that one itself (with the world size and classes).
CONFIG_NAME = "train_config.json"


# --------------------------------------------------------------------------------------------
# The seam to maskdla.train: a run's TrainConfig, its file, and the command that trains it.
# --------------------------------------------------------------------------------------------

def run_config(values: Dict[str, Any]) -> TrainConfig:
    """The validated TrainConfig of a run from the fields its experiment file sets."""
    return TrainConfig.from_dict(dict(values)).validate()


def save_run_config(config: TrainConfig, path: Path) -> None:
    """Write ``config`` (every field) where ``--config`` reads it, atomically."""
    config.save(path)


def train_command(config_path: os.PathLike | str, nproc_per_node: int = 1, nnodes: int = 1,
                  node_rank: Any = 0, master_addr: str = "", master_port: Any = 0) -> List[str]:
    """The command that trains (or resumes, ``--resume auto``) the run in ``config_path``:
    ``python -m maskdla.train`` for one process, torchrun for several (``--standalone`` on
    one node; on several, a static rendezvous at ``master_addr:master_port``)."""
    train = ["-m", "maskdla.train", "--config", str(config_path), "--resume", RESUME_AUTO]
    if nproc_per_node == 1 and nnodes == 1:
        return [sys.executable, *train]
    launcher = [sys.executable, "-m", "torch.distributed.run"]
    if nnodes == 1:
        launcher += ["--standalone"]
    else:
        launcher += [f"--nnodes={nnodes}", f"--node_rank={node_rank}",
                     f"--master_addr={master_addr}", f"--master_port={master_port}"]
    return [*launcher, f"--nproc_per_node={nproc_per_node}", *train]


@dataclass
class Experiment:
    """One run of an experiment file, resolved.

    Attributes:
        name: the run's name (its folder under the file's out_dir).
        config: TrainConfig fields set for this run (defaults merged, out, per-process
            batch_size); fields not set keep TrainConfig's defaults.
        world_size: processes (GPUs) it runs on, over all nodes.
        nodes: machines it runs on (world_size / nodes processes each).
    """

    name: str
    config: Dict[str, Any]
    world_size: int
    nodes: int = 1

    @property
    def out(self) -> Path:
        return Path(self.config["out"])

    @property
    def config_path(self) -> Path:
        return self.out / CONFIG_NAME

    @property
    def nproc_per_node(self) -> int:
        return self.world_size // self.nodes

    @property
    def status(self) -> str:
        """"finished" (summary.json: trained and evaluated; never launched again),
        "unfinished" (a checkpoint_last.pth to resume from) or "new"."""
        if (self.out / "summary.json").is_file():
            return "finished"
        if (self.out / "checkpoint_last.pth").is_file():
            return "unfinished"
        return "new"

    def write_config(self) -> Path:
        """Write the run's TrainConfig into its folder; returns the file."""
        save_run_config(run_config(self.config), self.config_path)
        return self.config_path



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
    for table in ("defaults", "launcher"):
        if not isinstance(document.get(table, {}), dict):
            raise InputError(f"[{table}] must be a table", path)
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
                        overrides: Optional[Dict[str, Any]] = None,
                        nodes: int = 1) -> List[Experiment]:
    """The runs of an experiment file, ready to plan and launch.

    Args:
        path: the TOML file.
        nproc: processes (GPUs) per run, over all nodes; ``total_batch_size`` is divided
            by it.
        scale: shrink for a smoke run (see :func:`_scale_config`); the runs then go to
            ``<out_dir>-scale<F>`` so they never mix with full runs.
        only: run names to keep (in file order); unknown names are an error.
        overrides: TrainConfig fields set on every run, after the file's values
            (``--set data=/scratch/vorau253``).
        nodes: machines per run (a divisor of ``nproc``).

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
            run_config(config)
        except (InputError, TypeError, ValueError) as error:
            raise InputError(f"run {name!r}: {error}", path) from None
        experiments.append(Experiment(name=name, config=config, world_size=nproc, nodes=nodes))
    return experiments


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
            pages = collect_layout_files([Path(data) / "train"])
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
    """The dry-run lines of one run: status, folder, schedule."""
    size, source = train_size(experiment.config)
    lines = [f"{experiment.name}: {experiment.status} -> {experiment.out}"]
    lines += ["  " + line for line in schedule(experiment, size).describe().splitlines()]
    lines.insert(2, f"    ({source})")
    return "\n".join(lines)
