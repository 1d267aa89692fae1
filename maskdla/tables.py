"""How maskdla writes its figures: the study's AP table, durations, the efficiency row and
Markdown tables, for the eval CLI, the training summary and ``maskdla.report`` alike.

One name per task (:data:`TASK_NAMES`), one mark for a missing figure (:data:`MISSING`),
one for an estimated one (:data:`ESTIMATE`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from maskdla.energy import CPU_ESTIMATE, cpu_in_total, cpu_method_of

if TYPE_CHECKING:
    from maskdla.config import TrainConfig

#: metrics.json task key -> the study's name of the task
TASK_NAMES = {"bbox": "Bounding Box", "segm": "Segmentation"}
#: a figure that is unknown, or that pycocotools reports as -1 (no objects of that size)
MISSING = "n/a"
#: follows an energy or cost figure that holds an estimate (the CPU-seconds estimate of a run
#: without RAPL; maskdla.energy), never left off where such a figure is shown
ESTIMATE = "(estimate)"
#: AP columns of the study's tables (APs only where some object is smaller than 32x32 px)
AP_COLUMNS = ("AP", "AP50", "AP75", "APm", "APl")


def format_ap(value: Any) -> str:
    """An AP figure in percent with two decimals; :data:`MISSING` for None, NaN or -1."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return MISSING
    return f"{value:.2f}"


def format_duration(seconds: float) -> str:
    """Duration as the study writes it: ``"10 h 48 min"``, ``"57 min"``; under a minute ``"42 s"``.

    Rounded to the nearest minute (to the nearest second under a minute).
    """
    if seconds < 59.5:
        return f"{round(seconds)} s"
    hours, minutes = divmod(int(round(seconds / 60.0)), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def format_percent(value: Optional[float]) -> str:
    return MISSING if value is None else f"{value:.1f} %"


def format_kwh(kwh: Optional[float], estimate: bool = False, unit: str = "") -> str:
    """An energy figure with three decimals as the study writes it (``"0.684"``; with
    ``unit="kWh"``: ``"0.684 kWh"``), then :data:`ESTIMATE` where ``estimate``;
    :data:`MISSING` for None."""
    if kwh is None:
        return MISSING
    return " ".join(part for part in (f"{kwh:.3f}", unit, ESTIMATE if estimate else "") if part)


def format_small_kwh(kwh: float) -> str:
    """kWh in plain notation with three decimals, or three significant digits below 0.1 kWh
    (``"3.823"``, ``"0.0100"``, ``"0.0000704"``): the CPU energy of a short run is far below
    the 0.001 kWh that the study's three decimals show."""
    if not 0 < kwh < 0.1 or not math.isfinite(kwh):
        return f"{kwh:.3f}"
    return f"{kwh:.{2 - math.floor(math.log10(kwh))}f}"


def energy_breakdown(energy: Mapping[str, Any]) -> str:
    """Where a run's energy comes from, for summary.md, e.g. ``"GPUs 0.684 kWh (counter), CPU
    0.0100 kWh (rapl)"`` or ``"CPU 0.000400 kWh (estimate: 120 CPU-seconds x 12 W per core)"``
    (``energy``: an energy summary; figures by :func:`format_small_kwh`)."""
    parts = []
    if energy.get("gpu_energy_kwh") is not None:
        parts.append(f"GPUs {format_small_kwh(energy['gpu_energy_kwh'])} kWh "
                     f"({energy.get('method')})")
    cpu_kwh, method = energy.get("cpu_energy_kwh"), cpu_method_of(energy)
    if cpu_kwh is not None:
        how = method
        if method == CPU_ESTIMATE:
            how = "estimate"
            if energy.get("cpu_seconds") is not None and energy.get("cpu_watts_per_core"):
                how += (f": {energy['cpu_seconds']:,.0f} CPU-seconds x "
                        f"{energy['cpu_watts_per_core']:g} W per core")
        parts.append(f"CPU {format_small_kwh(cpu_kwh)} kWh ({how})"
                     + ("" if cpu_in_total(energy) else ", not in the total"))
    return ", ".join(parts) or MISSING


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (no trailing newline); ``|`` inside a cell is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"
    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(row) for row in rows)])


def ap_columns(metrics: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """:data:`AP_COLUMNS`, with APs inserted when some task has an APs figure."""
    columns = list(AP_COLUMNS)
    if any(format_ap(figures.get("APs")) != MISSING for figures in metrics.values()):
        columns.insert(3, "APs")
    return columns


def ap_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The study's Markdown table of one evaluation: rows Bounding Box / Segmentation,
    columns AP AP50 AP75 [APs] APm APl (``metrics``: metrics.json's ``bbox``/``segm``)."""
    columns = ap_columns(metrics)
    rows = [[TASK_NAMES.get(task, task), *(format_ap(figures.get(name)) for name in columns)]
            for task, figures in metrics.items() if task in TASK_NAMES]
    return markdown_table(["task", *columns], rows)


def efficiency_row(summary: Dict[str, Any]) -> Dict[str, str]:
    """The study's efficiency columns for one run, as Markdown-ready strings.

    Args:
        summary: from :meth:`maskdla.energy.EnergyMeter.summary` or
            :func:`maskdla.energy.merge_node_summaries`, with ``duration_s``.

    Returns:
        ``{"Training Time": "1 h 54 min", "Mem GPU1": "3,247 MiB", "Mem GPU2": ..., "kWh":
        "0.684", "Cost": "0.168 EUR"}`` in that order: one ``Mem GPU<i>`` per GPU (peak memory
        used, as nvidia-smi shows it), none without GPUs; :data:`MISSING` for what was not
        measured. kWh and cost are the run's total (GPUs plus CPU packages where RAPL was
        readable; without GPUs, the CPU alone), followed by :data:`ESTIMATE` where the
        summary's ``energy_estimate`` says they hold one (``"0.012 (estimate)"``).
    """
    row = {"Training Time": format_duration(summary["duration_s"])}
    for number, gpu in enumerate(summary.get("gpus", []), start=1):
        peak = gpu.get("peak_memory_mib")
        row[f"Mem GPU{number}"] = MISSING if peak is None else f"{round(peak):,} MiB"
    estimate = bool(summary.get("energy_estimate"))
    money = summary.get("cost")
    row["kWh"] = format_kwh(summary.get("energy_kwh"), estimate)
    row["Cost"] = (MISSING if money is None else
                   " ".join(part for part in (f"{money:.3f}", summary.get("currency") or "",
                                              ESTIMATE if estimate else "") if part))
    return row


def summary_markdown(config: "TrainConfig", summary: Dict[str, Any]) -> str:
    """A run's summary.md: the run's settings, its efficiency row (the study's columns) and
    the AP table of its test evaluation (``summary``: summary.json's contents)."""
    lines = [f"# Run {config.run_dir.name}", "",
             f"- backbone: {config.backbone}, epochs: {config.epochs:g}, batch: "
             f"{config.batch_size} x {summary['world_size']} processes, train images: "
             f"{summary['train_size']}, iterations: {summary['iterations']}",
             f"- training time: {format_duration(summary['training_time_s'])}, "
             f"{summary['images_per_s']:.2f} images/s",
             *_stability_lines(summary), ""]
    energy = summary.get("energy")
    if energy:
        row = efficiency_row(dict(energy, duration_s=summary["training_time_s"]))
        lines += [markdown_table(list(row), [list(row.values())]), ""]
        lines.append(f"- GPU energy method: {energy['method']}"
                     + (f" ({energy['nodes'][0].get('gpu_unavailable_reason')})"
                        if energy["method"] == "unavailable" and energy.get("nodes") else ""))
        lines.append(f"- energy: {energy_breakdown(energy)}")
        rss = energy.get("nodes", [{}])[0].get("process_peak_rss_mib")
        if rss:
            lines.append(f"- peak process memory (RSS): {rss:,.0f} MiB")
        lines.append("")
    lines += ["## Evaluation on the test split", "", *_evaluated_lines(summary),
              ap_table(summary["metrics"]), ""]
    return "\n".join(lines)


def _stability_lines(summary: Dict[str, Any]) -> List[str]:
    """Why the run stopped, and how often the NaN policy and clipping acted."""
    lines = []
    if summary.get("stop_reason"):
        lines.append(f"- stopped: {summary['stop_reason']}")
    if "skipped_steps" in summary:
        lines.append(f"- steps skipped for a NaN/inf loss: {summary['skipped_steps']}; "
                     f"steps whose gradients were clipped: {summary.get('clipped_steps', 0)} "
                     f"of {summary['iterations']}")
    return lines


def _evaluated_lines(summary: Dict[str, Any]) -> List[str]:
    evaluated = summary.get("evaluated")
    if not evaluated:
        return []
    text = f"Weights: {evaluated['checkpoint']} (iteration {evaluated['iteration']}"
    if evaluated.get("best_metric"):
        text += (f", the best {evaluated['best_metric']} on the {evaluated['split']} split: "
                 f"{evaluated['value']:.2f}")
    return [text + ").", ""]
