"""Where each run of an experiment file stands: ``python -m maskdla.experiments status FILE``.

Read from the run folder (launch.json, log.jsonl, metrics.json, summary.json, the job's
stderr and submitit's result file) and, for SLURM jobs where ``squeue`` is on the PATH,
from the queue. One line per run: not started, queued, running at epoch x of y, finished
with its AP, failed with its last error line, or stopped (resumable).
"""
from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from maskdla.experiments.grid import Experiment, _default
from maskdla.files import read_json

#: submitit's folder inside a run folder.
SUBMITIT_DIR = "submitit"
LAUNCH_RECORD = "launch.json"
#: stderr of a run trained by the local launcher (it is also shown on the terminal).
LOCAL_STDERR = "train_stderr.log"

#: squeue states of a job that is waiting for its resources.
QUEUED_STATES = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED")
#: A line of an error (Python's exception line, maskdla's one-line errors, the kernel's).
ERROR_LINE = re.compile(r"^(maskdla: |[\w.]*(Error|Exception|Interrupt|Diverged|Exit)\b|Killed"
                        r"|srun: error|slurmstepd: error)")
#: tqdm's progress bar, which shares stderr with the errors.
PROGRESS_LINE = re.compile(r"\d+/\d+ \[|it/s\]|s/it\]")


def read_launch(experiment: Experiment) -> Optional[Dict[str, Any]]:
    """The run's launch.json (None when it was never launched)."""
    path = experiment.out / LAUNCH_RECORD
    return read_json(path, "launch record") if path.is_file() else None


def last_error_line(text: str) -> str:
    """The last error line of a stderr text ("" when there is none): the exception line
    after a traceback, or ``maskdla: error: ...``; progress bars are passed over."""
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    lines = [line for line in lines if not PROGRESS_LINE.search(line)]
    for line in reversed(lines):
        if ERROR_LINE.match(line):
            return line
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _squeue_state(job_id: str) -> Optional[str]:
    """The job's state in the queue (PENDING, RUNNING, ...); None when there is no squeue
    here or the job has left the queue."""
    if shutil.which("squeue") is None:
        return None
    try:
        result = subprocess.run(["squeue", "--noheader", "--jobs", job_id, "--format=%T"],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = result.stdout.split()
    return states[0] if result.returncode == 0 and states else None


def _submitit_result(folder: Path, job_id: str) -> Optional[Tuple[str, object]]:
    """("success", value) or ("error", traceback) from submitit's result file, if any."""
    path = folder / f"{job_id}_0_result.pkl"
    try:
        with open(path, "rb") as file:
            return pickle.load(file)  # written by submitit for this run's own job
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        return None


def job_state(experiment: Experiment) -> Tuple[str, str]:
    """(state, detail) of the run's last launch: state is "none" (never launched),
    "queued", "running", "ended" or "failed" (detail: its last error line); detail names the
    job or process otherwise."""
    record = read_launch(experiment)
    if record is None:
        return "none", ""
    if record.get("launcher") == "local":
        name = f"process {record.get('pid')} on {record.get('host')}"
        if "exit_code" in record:
            if record["exit_code"] == 0:
                return "ended", name
            error = last_error_line(_read(experiment.out / LOCAL_STDERR))
            return "failed", error or f"exit code {record['exit_code']}"
        if record.get("host") == socket.gethostname() and _pid_alive(int(record["pid"])):
            return "running", name
        return "ended", f"{name}, which is gone"
    job_id = str(record["job_id"])
    name = f"job {job_id}"
    folder = experiment.out / SUBMITIT_DIR
    queued = _squeue_state(job_id) if record.get("executor") == "slurm" else None
    if queued is not None:
        return ("queued" if queued in QUEUED_STATES else "running"), f"{name}, {queued}"
    result = _submitit_result(folder, job_id)
    if result is not None:
        if result[0] == "success":
            return "ended", name
        error = last_error_line(str(result[1])) or last_error_line(
            _read(folder / f"{job_id}_0_log.err"))
        if "UncompletedJobError" in error:  # out of requeues: stopped, not broken
            return "ended", f"{name} not requeued again: " + error.split(": ", 1)[-1]
        return "failed", error or f"{name} failed"
    if record.get("executor") == "local":  # submitit's LocalExecutor: the job id is a pid
        if _pid_alive(int(job_id)):
            started = (folder / f"{job_id}_0_log.out").is_file()
            return ("running" if started else "queued"), name
        return "ended", f"{name}, which is gone"
    if shutil.which("squeue") is None:
        return "unknown", f"{name} (no squeue here to ask)"
    return "ended", f"{name}, no longer queued"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def last_epoch(experiment: Experiment) -> Optional[float]:
    """The epoch of the run's last log.jsonl line (None before the first)."""
    lines = _read(experiment.out / "log.jsonl").splitlines()
    for line in reversed(lines):
        try:
            return float(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def active_job(experiment: Experiment) -> Optional[str]:
    """"queued (job N)" / "running (job N)" while the run's last launch is still going."""
    state, detail = job_state(experiment)
    return f"{state} ({detail})" if state in ("queued", "running") else None


def run_status(experiment: Experiment) -> str:
    """One line: where the run stands."""
    state, detail = job_state(experiment)
    epochs = float(experiment.config.get("epochs", _default("epochs")))
    epoch = last_epoch(experiment)
    at = f"epoch {epoch:g} of {epochs:g}" if epoch is not None else f"epoch 0 of {epochs:g}"
    if experiment.status == "finished":
        metrics = read_json(experiment.out / "metrics.json", "metrics")
        aps = ", ".join(f"{task} AP {metrics[key]['AP']:.2f}" for key, task in
                        (("segm", "segm"), ("bbox", "box")) if key in metrics)
        return f"finished: {aps}"
    if state == "queued":
        return f"queued ({detail})"
    if state == "running":
        return f"running at {at} ({detail})" if epoch is not None else \
            f"running, starting up ({detail})"
    if state == "failed":
        return f"failed at {at}: {detail}"
    if state == "unknown":
        return f"at {at}, state unknown: {detail}"
    if experiment.status == "unfinished" or epoch is not None:
        resumable = "resumable" if experiment.status == "unfinished" else "no checkpoint yet"
        return f"stopped at {at} ({resumable}; {detail or 'not launched by experiments'})"
    return "not started" if state == "none" else f"not started ({detail} ended)"


def print_status(experiments: Sequence[Experiment]) -> int:
    """Print one line per run; exit code 0."""
    width = max(len(experiment.name) for experiment in experiments)
    for experiment in experiments:
        print(f"{experiment.name:<{width}}  {run_status(experiment)}")
    return 0
