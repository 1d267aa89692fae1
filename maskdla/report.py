"""The study's tables and plots for finished runs: ``python -m maskdla.report RUN_DIRS...``.

Reads run folders written by :mod:`maskdla.train` (``runs/NAME/``: config.json, log.jsonl,
energy.csv, metrics.json, metrics_history.jsonl, summary.json) and writes

* a Markdown report (stdout, or ``--out report.md``) with the study's tables: quality
  (Backbone | Task | AP | AP50 | AP75 | APm | APl), efficiency (Backbone | Training Time |
  Mem GPU1 | Mem GPU2 ... | kWh | Cost) and, with ``--baseline RUN``, the energy and time
  saved against that run in percent;
* plots (``--plots DIR``, PNG, needs matplotlib = the ``plots`` extra): training loss with
  the LR steps marked, AP against epochs, GPU memory over time per GPU, energy per run;
* ``--html report.html``: one self-contained page, tables and plots embedded, readable
  offline.

A folder that is missing or malformed is named in a warning (stderr and the report's
"Skipped run folders" section) and the report covers the rest. A folder with no
``config.json`` whose subfolders are runs stands for those runs (``runs/epochs`` = every
run of that experiment). The exit code is 0 when at least one run is usable, 2 when none is.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskdla.cli import run_main
from maskdla.config import RUN_FACTS as CONFIG_RUN_FACTS, TrainConfig
from maskdla.energy import cpu_in_total, savings_percent
from maskdla.errors import InputError
from maskdla.files import read_json, write_bytes_atomic
from maskdla.tables import (AP_COLUMNS, ESTIMATE, MISSING, TASK_NAMES, efficiency_row,
                            format_ap, format_duration, format_kwh, format_percent,
                            markdown_table)

#: Metric columns of the quality table, as the study reports them (APs is empty for
#: VORAU-253: no object is smaller than 32x32 px).
QUALITY_METRICS = AP_COLUMNS
#: (metrics.json task key, the study's task name)
TASKS = tuple(TASK_NAMES.items())
#: keys of config.json that are facts of the run, not settings (classes: the run's own,
#: also a setting of a replay)
RUN_FACTS = (*CONFIG_RUN_FACTS, "classes")
#: Plot file names (without .png) and titles, in report order.
PLOTS = (
    ("loss", "Training loss (dashed: LR steps)"),
    ("ap", "AP against epochs"),
    ("gpu_memory", "GPU memory over time"),
    ("energy", "Energy per run"),
)


# --------------------------------------------------------------------------- reading


@dataclass
class RunRecord:
    """What the report reads from one run folder.

    Attributes:
        path: the run folder.
        name: the folder's name (``runs/epochs/e450`` -> ``"e450"``).
        config: config.json's settings.
        facts: config.json's facts of the run (world_size, train_size, classes).
        metrics: metrics.json (``{"bbox": {...}, "segm": {...}}``, percent) or None.
        summary: summary.json (training time, energy summary) or None.
        log: log.jsonl rows (epoch, iteration, lr, loss, ...), in file order.
        history: metrics_history.jsonl rows (``{"epoch", "bbox", "segm"}``).
        energy: rows of energy.csv and of the other timelines (see
            :func:`_read_energy_timelines`), numeric columns as floats (None where empty).
        finished: checkpoint_final.pth exists.
    """

    path: Path
    name: str
    config: TrainConfig
    facts: Dict[str, Any] = field(default_factory=dict)
    metrics: Optional[Dict[str, Any]] = None
    summary: Optional[Dict[str, Any]] = None
    log: List[Dict[str, Any]] = field(default_factory=list)
    history: List[Dict[str, Any]] = field(default_factory=list)
    energy: List[Dict[str, Any]] = field(default_factory=list)
    finished: bool = False

    @property
    def backbone(self) -> str:
        return self.config.backbone


def _read_json_object(path: Path) -> Dict[str, Any]:
    """A JSON file holding one object; InputError naming the file otherwise."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise InputError("malformed: expected a JSON object", path)
    return value


def _read_jsonl(path: Path, warnings: List[str]) -> List[Dict[str, Any]]:
    """The JSON-object lines of a .jsonl file. Bad lines (a run killed while writing leaves
    a truncated last line) are skipped with one warning naming the file and the lines."""
    if not path.is_file():
        return []
    rows, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(number)
    if bad:
        shown = ", ".join(str(n) for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.append(f"{path}: skipped {len(bad)} malformed line(s): {shown}")
    return rows


def _to_number(text: Optional[str]) -> Any:
    """A CSV cell as float where it is a number, None where empty, else the text."""
    if text is None or text.strip() == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _read_energy_csv(path: Path, warnings: List[str]) -> List[Dict[str, Any]]:
    """energy.csv rows (time_s, gpu, power_w, energy_j, memory_used_mib, ...)."""
    if not path.is_file():
        return []
    try:
        with open(path, encoding="utf-8", newline="") as file:
            rows = [{key: _to_number(value) for key, value in row.items() if key}
                    for row in csv.DictReader(file)]
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        warnings.append(f"{path}: unreadable, GPU memory plot skipped for this run: {error}")
        return []
    if rows and "time_s" not in rows[0]:
        warnings.append(f"{path}: no time_s column, GPU memory plot skipped for this run")
        return []
    return rows


#: energy.csv, and the timelines of other nodes (energy-rankN.csv) and of resumed
#: segments (energy-from-iterationN.csv, energy-rankN-from-iterationM.csv)
ENERGY_TIMELINE = re.compile(r"energy(?:-rank(\d+))?(?:-from-iteration(\d+))?\.csv")


def _read_energy_timelines(folder: Path, warnings: List[str]) -> List[Dict[str, Any]]:
    """Every energy timeline of a run as one list of rows: a resumed segment's times
    continue from the end of the segment before it (``time_s`` from the run's first
    start), and the GPUs of another node are named ``N@rankR`` (``gpu_index``)."""
    segments: Dict[int, List[Tuple[int, Path]]] = {}
    for path in folder.glob("energy*.csv"):
        match = ENERGY_TIMELINE.fullmatch(path.name)
        if match:
            rank, iteration = int(match.group(1) or 0), int(match.group(2) or 0)
            segments.setdefault(rank, []).append((iteration, path))
    rows: List[Dict[str, Any]] = []
    for rank, files in sorted(segments.items()):
        offset = 0.0
        for _, path in sorted(files):
            segment = _read_energy_csv(path, warnings)
            for row in segment:
                row = dict(row, node=rank)
                if isinstance(row.get("time_s"), float):
                    row["time_s"] += offset
                if rank and row.get("gpu_index") is not None:
                    row["gpu_index"] = f"{_gpu_name(row['gpu_index'])}@rank{rank}"
                rows.append(row)
            times = [row["time_s"] for row in segment if isinstance(row.get("time_s"), float)]
            offset += max(times, default=0.0)
    return rows


def _gpu_name(gpu: Any) -> str:
    return str(int(gpu)) if isinstance(gpu, float) and gpu.is_integer() else str(gpu)


def _check_metrics(metrics: Dict[str, Any], path: Path) -> None:
    """metrics.json must hold {"bbox": {...}, "segm": {...}} with numbers."""
    if not any(task in metrics for task, _ in TASKS):
        raise InputError("malformed: no 'bbox' or 'segm' results", path)
    for task, _ in TASKS:
        results = metrics.get(task)
        if results is None:
            continue
        if not isinstance(results, dict):
            raise InputError(f"malformed: '{task}' is not an object", path)
        for key in QUALITY_METRICS:
            value = results.get(key)
            if value is not None and not isinstance(value, (int, float)):
                raise InputError(f"malformed: {task}.{key} is not a number", path)


def load_run(path: os.PathLike | str, warnings: Optional[List[str]] = None) -> RunRecord:
    """Read one run folder.

    Args:
        path: ``runs/NAME``.
        warnings: receives non-fatal problems (malformed log lines, unfinished run).

    Returns:
        The run's :class:`RunRecord`.

    Raises:
        InputError: the folder is missing, has no readable config.json, has neither
            metrics.json nor summary.json (nothing to report), or one of them is malformed.
    """
    warnings = [] if warnings is None else warnings
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("no such run folder", folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError("not a run folder (no config.json)", folder)
    config, facts = _read_config(config_path)
    metrics_path, summary_path = folder / "metrics.json", folder / "summary.json"
    if not metrics_path.is_file() and not summary_path.is_file():
        raise InputError("nothing to report yet: no metrics.json or summary.json "
                         "(unfinished run? resume it with --resume auto)", folder)
    metrics = _read_json_object(metrics_path) if metrics_path.is_file() else None
    if metrics is not None:
        _check_metrics(metrics, metrics_path)
    summary = _read_json_object(summary_path) if summary_path.is_file() else None
    finished = (folder / "checkpoint_final.pth").is_file()
    if not finished:
        warnings.append(f"{folder}: no checkpoint_final.pth: the run may be unfinished")
    return RunRecord(
        path=folder, name=folder.resolve().name, config=config, facts=facts, metrics=metrics,
        summary=summary, log=_read_jsonl(folder / "log.jsonl", warnings),
        history=_read_jsonl(folder / "metrics_history.jsonl", warnings),
        energy=_read_energy_timelines(folder, warnings), finished=finished)


def _read_config(path: Path) -> Tuple[TrainConfig, Dict[str, Any]]:
    """config.json: the run's TrainConfig and the facts written next to it."""
    values = _read_json_object(path)
    facts = {key: values.pop(key) for key in RUN_FACTS if key in values}
    try:
        return TrainConfig.from_dict(values), facts
    except InputError as error:
        raise InputError(f"malformed: {error}", path) from None


def _natural_key(text: str) -> List[Any]:
    """Sort key that orders e115 before e900 before e1000."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def expand_run_dirs(paths: Sequence[os.PathLike | str]) -> List[Path]:
    """Run folders from the command line: a folder without config.json whose subfolders
    hold config.json stands for those subfolders (natural order); anything else stays
    as given (and is reported as missing or malformed when loaded)."""
    expanded: List[Path] = []
    for given in paths:
        folder = Path(given)
        if folder.is_dir() and not (folder / "config.json").exists():
            children = sorted((child for child in folder.iterdir()
                               if (child / "config.json").is_file()),
                              key=lambda child: _natural_key(child.name))
            if children:
                expanded.extend(children)
                continue
        expanded.append(folder)
    return expanded


def load_runs(paths: Sequence[os.PathLike | str]
              ) -> Tuple[List[RunRecord], List[str], List[str]]:
    """Read every usable run among ``paths`` (see :func:`expand_run_dirs`).

    Returns:
        (runs in the given order, skipped: one message per unusable folder, warnings).
    """
    runs, skipped, warnings = [], [], []
    seen = set()
    for folder in expand_run_dirs(paths):
        key = folder.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            runs.append(load_run(folder, warnings))
        except InputError as error:
            skipped.append(str(error))
    return runs, skipped, warnings


# --------------------------------------------------------------------------- figures


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _energy_summary(run: RunRecord) -> Dict[str, Any]:
    """The EnergyMeter summary inside the run's summary.json ({} when absent)."""
    energy = (run.summary or {}).get("energy")
    return energy if isinstance(energy, dict) else {}


def _training_time_s(run: RunRecord) -> Optional[float]:
    """Training wall time: summary.json's training_time_s, else the meter's duration."""
    summary = run.summary or {}
    seconds = _number(summary.get("training_time_s"))
    return seconds if seconds is not None else _number(_energy_summary(run).get("duration_s"))


def _energy_kwh(run: RunRecord) -> Optional[float]:
    """The run's energy (GPUs plus CPU packages where measured; a CPU-only run's CPU
    estimate where RAPL was unreadable), as in the kWh column; None when there is none."""
    return _number(_energy_summary(run).get("energy_kwh"))


def _energy_is_estimate(run: RunRecord) -> bool:
    """Whether the run's kWh (and cost) hold the CPU-seconds estimate."""
    return bool(_energy_summary(run).get("energy_estimate"))


def _efficiency_cells(run: RunRecord) -> Dict[str, str]:
    """The study's efficiency columns of one run ("Training Time", "Mem GPU<i>"..., "kWh",
    "Cost"), formatted by :func:`maskdla.energy.efficiency_row`."""
    seconds = _training_time_s(run)
    row = efficiency_row({**_energy_summary(run), "duration_s": seconds or 0.0})
    if seconds is None:
        row["Training Time"] = MISSING
    return row


def run_labels(runs: Sequence[RunRecord]) -> Tuple[str, List[str]]:
    """The first column: (header, one label per run).

    Backbone names when every run has a different backbone (the study's backbone table);
    otherwise run folder names under the header "Run" (runs of one backbone, e.g. the
    epochs sweep, differ in their settings, which their names say).
    """
    backbones = [run.backbone for run in runs]
    if len(set(backbones)) == len(backbones):
        return "Backbone", backbones
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return "Run", names
    return "Run", [str(run.path) for run in runs]


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """A titled table, rendered as Markdown (the study's layout) or HTML."""

    title: str
    headers: List[str]
    rows: List[List[str]]
    note: str = ""

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.note:
            lines += [self.note, ""]
        return "\n".join([*lines, markdown_table(self.headers, self.rows)]) + "\n"

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(cell)}</th>" for cell in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
                       + "</tr>\n" for row in self.rows)
        note = f"<p>{html.escape(self.note)}</p>\n" if self.note else ""
        return (f"<h2>{html.escape(self.title)}</h2>\n{note}"
                f"<table>\n<tr>{head}</tr>\n{body}</table>\n")


def quality_table(runs: Sequence[RunRecord]) -> Optional[Table]:
    """Backbone | Task | AP | AP50 | AP75 | APm | APl, box then segm per run (percent,
    two decimals); None when no run has metrics.json."""
    header, labels = run_labels(runs)
    rows = []
    # the layout metrics (Region F1, Pixel mIoU) go beside AP, on the segm row
    layout_cells: Dict[int, Dict[str, str]] = {}
    if any(isinstance(run.metrics, dict) and "layout" in run.metrics for run in runs):
        # imported only then: maskdla.evaluation loads torch, which the report does not need
        from maskdla.evaluation.layout import layout_columns
        layout_cells = {id(run): layout_columns(run.metrics) for run in runs if run.metrics}
    layout_names = list(dict.fromkeys(name for cells in layout_cells.values() for name in cells))
    for run, label in zip(runs, labels):
        if run.metrics is None:
            continue
        for task, task_name in TASKS:
            results = run.metrics.get(task)
            if isinstance(results, dict):
                layout = layout_cells.get(id(run), {}) if task == "segm" else {}
                rows.append([label, task_name]
                            + [format_ap(results.get(key)) for key in QUALITY_METRICS]
                            + [layout.get(name, MISSING) for name in layout_names])
    if not rows:
        return None
    return Table("Quality (COCO AP, %)", [header, "Task", *QUALITY_METRICS, *layout_names], rows)


def efficiency_table(runs: Sequence[RunRecord]) -> Optional[Table]:
    """Backbone | Training Time | Mem GPU1 | Mem GPU2 ... | kWh | Cost; one Mem column per
    GPU of the run with the most GPUs. None when no run has summary.json."""
    header, labels = run_labels(runs)
    cells = [(label, _efficiency_cells(run)) for run, label in zip(runs, labels)
             if run.summary is not None]
    if not cells:
        return None
    gpu_count = max(sum(key.startswith("Mem GPU") for key in row) for _, row in cells)
    columns = ["Training Time", *(f"Mem GPU{i + 1}" for i in range(gpu_count)), "kWh", "Cost"]
    rows = [[label, *(row.get(column, MISSING) for column in columns)] for label, row in cells]
    note = "kWh and Cost: energy of the run (GPUs, plus CPU packages where measured)."
    if any(_energy_is_estimate(run) for run in runs if run.summary is not None):
        note += (f" {ESTIMATE}: no GPU and RAPL unreadable, so CPU-seconds x watts per core "
                 "(docs/energy.md), not a measurement.")
    if gpu_count:
        note = "Mem: peak GPU memory used (as nvidia-smi shows it); " + note
    return Table("Efficiency", [header, *columns], rows, note=note)


def savings_table(runs: Sequence[RunRecord], baseline: RunRecord) -> Table:
    """Energy and training time of every other run against ``baseline``, in percent saved
    (the study: 0.684 vs 3.823 kWh = 82.1 % saved)."""
    header, labels = run_labels(runs)
    base_kwh, base_time = _energy_kwh(baseline), _training_time_s(baseline)
    base_estimate = _energy_is_estimate(baseline)
    rows = []
    for run, label in zip(runs, labels):
        if run is baseline or run.summary is None:
            continue
        kwh, seconds = _energy_kwh(run), _training_time_s(run)
        estimate = _energy_is_estimate(run)
        energy_saved = (savings_percent(base_kwh, kwh)
                        if base_kwh and kwh is not None else None)
        time_saved = (savings_percent(base_time, seconds)
                      if base_time and seconds is not None else None)
        # a saving computed from an estimate on either side is an estimate too
        saved_text = format_percent(energy_saved)
        if energy_saved is not None and (estimate or base_estimate):
            saved_text += f" {ESTIMATE}"
        rows.append([label, format_kwh(kwh, estimate), saved_text,
                     MISSING if seconds is None else format_duration(seconds),
                     format_percent(time_saved)])
    return Table(f"Savings vs {baseline.name}",
                 [header, "kWh", "Energy saved", "Training Time", "Time saved"], rows,
                 note=f"Baseline {baseline.path}: {format_kwh(base_kwh, base_estimate, 'kWh')}"
                      f"{'' if base_kwh is not None else ' kWh'}, "
                      f"{MISSING if base_time is None else format_duration(base_time)}.")


# --------------------------------------------------------------------------- plots


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("plots need matplotlib, which is not installed: "
                         "pip install 'maskdla[plots]'") from None


def _figure(width: float, height: float):
    # A bare Figure (no pyplot): no global state, no GUI backend, safe in threads.
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _lr_step_epochs(run: RunRecord, warnings: List[str]) -> List[float]:
    """The run's LR milestones in epochs, from its config (lr_steps, epochs)."""
    from maskdla.schedule import parse_lr_steps
    try:
        return list(parse_lr_steps(run.config.lr_steps, run.config.epochs))
    except (InputError, KeyError, TypeError, ValueError) as error:
        warnings.append(f"{run.path}: LR steps not marked: {error}")
        return []


def _time_axis(seconds: Sequence[float]) -> Tuple[float, str]:
    """(divisor, axis label) so the time axis reads in s, min or h."""
    longest = max(seconds, default=0.0)
    if longest >= 2 * 3600:
        return 3600.0, "time (h)"
    if longest >= 2 * 60:
        return 60.0, "time (min)"
    return 1.0, "time (s)"


def plot_loss(runs: Sequence[RunRecord], labels: Sequence[str],
              warnings: List[str]) -> Optional[bytes]:
    """Training loss (log scale) against epochs, one line per run, LR steps dashed."""
    figure = _figure(8, 4.5)
    axes = figure.add_subplot()
    plotted = False
    for index, (run, label) in enumerate(zip(runs, labels)):
        points = [(row["epoch"], row["loss"]) for row in run.log
                  if _number(row.get("epoch")) is not None
                  and _number(row.get("loss")) is not None and row["loss"] > 0]
        if not points:
            continue
        color = f"C{index % 10}"
        axes.plot([p[0] for p in points], [p[1] for p in points], color=color,
                  linewidth=1, label=label)
        for epoch in _lr_step_epochs(run, warnings):
            axes.axvline(epoch, color=color, linestyle="--", linewidth=0.8, alpha=0.7)
        plotted = True
    if not plotted:
        return None
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    return _png(figure)


def plot_ap(runs: Sequence[RunRecord], labels: Sequence[str]) -> Optional[bytes]:
    """Box and segm AP against epochs from metrics_history.jsonl (or the final
    metrics.json as one point at the run's last epoch)."""
    figure = _figure(10, 4.5)
    panels = figure.subplots(1, 2, sharey=True)
    plotted = False
    for index, (run, label) in enumerate(zip(runs, labels)):
        history = list(run.history)
        if not history and run.metrics is not None:
            history = [{"epoch": run.config.epochs, **run.metrics}]
        for axes, (task, task_name) in zip(panels, TASKS):
            points = sorted((row["epoch"], row[task]["AP"]) for row in history
                            if _number(row.get("epoch")) is not None
                            and isinstance(row.get(task), dict)
                            and _number(row[task].get("AP")) is not None)
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], "o-",
                          color=f"C{index % 10}", markersize=3, label=label)
                plotted = True
    if not plotted:
        return None
    for axes, (_, task_name) in zip(panels, TASKS):
        axes.set_title(f"{task_name} AP")
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
    panels[0].set_ylabel("AP (%)")
    panels[0].legend(fontsize="small")
    return _png(figure)


def plot_gpu_memory(runs: Sequence[RunRecord], labels: Sequence[str]) -> Optional[bytes]:
    """GPU memory used over time, one panel per run, one line per GPU (energy.csv)."""
    series = []
    for run, label in zip(runs, labels):
        by_gpu: Dict[str, List[Tuple[float, float]]] = {}
        for row in run.energy:
            time_s, memory = _number(row.get("time_s")), _number(row.get("memory_used_mib"))
            # energy.csv names the GPU by its CUDA ordinal; rows without one are CPU-only.
            gpu = row.get("gpu_index")
            if time_s is None or memory is None or gpu is None:
                continue
            by_gpu.setdefault(_gpu_name(gpu), []).append((time_s, memory))
        if by_gpu:
            series.append((label, by_gpu))
    if not series:
        return None
    columns = min(2, len(series))
    rows = math.ceil(len(series) / columns)
    figure = _figure(5 * columns, 3 * rows)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, (label, by_gpu) in zip(panels, series):
        times = [time_s for points in by_gpu.values() for time_s, _ in points]
        divisor, time_label = _time_axis(times)
        for gpu_name, points in sorted(by_gpu.items(), key=lambda item: _natural_key(item[0])):
            points.sort()
            axes.plot([t / divisor for t, _ in points], [m for _, m in points],
                      linewidth=1, label=f"GPU{gpu_name}")
        axes.set_title(label, fontsize="medium")
        axes.set_xlabel(time_label)
        axes.set_ylabel("memory used (MiB)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    for axes in panels[len(series):]:
        axes.set_visible(False)
    return _png(figure)


def plot_energy(runs: Sequence[RunRecord], labels: Sequence[str]) -> Optional[bytes]:
    """Energy of each run (kWh) as bars: GPUs, with the CPU stacked where it counts in the
    run's kWh (RAPL; the estimate of a run without GPUs, whose label then ends in
    "(estimate)")."""
    bars = []
    for run, label in zip(runs, labels):
        energy = _energy_summary(run)
        gpu, cpu = _number(energy.get("gpu_energy_kwh")), _number(energy.get("cpu_energy_kwh"))
        if cpu is not None and not cpu_in_total(energy):
            cpu = None  # an estimate beside measured GPU energy is not part of the kWh
        if gpu is not None or cpu is not None:
            bars.append((label + (f" {ESTIMATE}" if _energy_is_estimate(run) else ""),
                         gpu or 0.0, cpu or 0.0))
    if not bars:
        return None
    figure = _figure(max(5.0, 0.8 * len(bars) + 2), 4.5)
    axes = figure.add_subplot()
    positions = list(range(len(bars)))
    gpu = [g for _, g, _ in bars]
    cpu = [c for _, _, c in bars]
    axes.bar(positions, gpu, color="C0", label="GPU")
    if any(cpu):
        axes.bar(positions, cpu, bottom=gpu, color="C1", label="CPU")
        axes.legend(fontsize="small")
    for position, total in zip(positions, (g + c for g, c in zip(gpu, cpu))):
        axes.annotate(f"{total:.3f}", (position, total), ha="center", va="bottom",
                      fontsize="small")
    axes.set_xticks(positions, [label for label, _, _ in bars], rotation=30, ha="right")
    axes.set_ylabel("energy (kWh)")
    axes.grid(True, axis="y", alpha=0.3)
    return _png(figure)


def render_plots(runs: Sequence[RunRecord], warnings: List[str]) -> Dict[str, bytes]:
    """All plots that the runs have data for: plot name (see :data:`PLOTS`) -> PNG bytes.

    Raises:
        InputError: matplotlib is not installed.
    """
    _require_matplotlib()
    _, labels = run_labels(runs)
    rendered = {
        "loss": plot_loss(runs, labels, warnings),
        "ap": plot_ap(runs, labels),
        "gpu_memory": plot_gpu_memory(runs, labels),
        "energy": plot_energy(runs, labels),
    }
    for name, title in PLOTS:
        if rendered[name] is None:
            warnings.append(f"plot {name!r} ({title}) skipped: no run has data for it")
    return {name: png for name, png in rendered.items() if png is not None}


# --------------------------------------------------------------------------- report


@dataclass
class Report:
    """Tables, plots and problems of one report (see :func:`build_report`)."""

    runs: List[RunRecord]
    tables: List[Table]
    skipped: List[str]
    warnings: List[str]
    plots: Dict[str, bytes] = field(default_factory=dict)

    def to_markdown(self, plot_paths: Optional[Dict[str, str]] = None) -> str:
        """The report as Markdown; ``plot_paths`` (plot name -> path as the Markdown file
        should link it) adds a Plots section."""
        parts = ["# maskdla report\n",
                 "Runs: " + ", ".join(f"`{run.path}`" for run in self.runs) + "\n"]
        parts += [table.to_markdown() for table in self.tables]
        if plot_paths:
            titles = dict(PLOTS)
            lines = ["## Plots", ""]
            for name, path in plot_paths.items():
                lines += [f"![{titles[name]}]({path})", ""]
            parts.append("\n".join(lines))
        if self.skipped:
            parts.append("\n".join(["## Skipped run folders", ""]
                                   + [f"- {message}" for message in self.skipped]) + "\n")
        return "\n".join(parts)

    def to_html(self) -> str:
        """One self-contained page: tables, plots embedded as base64 PNG, problems."""
        titles = dict(PLOTS)
        body = ["<h1>maskdla report</h1>",
                "<p>Runs: " + ", ".join(f"<code>{html.escape(str(run.path))}</code>"
                                        for run in self.runs) + "</p>"]
        body += [table.to_html() for table in self.tables]
        if self.plots:
            body.append("<h2>Plots</h2>")
            for name, png in self.plots.items():
                data = base64.b64encode(png).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(titles[name])}" '
                            f'src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(titles[name])}</figcaption></figure>")
        if self.skipped:
            body.append("<h2>Skipped run folders</h2>\n<ul>" + "".join(
                f"<li>{html.escape(message)}</li>" for message in self.skipped) + "</ul>")
        style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin-bottom:1em}"
                 "th,td{border:1px solid #999;padding:0.25em 0.6em;text-align:right}"
                 "th:first-child,td:first-child{text-align:left}"
                 "img{max-width:100%}figure{margin:1em 0}")
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>maskdla report</title>\n<style>{style}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def build_report(run_dirs: Sequence[os.PathLike | str], baseline: Optional[str] = None,
                 plots: bool = False) -> Report:
    """Read the run folders and build the report.

    Args:
        run_dirs: run folders (or folders of run folders, see :func:`expand_run_dirs`).
        baseline: a run folder, or the name of one of the runs, to compute savings
            against; a baseline not among ``run_dirs`` is added as the first run.
        plots: render the plots (needs matplotlib).

    Returns:
        The :class:`Report`; unusable folders are in ``report.skipped``.

    Raises:
        InputError: no run folder is usable, or plots were asked for without matplotlib.
    """
    if plots:
        _require_matplotlib()
    runs, skipped, warnings = load_runs(run_dirs)
    baseline_run = None
    if baseline is not None:
        baseline_run = next((run for run in runs if run.name == baseline
                             or _same_folder(run.path, Path(baseline))), None)
        if baseline_run is None:
            try:
                baseline_run = load_run(baseline, warnings)
                runs.insert(0, baseline_run)
            except InputError as error:
                reason = (str(error) if Path(baseline).exists()
                          else f"{baseline}: neither a usable run's name nor a run folder")
                skipped.append(f"baseline {reason}")
                warnings.append("no savings table: the baseline is unusable")
    if not runs:
        raise InputError("no usable run folder among: "
                         + ", ".join(str(path) for path in run_dirs)
                         + ("" if not skipped else " (" + "; ".join(skipped) + ")"))
    tables = [table for table in (quality_table(runs), efficiency_table(runs))
              if table is not None]
    if baseline_run is not None:
        if baseline_run.summary is None:
            warnings.append(f"{baseline_run.path}: baseline has no summary.json: "
                            "no savings table")
        else:
            tables.append(savings_table(runs, baseline_run))
    report = Report(runs=runs, tables=tables, skipped=skipped, warnings=warnings)
    if plots:
        report.plots = render_plots(runs, warnings)
    return report


def write_report(report: Report, out: Optional[Path] = None, plots_dir: Optional[Path] = None,
                 html_path: Optional[Path] = None) -> str:
    """Write the plots to ``plots_dir`` (name.png), the Markdown to ``out`` and the HTML
    page to ``html_path``, each where given; return the Markdown."""
    plot_paths: Dict[str, str] = {}
    if plots_dir is not None:
        link_base = (out.parent if out is not None else Path.cwd()).resolve()
        for name, png in report.plots.items():
            path = plots_dir / f"{name}.png"
            write_bytes_atomic(path, png)
            plot_paths[name] = Path(os.path.relpath(path.resolve(), link_base)).as_posix()
    markdown = report.to_markdown(plot_paths)
    if out is not None:
        write_bytes_atomic(out, markdown.encode("utf-8"))
    if html_path is not None:
        write_bytes_atomic(html_path, report.to_html().encode("utf-8"))
    return markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskdla.report",
        description="The study's tables (quality, efficiency, savings) and plots for "
                    "finished runs. Exit code 0 when at least one run is usable (unusable "
                    "folders are named in warnings), 2 when none is.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folders (runs/NAME), or folders of run folders "
                             "(runs/epochs = every run in it)")
    parser.add_argument("--baseline", metavar="RUN",
                        help="run folder or run name to compare energy and time against "
                             "(e.g. the base case); added to the tables if not in RUN_DIRS")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write the Markdown report here (default: print it)")
    parser.add_argument("--plots", type=Path, metavar="DIR",
                        help="write PNG plots here (needs matplotlib: maskdla[plots]) "
                             "and link them from the report")
    parser.add_argument("--html", type=Path, metavar="FILE",
                        help="write one self-contained HTML page (tables and plots "
                             "embedded; needs matplotlib)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    report = build_report(args.run_dirs, baseline=args.baseline,
                          plots=args.plots is not None or args.html is not None)
    for message in report.skipped:
        print(f"maskdla: warning: skipped {message}", file=sys.stderr)
    for message in report.warnings:
        print(f"maskdla: warning: {message}", file=sys.stderr)
    markdown = write_report(report, out=args.out, plots_dir=args.plots, html_path=args.html)
    if args.out is None:
        print(markdown, end="")
    else:
        print(f"report: {args.out} ({len(report.runs)} run(s), "
              f"{len(report.skipped)} skipped)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
