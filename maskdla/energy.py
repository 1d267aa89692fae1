"""What a run costs: time, GPU memory, utilisation, energy and money, measured inside the run.

:class:`EnergyMeter` is a background thread that samples, once per ``interval`` seconds,

* per GPU (through NVML): power (W), cumulative energy (J), memory used as nvidia-smi shows it
  (MiB), this process's GPU memory (MiB) and utilisation (%);
* for the process: resident memory (MiB) and CPU time (s) of the process and its
  descendants, such as DataLoader workers (:func:`process_tree_cpu_seconds`), as CPU use
  (%, 100 = one core busy);
* for the CPU packages: cumulative energy (J) from RAPL where the powercap files are readable.

GPU energy comes from the NVML total-energy counter (Volta and newer, method ``"counter"``);
where the counter is unsupported it is the trapezoidal integral of the sampled power (method
``"sampled-power"``, what the study did with once-a-second shell sampling). Without NVML or a
GPU the method is ``"unavailable"`` and the meter still reports time, process memory and CPU
energy. The thread never raises into training: every failed reading is counted and skipped.

CPU energy (``cpu_method``) comes from the RAPL package counters where readable (``"rapl"``,
measured, the whole sockets'), else it is an estimate: the process tree's CPU-seconds times
``cpu_watts_per_core`` (``"cpu-seconds-estimate"``). Measured CPU energy adds to the GPUs'
in ``energy_kwh``; the estimate counts there only where no GPU energy was measured (a
CPU-only run), so a measured GPU figure is never mixed with a guess, and then the summary's
``energy_estimate`` is True and every table marks the figure (``maskdla.tables``).

Under DDP only local rank 0 of each node runs a meter (:func:`should_measure`); it measures all
GPUs of its node, so no GPU is counted twice, and :func:`merge_node_summaries` sums the nodes.

The arithmetic of the study (:func:`mean_power_energy_kwh`, :func:`cost`,
:func:`savings_percent`) and of resumed runs (:func:`add_energy`) live here too; the
efficiency row of its tables is :func:`maskdla.tables.efficiency_row`.
"""
from __future__ import annotations

import csv
import glob
import io
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

logger = logging.getLogger(__name__)

JOULES_PER_KWH = 3.6e6
BYTES_PER_MIB = 1024 * 1024

#: Energy methods, best first; a summary over several GPUs reports the weakest one used.
METHODS = ("counter", "sampled-power", "unavailable")

#: The CPU-seconds estimate of CPU energy (where RAPL is unreadable): CPU-seconds x watts.
CPU_ESTIMATE = "cpu-seconds-estimate"
#: CPU energy methods, best first: the RAPL package counters (measured), the estimate, none.
CPU_METHODS = ("rapl", CPU_ESTIMATE, "unavailable")

#: Watts one busy core draws, for the estimate: the Green Algorithms calculator's per-core
#: TDP for an unknown CPU ("Any": 12.0 W; its data/latest/TDP_cpu.csv). Server CPUs in the
#: same table range from 4.4 W (Threadripper 3990X, 280 W / 64 cores) to 7.5 W (Xeon Gold
#: 6148, 150 W / 20 cores); docs/energy.md gives the source and what it leaves out.
DEFAULT_CPU_WATTS_PER_CORE = 12.0

#: Columns of energy.csv, one row per sample per GPU (one row per sample without GPUs).
CSV_COLUMNS = (
    "time_s", "gpu_index", "gpu_uuid", "power_w", "energy_j", "memory_used_mib",
    "process_memory_mib", "utilization", "rss_mib", "cpu_percent", "cpu_energy_j",
    "cpu_seconds",
)

DeviceSpec = Union[int, str]


# --------------------------------------------------------------------------------------------
# The study's arithmetic
# --------------------------------------------------------------------------------------------

def mean_power_energy_kwh(mean_power_w: float, hours: float, gpus: int = 1) -> float:
    """Energy (kWh) of ``gpus`` GPUs drawing ``mean_power_w`` watts each for ``hours`` hours.

    The study's estimate: mean power x GPUs x hours, e.g. 2 x 177 W x 10.8 h = 3.8232 kWh.
    """
    return gpus * mean_power_w / 1000.0 * hours


def cost(kwh: float, price_per_kwh: float) -> float:
    """Money for ``kwh`` kilowatt-hours at ``price_per_kwh`` (unrounded; round when printing)."""
    return kwh * price_per_kwh


def savings_percent(baseline_kwh: float, kwh: float) -> float:
    """Percent of ``baseline_kwh`` saved by using ``kwh`` instead (unrounded).

    Raises:
        ValueError: when ``baseline_kwh`` is not positive.
    """
    if baseline_kwh <= 0:
        raise ValueError(f"baseline energy must be positive, got {baseline_kwh} kWh")
    return (1.0 - kwh / baseline_kwh) * 100.0


# --------------------------------------------------------------------------------------------
# Who measures, and adding up nodes
# --------------------------------------------------------------------------------------------

def should_measure(local_rank: Optional[int] = None) -> bool:
    """Whether this process runs the node's meter: local rank 0 only, so no GPU counts twice.

    Args:
        local_rank: the process's rank within its node; ``None`` reads ``LOCAL_RANK`` (torchrun),
            then ``SLURM_LOCALID``, and means 0 (a single process) when neither is set.
    """
    if local_rank is None:
        text = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
        try:
            local_rank = int(text)
        except ValueError:
            raise InputError(f"LOCAL_RANK must be an integer, got {text!r}") from None
    return local_rank == 0


def _weakest_method(methods: Iterable[str], order: Sequence[str] = METHODS) -> str:
    """The method latest in ``order`` (the weakest) among ``methods``; "unavailable" if none."""
    methods = list(methods)
    if not methods:
        return "unavailable"
    return max(methods, key=order.index)


def cpu_method_of(summary: Dict[str, Any]) -> str:
    """A summary's CPU energy method. Summaries written before the estimate existed have no
    ``cpu_method``: their CPU energy, where there is one, came from RAPL."""
    method = summary.get("cpu_method")
    if method in CPU_METHODS:
        return method
    return "rapl" if summary.get("cpu_energy_kwh") is not None else "unavailable"


def cpu_in_total(summary: Dict[str, Any]) -> bool:
    """Whether a summary's ``energy_kwh`` includes its CPU energy (older summaries: RAPL was
    always added)."""
    return bool(summary.get("cpu_energy_in_total", summary.get("cpu_energy_kwh") is not None))


def _combined_cpu_fields(summaries: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The CPU fields of several summaries (nodes, or segments latest first) added up.

    Returns ``cpu_method``: the weakest among the summaries with a CPU figure;
    ``cpu_energy_in_total``: whether all of those count it in ``energy_kwh``;
    ``energy_estimate``: whether any ``energy_kwh`` holds an estimate;
    ``cpu_watts_per_core``: the first summary's that has one.
    """
    measured = [summary for summary in summaries if cpu_method_of(summary) != "unavailable"]
    watts = [summary["cpu_watts_per_core"] for summary in summaries
             if summary.get("cpu_watts_per_core") is not None]
    return {
        "cpu_method": _weakest_method(map(cpu_method_of, measured), CPU_METHODS),
        "cpu_energy_in_total": bool(measured) and all(map(cpu_in_total, measured)),
        "energy_estimate": any(bool(summary.get("energy_estimate")) for summary in summaries),
        "cpu_watts_per_core": watts[0] if watts else None,
    }


def energy_total(gpu_energy_kwh: Optional[float], cpu_energy_kwh: Optional[float],
                 cpu_method: str) -> Tuple[Optional[float], bool]:
    """The run's ``energy_kwh`` from its parts, and whether the CPU figure is in it.

    RAPL's (measured) CPU energy adds to the GPUs'. The CPU-seconds estimate counts only where
    no GPU energy was measured, so that a measured GPU figure, the one the study compares, is
    never mixed with a guess; beside GPU energy it is reported as ``cpu_energy_kwh`` only.
    None: nothing measured or estimated.
    """
    if cpu_energy_kwh is None or (cpu_method == CPU_ESTIMATE and gpu_energy_kwh is not None):
        return gpu_energy_kwh, False
    return _sum_measured([gpu_energy_kwh, cpu_energy_kwh]), True


def _sum_measured(values: Iterable[Optional[float]]) -> Optional[float]:
    measured = [value for value in values if value is not None]
    return sum(measured) if measured else None


def merge_node_summaries(summaries: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Add up the summaries of one run's nodes (one meter per node) into the run's summary.

    Energies, CPU-seconds and costs are summed, duration is the longest node's, ``gpus`` is
    every node's GPU list in node order (each entry gains ``"node"``: its position in
    ``summaries``), ``method`` and ``cpu_method`` are the weakest used, ``energy_estimate`` is
    True where any node's total holds an estimate, and ``nodes`` keeps each node's summary
    without its GPU list.

    Raises:
        ValueError: on an empty list or summaries with different prices or currencies.
    """
    if not summaries:
        raise ValueError("no node summaries to merge")
    prices = {(summary["price_per_kwh"], summary["currency"]) for summary in summaries}
    if len(prices) > 1:
        raise ValueError(f"node summaries use different prices: {sorted(prices)}")
    price_per_kwh, currency = prices.pop()
    gpus = [dict(gpu, node=node) for node, summary in enumerate(summaries)
            for gpu in summary["gpus"]]
    energy_kwh = _sum_measured(summary["energy_kwh"] for summary in summaries)
    return {
        "duration_s": max(summary["duration_s"] for summary in summaries),
        "method": _weakest_method(summary["method"] for summary in summaries),
        "gpu_available": any(summary["gpu_available"] for summary in summaries),
        "gpus": gpus,
        "gpu_energy_kwh": _sum_measured(summary["gpu_energy_kwh"] for summary in summaries),
        "cpu_energy_kwh": _sum_measured(summary["cpu_energy_kwh"] for summary in summaries),
        **_combined_cpu_fields(summaries),
        "cpu_seconds": _sum_measured(summary.get("cpu_seconds") for summary in summaries),
        "cpu_estimate_kwh": _sum_measured(summary.get("cpu_estimate_kwh")
                                          for summary in summaries),
        "energy_kwh": energy_kwh,
        "cost": None if energy_kwh is None else cost(energy_kwh, price_per_kwh),
        "price_per_kwh": price_per_kwh,
        "currency": currency,
        "nodes": [{key: value for key, value in summary.items() if key != "gpus"}
                  for summary in summaries],
    }


def add_energy(earlier: Optional[Dict[str, Any]], later: Optional[Dict[str, Any]]
               ) -> Optional[Dict[str, Any]]:
    """Energy summary of a run resumed after ``earlier`` (None: no earlier segment): the
    later segment's summary with durations, energies, CPU-seconds and costs added up, peaks
    maxed, and the CPU method and estimate mark of both (:func:`merge_node_summaries`)."""
    if earlier is None or later is None:
        return later or earlier
    total = dict(later, segments=earlier.get("segments", 1) + 1)
    for key in ("duration_s", "gpu_energy_kwh", "cpu_energy_kwh", "energy_kwh", "cost",
                "cpu_seconds", "cpu_estimate_kwh"):
        if earlier.get(key) is not None:
            total[key] = earlier[key] + (later.get(key) or 0.0)
    total.update(_combined_cpu_fields([later, earlier]))
    gpus = []
    for index, gpu in enumerate(later.get("gpus", [])):
        before = earlier["gpus"][index] if index < len(earlier.get("gpus", [])) else {}
        gpu = dict(gpu)
        gpu["energy_kwh"] = gpu.get("energy_kwh", 0.0) + before.get("energy_kwh", 0.0)
        peaks = [value for value in (gpu.get("peak_memory_mib"), before.get("peak_memory_mib"))
                 if value is not None]
        gpu["peak_memory_mib"] = max(peaks) if peaks else None
        gpus.append(gpu)
    total["gpus"] = gpus
    return total


# --------------------------------------------------------------------------------------------
# Process and CPU package readings
# --------------------------------------------------------------------------------------------

def process_rss_mib() -> Optional[float]:
    """Resident memory of this process in MiB from /proc/self/status; None where unreadable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used, in seconds."""
    times = os.times()
    return times.user + times.system


def _clock_ticks_per_s() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return 100


#: the unit of the CPU times in /proc/<pid>/stat
CLOCK_TICKS_PER_S = _clock_ticks_per_s()


def _stat_fields(proc_root: str, pid: int) -> Optional[List[bytes]]:
    """The fields of ``<proc_root>/<pid>/stat`` after the command name, from field 3 (state)
    on; None where the process is gone or the file is malformed."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "rb") as stat_file:
            text = stat_file.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    fields = text[text.rfind(b")") + 2:].split()
    return fields if len(fields) >= 15 else None


def _stat_cpu_ticks(fields: List[bytes]) -> int:
    """utime + stime + cutime + cstime (fields 14-17) in clock ticks: the process's own CPU
    time and that of the children it has waited for."""
    return sum(int(value) for value in fields[11:15])


def _children_by_task_files(proc_root: str, pid: int) -> List[int]:
    """Child pids of ``pid`` from ``<proc_root>/<pid>/task/<tid>/children`` (one per thread)."""
    children: List[int] = []
    for path in glob.glob(os.path.join(proc_root, str(pid), "task", "*", "children")):
        try:
            with open(path) as children_file:
                children += [int(value) for value in children_file.read().split()]
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return children


def _children_by_scan(proc_root: str) -> Dict[int, List[int]]:
    """Parent pid -> child pids, from the parent field of every ``<proc_root>/<pid>/stat``."""
    children: Dict[int, List[int]] = {}
    try:
        names = os.listdir(proc_root)
    except OSError:
        return children
    for name in names:
        if name.isdigit():
            fields = _stat_fields(proc_root, int(name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(name))
    return children


def live_descendants_cpu_seconds(pid: Optional[int] = None, proc_root: str = "/proc") -> float:
    """CPU time (s) of the live descendants of ``pid`` (default: this process), each with the
    children it has waited for, from their ``<proc_root>/<pid>/stat``; 0.0 without /proc.

    Children come from ``/proc/<pid>/task/<tid>/children`` where the kernel has that file
    (CONFIG_PROC_CHILDREN; reading it costs a few files), else from a scan of every process's
    parent pid (about 7 us per process on the 2-core test machine).
    """
    pid = os.getpid() if pid is None else pid
    ticks = 0
    for child in _descendants(proc_root, pid):
        fields = _stat_fields(proc_root, child)
        if fields is not None:  # else it ended meanwhile: its parent's figures hold it once reaped
            ticks += _stat_cpu_ticks(fields)
    return ticks / CLOCK_TICKS_PER_S


def _descendants(proc_root: str, pid: int) -> List[int]:
    """Pids of the live descendants of ``pid`` (children, grandchildren, ...)."""
    if glob.glob(os.path.join(proc_root, str(pid), "task", "*", "children")):
        def children_of(parent: int) -> List[int]:
            return _children_by_task_files(proc_root, parent)
    else:
        table = _children_by_scan(proc_root)

        def children_of(parent: int) -> List[int]:
            return table.get(parent, [])
    found: List[int] = []
    seen, pending = {pid}, list(children_of(pid))  # a copy: the walk must not edit the table
    while pending:
        child = pending.pop()
        if child not in seen:  # a pid reused while walking must not loop
            seen.add(child)
            found.append(child)
            pending += children_of(child)
    return found


def process_tree_cpu_seconds(proc_root: str = "/proc") -> float:
    """CPU time (user + system, all threads, in seconds) of this process and its descendants:
    its own and that of the children it has waited for (``os.times``: e.g. the DataLoader
    workers of a finished epoch), plus the live descendants' (:func:`live_descendants_cpu_seconds`:
    e.g. the workers of the current epoch). This is what the CPU energy estimate multiplies.

    ``os.times`` is read first: a child reaped between the two reads is missed once (the meter
    keeps its running figure from going down, and the next reading counts it), never twice.
    """
    times = os.times()
    tree = times.user + times.system + times.children_user + times.children_system
    return tree + live_descendants_cpu_seconds(proc_root=proc_root)


@dataclass
class _RaplDomain:
    energy_path: str
    max_range_uj: int
    last_uj: int


class RaplReader:
    """Cumulative energy of the CPU packages from Linux powercap (RAPL), wraparound handled.

    Only package domains (``<root>/intel-rapl:<N>`` named ``package-*``) count: their
    subdomains (core, uncore, dram) lie inside them, and ``psys`` spans the whole platform.
    ``available`` is False where no package counter is readable (often root-only).
    """

    def __init__(self, root: str = "/sys/class/powercap"):
        self.domains: List[_RaplDomain] = []
        self.energy_j = 0.0
        for folder in sorted(glob.glob(os.path.join(root, "intel-rapl:*"))):
            if os.path.basename(folder).count(":") != 1:
                continue  # a subdomain such as intel-rapl:0:0
            try:
                with open(os.path.join(folder, "name")) as name_file:
                    if not name_file.read().strip().startswith("package"):
                        continue
                with open(os.path.join(folder, "max_energy_range_uj")) as range_file:
                    max_range_uj = int(range_file.read())
                energy_path = os.path.join(folder, "energy_uj")
                self.domains.append(_RaplDomain(energy_path, max_range_uj,
                                                self._read_uj(energy_path)))
            except (OSError, ValueError):
                continue

    @property
    def available(self) -> bool:
        return bool(self.domains)

    @staticmethod
    def _read_uj(path: str) -> int:
        with open(path) as energy_file:
            return int(energy_file.read())

    def read_j(self) -> float:
        """Joules used by all packages since this reader was made (unreadable reads skipped)."""
        for domain in self.domains:
            try:
                value_uj = self._read_uj(domain.energy_path)
            except (OSError, ValueError):
                continue
            delta_uj = value_uj - domain.last_uj
            if delta_uj < 0:  # the counter wrapped around at max_energy_range_uj
                delta_uj += domain.max_range_uj
            domain.last_uj = value_uj
            self.energy_j += delta_uj / 1e6
        return self.energy_j


# --------------------------------------------------------------------------------------------
# NVML devices
# --------------------------------------------------------------------------------------------

def _load_pynvml() -> Any:
    """The real NVML binding (package nvidia-ml-py), or None when it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _visible_device_specs(devices: Optional[Sequence[DeviceSpec]]) -> Optional[List[DeviceSpec]]:
    """The devices to measure: ``devices`` as given, else what CUDA_VISIBLE_DEVICES names.

    Returns None for "every device NVML sees" (CUDA_VISIBLE_DEVICES unset). Like CUDA, an
    invalid entry ends the list.
    """
    if devices is not None:
        return list(devices)
    text = os.environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return None
    specs: List[DeviceSpec] = []
    for entry in text.split(","):
        entry = entry.strip()
        if entry.lstrip("-").isdigit():
            if int(entry) < 0:
                break
            specs.append(int(entry))
        elif entry.startswith(("GPU-", "MIG-")):
            specs.append(entry)
        else:
            break
    return specs


def _handle_for(nvml: Any, spec: DeviceSpec) -> Any:
    """NVML handle of a device named by NVML index or by UUID (or a unique UUID prefix)."""
    if isinstance(spec, str) and spec.isdigit():
        spec = int(spec)
    if isinstance(spec, int):
        return nvml.nvmlDeviceGetHandleByIndex(spec)
    try:
        return nvml.nvmlDeviceGetHandleByUUID(spec)
    except Exception:
        # CUDA accepts a unique prefix of a UUID; NVML wants it whole.
        matches = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            if _as_str(nvml.nvmlDeviceGetUUID(handle)).startswith(spec):
                matches.append(handle)
        if len(matches) != 1:
            raise
        return matches[0]


def _as_str(value: Union[str, bytes]) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _GpuState:
    """One GPU's running totals. ``index`` is its CUDA ordinal (cuda:<index>)."""
    index: int
    uuid: str
    name: str
    handle: Any
    method: str
    counter_last_mj: Optional[int] = None
    counter_energy_j: float = 0.0
    counter_resets: int = 0
    power_last: Optional[Tuple[float, float]] = None  # (time_s, power_w)
    sampled_energy_j: float = 0.0
    memory_v2: bool = True
    samples: int = 0
    errors: int = 0
    memory_sum: float = 0.0
    memory_count: int = 0
    memory_peak: Optional[float] = None
    process_memory_sum: float = 0.0
    process_memory_count: int = 0
    process_memory_peak: Optional[float] = None
    utilization_sum: float = 0.0
    utilization_count: int = 0
    last_error: Optional[str] = field(default=None, repr=False)

    @property
    def energy_j(self) -> float:
        return self.counter_energy_j if self.method == "counter" else self.sampled_energy_j


def _add(total: float, count: int, peak: Optional[float], value: float
         ) -> Tuple[float, int, float]:
    return total + value, count + 1, value if peak is None else max(peak, value)


# --------------------------------------------------------------------------------------------
# The meter
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeterSources:
    """Where an :class:`EnergyMeter` takes its readings from (tests pass fakes here).

    Attributes:
        nvml: the NVML binding to use (an object with pynvml's functions); None = the real
            pynvml where importable.
        powercap_root: folder holding the RAPL powercap domains.
        cpu_seconds: the CPU-seconds clock the CPU energy estimate and CPU use read, called
            once per sample; default :func:`process_tree_cpu_seconds`.
        process_ids: processes whose GPU memory counts as "process memory"; None = this one.
    """

    nvml: Any = None
    powercap_root: str = "/sys/class/powercap"
    cpu_seconds: Callable[[], float] = process_tree_cpu_seconds
    process_ids: Optional[Iterable[int]] = None


class EnergyMeter:
    """Background thread measuring time, GPU memory/utilisation/energy, process memory/CPU
    and CPU package energy; see the module docstring.

    Args:
        interval: seconds between samples (the study sampled once a second).
        devices: GPUs to measure, as NVML indices or UUIDs; None = the devices
            CUDA_VISIBLE_DEVICES names (matched by UUID, or by index when integers), or every
            device when it is unset.
        price_per_kwh: electricity price used for ``cost``.
        currency: name of the price's currency, for display.
        csv_path: where to write the timeline (see :data:`CSV_COLUMNS`) when the meter stops,
            atomically; None = no file. Its folder must exist.
        cpu_watts_per_core: watts one busy core draws, for the CPU energy estimate where RAPL
            is unreadable (:data:`DEFAULT_CPU_WATTS_PER_CORE`).
        sources: where the readings come from (:class:`MeterSources`: the NVML binding, the
            RAPL folder, the CPU-seconds clock, the processes whose GPU memory counts); tests
            pass fakes.

    Use ``with EnergyMeter(...) as meter: train()`` or ``meter.start()`` ... ``meter.stop()``;
    then ``meter.summary()``. Stopping is immediate, and also happens when the ``with`` body
    raises or is interrupted by Ctrl-C.
    """

    def __init__(self, interval: float = 1.0, devices: Optional[Sequence[DeviceSpec]] = None,
                 price_per_kwh: float = 0.246, currency: str = "EUR",
                 csv_path: Optional[Union[str, os.PathLike]] = None, *,
                 cpu_watts_per_core: float = DEFAULT_CPU_WATTS_PER_CORE,
                 sources: MeterSources = MeterSources()):
        if not interval > 0:
            raise ValueError(f"interval must be positive, got {interval}")
        if not price_per_kwh >= 0:
            raise ValueError(f"price_per_kwh must be >= 0, got {price_per_kwh}")
        if not (cpu_watts_per_core > 0 and math.isfinite(cpu_watts_per_core)):
            raise ValueError(f"cpu_watts_per_core must be a positive number, got "
                             f"{cpu_watts_per_core}")
        self.cpu_watts_per_core = float(cpu_watts_per_core)
        self._cpu_seconds = sources.cpu_seconds
        self.interval = float(interval)
        self.devices = None if devices is None else list(devices)
        self.price_per_kwh = float(price_per_kwh)
        self.currency = currency
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.process_ids = ({os.getpid()} if sources.process_ids is None
                            else set(sources.process_ids))
        self._nvml = sources.nvml
        self._powercap_root = sources.powercap_root
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._gpus: List[_GpuState] = []
        self._nvml_ready = False
        self.gpu_unavailable_reason: Optional[str] = None
        self._rapl: Optional[RaplReader] = None
        self._rows: List[Tuple[Any, ...]] = []
        self._start_time: Optional[float] = None
        self._end_time: Optional[float] = None
        self._first_cpu: Optional[Tuple[float, float]] = None  # (time_s, cpu seconds)
        self._last_cpu: Optional[Tuple[float, float]] = None
        self._rapl_energy_j: Optional[float] = None
        self._process = {"rss_sum": 0.0, "rss_count": 0, "rss_peak": None}
        self.samples = 0
        self.errors = 0
        self.write_error: Optional[str] = None
        self._thread_cpu_s: Optional[float] = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> "EnergyMeter":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "EnergyMeter":
        """Open NVML and RAPL, take the first sample (time 0) and start the sampling thread.

        Raises:
            RuntimeError: when the meter was started before.
            InputError: when ``csv_path``'s folder does not exist.
        """
        if self._start_time is not None:
            raise RuntimeError("an EnergyMeter can be started only once")
        if self.csv_path is not None:
            folder = os.path.dirname(os.path.abspath(self.csv_path))
            if not os.path.isdir(folder):
                raise InputError("folder for the energy timeline does not exist", folder)
        self._open_gpus()
        self._rapl = RaplReader(self._powercap_root)
        self._start_time = time.monotonic()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="maskdla-energy-meter",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread now (not after a full interval), take the last sample, close NVML
        and write the timeline. Safe to call twice or before :meth:`start`."""
        if self._thread is None or self._end_time is not None:
            return
        self._stop_event.set()
        # A hung driver call must not hang training's exit: give up on the thread after a while.
        self._thread.join(timeout=max(5.0, 2 * self.interval))
        if self._thread.is_alive():
            logger.warning("energy meter thread did not stop; last sample skipped")
            self._end_time = time.monotonic()
        else:
            self.sample()
            self._end_time = time.monotonic()
            self._close_gpus()
        if self.csv_path is not None:
            try:
                self._write_csv(self.csv_path)
            except (OSError, InputError) as error:  # measuring must not fail a finished run
                self.write_error = f"{self.csv_path}: {error}"
                logger.warning("could not write the energy timeline: %s", self.write_error)

    def _run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()
        self._thread_cpu_s = time.thread_time()  # what measuring cost, for the summary

    # ---------------------------------------------------------------- NVML

    def _open_gpus(self) -> None:
        nvml = self._nvml if self._nvml is not None else _load_pynvml()
        if nvml is None:
            self.gpu_unavailable_reason = "NVML library (nvidia-ml-py) not installed"
            return
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as error:
            self.gpu_unavailable_reason = f"NVML could not start: {error}"
            return
        self._nvml_ready = True
        try:
            specs = _visible_device_specs(self.devices)
            if specs is None:
                specs = list(range(nvml.nvmlDeviceGetCount()))
            for index, spec in enumerate(specs):
                handle = _handle_for(nvml, spec)
                counter_mj = self._energy_counter_mj(handle)
                self._gpus.append(_GpuState(
                    index=index, uuid=_as_str(nvml.nvmlDeviceGetUUID(handle)),
                    name=_as_str(nvml.nvmlDeviceGetName(handle)), handle=handle,
                    method="sampled-power" if counter_mj is None else "counter",
                    counter_last_mj=counter_mj))
        except Exception as error:
            self._gpus = []
            self.gpu_unavailable_reason = f"NVML could not open the GPUs: {error}"
            self._close_gpus()
            return
        if not self._gpus:
            self.gpu_unavailable_reason = "no GPU visible"
            self._close_gpus()

    def _energy_counter_mj(self, handle: Any) -> Optional[int]:
        """The energy counter's value (mJ), the base of the counter method; None where the GPU
        has none (pre-Volta), which selects the sampled-power method."""
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception:
            return None

    def _close_gpus(self) -> None:
        if self._nvml_ready:
            self._nvml_ready = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def _read(self, gpu: _GpuState, function_name: str, *args: Any, **kwargs: Any) -> Any:
        """One NVML call; a failure is counted on the GPU and gives None."""
        try:
            return getattr(self._nvml, function_name)(gpu.handle, *args, **kwargs)
        except Exception as error:
            gpu.errors += 1
            gpu.last_error = f"{function_name}: {error}"
            return None

    def _memory_used_mib(self, gpu: _GpuState) -> Optional[float]:
        # v2 excludes memory the driver reserves, so "used" matches what nvidia-smi shows.
        version_2 = getattr(self._nvml, "nvmlMemory_v2", None)
        if gpu.memory_v2 and version_2 is not None:
            try:
                return self._nvml.nvmlDeviceGetMemoryInfo(gpu.handle,
                                                          version=version_2).used / BYTES_PER_MIB
            except Exception:
                gpu.memory_v2 = False  # older driver: fall back to v1 for the rest of the run
        info = self._read(gpu, "nvmlDeviceGetMemoryInfo")
        return None if info is None else info.used / BYTES_PER_MIB

    def _process_memory_mib(self, gpu: _GpuState) -> Optional[float]:
        processes = self._read(gpu, "nvmlDeviceGetComputeRunningProcesses")
        if processes is None:
            return None
        used = [process.usedGpuMemory for process in processes if process.pid in self.process_ids]
        if any(value is None for value in used):
            return None  # the driver does not report per-process memory here
        return sum(used) / BYTES_PER_MIB

    def _sample_gpu(self, gpu: _GpuState, time_s: float) -> Tuple[Any, ...]:
        power_mw = self._read(gpu, "nvmlDeviceGetPowerUsage")
        power_w = None if power_mw is None else power_mw / 1000.0
        if power_w is not None:
            if gpu.power_last is not None:
                last_time, last_power = gpu.power_last
                gpu.sampled_energy_j += (last_power + power_w) / 2.0 * (time_s - last_time)
            gpu.power_last = (time_s, power_w)
        if gpu.method == "counter":
            counter_mj = self._read(gpu, "nvmlDeviceGetTotalEnergyConsumption")
            if counter_mj is not None:
                if gpu.counter_last_mj is not None:
                    if counter_mj >= gpu.counter_last_mj:
                        gpu.counter_energy_j += (counter_mj - gpu.counter_last_mj) / 1000.0
                    else:  # the driver reset the counter: the new value is a fresh base
                        gpu.counter_resets += 1
                gpu.counter_last_mj = counter_mj
        memory = self._memory_used_mib(gpu)
        if memory is not None:
            gpu.memory_sum, gpu.memory_count, gpu.memory_peak = _add(
                gpu.memory_sum, gpu.memory_count, gpu.memory_peak, memory)
        process_memory = self._process_memory_mib(gpu)
        if process_memory is not None:
            (gpu.process_memory_sum, gpu.process_memory_count,
             gpu.process_memory_peak) = _add(gpu.process_memory_sum, gpu.process_memory_count,
                                             gpu.process_memory_peak, process_memory)
        rates = self._read(gpu, "nvmlDeviceGetUtilizationRates")
        utilization = None if rates is None else float(rates.gpu)
        if utilization is not None:
            gpu.utilization_sum += utilization
            gpu.utilization_count += 1
        gpu.samples += 1
        return (gpu.index, gpu.uuid, power_w, gpu.energy_j, memory, process_memory, utilization)

    # ---------------------------------------------------------------- sampling

    def sample(self) -> None:
        """Take one sample of everything now (the thread does this every ``interval``); never
        raises: failures are counted."""
        try:
            with self._lock:
                self._sample_locked()
        except Exception as error:  # a bug here must not stop training either
            self.errors += 1
            logger.debug("energy sample failed: %s", error)

    def _sample_locked(self) -> None:
        time_s = time.monotonic() - self._start_time
        rss = process_rss_mib()
        if rss is not None:
            process = self._process
            process["rss_sum"], process["rss_count"], process["rss_peak"] = _add(
                process["rss_sum"], process["rss_count"], process["rss_peak"], rss)
        cpu_percent = self._sample_cpu_seconds(time_s)
        if self._rapl is not None and self._rapl.available:
            self._rapl_energy_j = self._rapl.read_j()
        cpu_seconds = (None if self._first_cpu is None
                       else self._last_cpu[1] - self._first_cpu[1])
        process_columns = (rss, cpu_percent, self._rapl_energy_j, cpu_seconds)
        if self._gpus:
            for gpu in self._gpus:
                errors_before = gpu.errors
                gpu_columns = self._sample_gpu(gpu, time_s)
                self.errors += gpu.errors - errors_before
                if self.csv_path is not None:
                    self._rows.append((time_s,) + gpu_columns + process_columns)
        elif self.csv_path is not None:
            self._rows.append((time_s, None, None, None, None, None, None, None) + process_columns)
        self.samples += 1

    def _sample_cpu_seconds(self, time_s: float) -> Optional[float]:
        """Read the CPU-seconds clock; returns CPU use (%) since the last reading (None at the
        first, or when the reading failed: counted in ``errors``)."""
        try:
            cpu_s = float(self._cpu_seconds())
        except Exception as error:  # e.g. /proc vanishing under us; never stop the sample
            self.errors += 1
            logger.debug("CPU time reading failed: %s", error)
            return None
        if self._last_cpu is None:
            self._first_cpu = self._last_cpu = (time_s, cpu_s)
            return None
        # A child reaped between the clock's two reads is missed once: never let the
        # cumulative figure go down, the next reading catches up.
        cpu_now = (time_s, max(cpu_s, self._last_cpu[1]))
        cpu_percent = (_cpu_percent(self._last_cpu, cpu_now)
                       if cpu_now[0] > self._last_cpu[0] else None)
        self._last_cpu = cpu_now
        return cpu_percent

    # ---------------------------------------------------------------- results

    def _duration_s(self) -> float:
        if self._start_time is None:
            return 0.0
        end = self._end_time if self._end_time is not None else time.monotonic()
        return end - self._start_time

    def summary(self) -> Dict[str, Any]:
        """What the run cost so far (final after :meth:`stop`), as a JSON-serialisable dict.

        Keys: ``duration_s``; ``method`` ("counter", "sampled-power" or "unavailable"; the
        weakest over the GPUs); ``gpu_available`` and ``gpu_unavailable_reason``; ``gpus``: per
        GPU ``index`` (CUDA ordinal), ``uuid``, ``name``, ``method``, ``energy_kwh``,
        ``sampled_power_energy_kwh`` (trapezoid of sampled power, also kept on the counter path
        for comparison), ``mean_power_w`` (energy / duration), ``mean_memory_mib``,
        ``peak_memory_mib``, ``mean_process_memory_mib``, ``peak_process_memory_mib``,
        ``mean_utilization``, ``samples``, ``errors``, ``counter_resets``; ``gpu_energy_kwh``
        (None without GPUs); ``cpu_method`` (:data:`CPU_METHODS`), ``cpu_energy_kwh`` (by
        that method: RAPL packages, else the estimate), ``cpu_seconds`` (CPU time of the
        process tree), ``cpu_watts_per_core``, ``cpu_estimate_kwh`` (CPU-seconds x watts,
        also kept beside RAPL for comparison); ``energy_kwh`` (:func:`energy_total`; None if
        nothing), ``cpu_energy_in_total``, ``energy_estimate`` (whether ``energy_kwh`` and
        ``cost`` are an estimate), ``cost``, ``price_per_kwh``, ``currency``; process
        ``process_mean_rss_mib``, ``process_peak_rss_mib``, ``process_mean_cpu_percent``
        (process tree); ``interval_s``, ``meter_cpu_s`` (CPU time of the meter thread, once
        stopped), ``samples``, ``errors``, ``hostname``.
        """
        # A thread stuck in a driver call holds the lock: then read without it.
        locked = self._lock.acquire(timeout=5.0)
        try:
            duration_s = self._duration_s()
            gpus = [self._gpu_summary(gpu, duration_s) for gpu in self._gpus]
            process = dict(self._process)
            rapl_energy_j = self._rapl_energy_j
            first_cpu, last_cpu = self._first_cpu, self._last_cpu
            samples, errors = self.samples, self.errors
        finally:
            if locked:
                self._lock.release()
        mean_cpu_percent = (None if first_cpu is None or last_cpu[0] <= first_cpu[0]
                            else _cpu_percent(first_cpu, last_cpu))
        cpu_seconds = None if first_cpu is None else last_cpu[1] - first_cpu[1]
        cpu_estimate_kwh = (None if cpu_seconds is None
                            else cpu_seconds * self.cpu_watts_per_core / JOULES_PER_KWH)
        if rapl_energy_j is not None:
            cpu_method, cpu_energy_kwh = "rapl", rapl_energy_j / JOULES_PER_KWH
        elif cpu_estimate_kwh is not None:
            cpu_method, cpu_energy_kwh = CPU_ESTIMATE, cpu_estimate_kwh
        else:
            cpu_method, cpu_energy_kwh = "unavailable", None
        gpu_energy_kwh = sum(gpu["energy_kwh"] for gpu in gpus) if gpus else None
        energy_kwh, cpu_counted = energy_total(gpu_energy_kwh, cpu_energy_kwh, cpu_method)
        return {
            "duration_s": duration_s,
            "method": _weakest_method(gpu["method"] for gpu in gpus),
            "gpu_available": bool(gpus),
            "gpu_unavailable_reason": None if gpus else self.gpu_unavailable_reason,
            "gpus": gpus,
            "gpu_energy_kwh": gpu_energy_kwh,
            "cpu_method": cpu_method,
            "cpu_energy_kwh": cpu_energy_kwh,
            "cpu_seconds": cpu_seconds,
            "cpu_watts_per_core": self.cpu_watts_per_core,
            "cpu_estimate_kwh": cpu_estimate_kwh,
            "energy_kwh": energy_kwh,
            "cpu_energy_in_total": cpu_counted,
            "energy_estimate": cpu_counted and cpu_method == CPU_ESTIMATE,
            "cost": None if energy_kwh is None else cost(energy_kwh, self.price_per_kwh),
            "price_per_kwh": self.price_per_kwh,
            "currency": self.currency,
            "process_mean_rss_mib": _mean(process["rss_sum"], process["rss_count"]),
            "process_peak_rss_mib": process["rss_peak"],
            "process_mean_cpu_percent": mean_cpu_percent,
            "interval_s": self.interval,
            "meter_cpu_s": self._thread_cpu_s,
            "samples": samples,
            "errors": errors,
            "hostname": socket.gethostname(),
        }

    @staticmethod
    def _gpu_summary(gpu: _GpuState, duration_s: float) -> Dict[str, Any]:
        return {
            "index": gpu.index,
            "uuid": gpu.uuid,
            "name": gpu.name,
            "method": gpu.method,
            "energy_kwh": gpu.energy_j / JOULES_PER_KWH,
            "sampled_power_energy_kwh": gpu.sampled_energy_j / JOULES_PER_KWH,
            "mean_power_w": gpu.energy_j / duration_s if duration_s > 0 else None,
            "mean_memory_mib": _mean(gpu.memory_sum, gpu.memory_count),
            "peak_memory_mib": gpu.memory_peak,
            "mean_process_memory_mib": _mean(gpu.process_memory_sum, gpu.process_memory_count),
            "peak_process_memory_mib": gpu.process_memory_peak,
            "mean_utilization": _mean(gpu.utilization_sum, gpu.utilization_count),
            "samples": gpu.samples,
            "errors": gpu.errors,
            "counter_resets": gpu.counter_resets,
            "last_error": gpu.last_error,
        }

    def _write_csv(self, path: str) -> None:
        """Write the timeline to ``path`` atomically."""
        rows = list(self._rows)  # a snapshot: a stuck thread may still append
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(["" if value is None else
                             round(value, 6) if isinstance(value, float) else value
                             for value in row])
        write_bytes_atomic(path, text.getvalue().encode("utf-8"))


def _mean(total: float, count: int) -> Optional[float]:
    return total / count if count else None


def _cpu_percent(earlier: Tuple[float, float], later: Tuple[float, float]) -> float:
    """CPU use between two (time_s, cpu seconds) readings; 100 = one core busy."""
    return (later[1] - earlier[1]) / (later[0] - earlier[0]) * 100.0
