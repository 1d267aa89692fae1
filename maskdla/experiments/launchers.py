"""Launching the runs of an experiment file: one after the other here, or as SLURM jobs.

``local`` trains each unfinished run in turn on this machine (torchrun when a run has
several processes). ``slurm`` submits each unfinished run as one job through submitit
(extra ``slurm``): one task per node, which starts torchrun with the node's GPUs; a job
that is preempted or reaches its time limit is requeued by submitit and resumes from the
run's last checkpoint (``--resume auto``). Either way the run's TrainConfig is written to
``RUN/train_config.json`` and trained with ``python -m maskdla.train --config
RUN/train_config.json --resume auto``; ``RUN/launch.json`` records how and when it was
launched, for ``status``. A finished run (summary.json) is never launched again.

Files of a SLURM run, all in its folder: submitit's ``submitit/`` (the sbatch script,
the pickled job, ``JOBID_0_log.out`` / ``JOBID_0_log.err`` = the job's stdout/stderr,
the result), training's own files next to it.
"""
from __future__ import annotations

import ctypes
import datetime
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from maskdla.errors import InputError
from maskdla.experiments.grid import Experiment, describe, train_command
# The run folder's launch files are status's to name and read: the launchers write them
# and ask status whether a run is still going, status never imports the launchers.
from maskdla.experiments.status import (LAUNCH_RECORD, LOCAL_STDERR, SUBMITIT_DIR, active_job,
                                        last_error_line)
from maskdla.files import write_json_atomic

#: Lowest port of a multi-node rendezvous; the job id picks one of the next 20,000.
RENDEZVOUS_PORT_BASE = 20000


def _missing_submitit() -> InputError:
    return InputError("--launcher slurm needs submitit: pip install 'maskdla[slurm]' "
                      "(or pip install submitit)")


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise _missing_submitit() from None
    return submitit


# --------------------------------------------------------------------------------------------
# The job's shape: [launcher] in the experiment file, then flags
# --------------------------------------------------------------------------------------------

@dataclass
class SlurmSpec:
    """What each run's job asks SLURM for (one task per node).

    ``time`` is in minutes; a file may also write "HH:MM:SS" or "D-HH:MM:SS". ``sbatch``
    holds any further sbatch option (``{exclusive = true, mail-type = "END"}``), ``setup``
    shell lines run before the training (``module load cuda``, ``source venv/bin/activate``).
    """

    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    time: int = 240
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    sbatch: Dict[str, Any] = field(default_factory=dict)
    setup: List[str] = field(default_factory=list)
    #: requeues after a time limit or preemption before the job gives up (submitit's
    #: max_num_timeout)
    max_requeues: int = 3
    #: seconds before the time limit at which SLURM warns the job (USR2) so that it requeues
    signal_delay_s: int = 120

    @classmethod
    def from_sources(cls, table: Dict[str, Any], flags: Dict[str, Any],
                     path: Optional[Path] = None) -> "SlurmSpec":
        """``[launcher]`` of the experiment file, overridden by the flags given (not None)."""
        names = {item.name for item in fields(cls)}
        unknown = sorted(set(table) - names)
        if unknown:
            raise InputError(f"[launcher]: unknown key(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(names))}", path)
        values = {**table, **{key: value for key, value in flags.items() if value is not None}}
        values["sbatch"] = {**table.get("sbatch", {}), **flags.get("sbatch", {})}
        if "time" in values:
            values["time"] = parse_minutes(values["time"], path)
        spec = cls(**values)
        for name in ("nodes", "gpus_per_node", "time", "max_requeues"):
            if not isinstance(getattr(spec, name), int) or getattr(spec, name) < (
                    0 if name == "max_requeues" else 1):
                raise InputError(f"[launcher] {name} = {getattr(spec, name)!r}: expected a "
                                 "positive integer", path)
        return spec

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def executor_parameters(self, job_name: str) -> Dict[str, Any]:
        """The job's parameters in submitit's AutoExecutor names."""
        parameters = dict(name=job_name, nodes=self.nodes, tasks_per_node=1,
                          gpus_per_node=self.gpus_per_node, cpus_per_task=self.cpus_per_task,
                          mem_gb=self.mem_gb, timeout_min=self.time,
                          slurm_partition=self.partition, slurm_account=self.account,
                          slurm_qos=self.qos, slurm_constraint=self.constraint,
                          slurm_signal_delay_s=self.signal_delay_s,
                          slurm_additional_parameters={"requeue": True, **self.sbatch},
                          slurm_setup=list(self.setup) or None)
        return {key: value for key, value in parameters.items() if value is not None}

    def sbatch_options(self, job_name: str) -> List[str]:
        """The #SBATCH options submitit writes for these parameters (its spelling: --mem in
        GB or MB, --time in minutes, USR2 as the time-limit warning)."""
        options = {"job-name": job_name, "nodes": self.nodes, "ntasks-per-node": 1,
                   "gpus-per-node": self.gpus_per_node, "cpus-per-task": self.cpus_per_task,
                   "mem": None if self.mem_gb is None else _slurm_memory(self.mem_gb),
                   "time": self.time, "partition": self.partition, "account": self.account,
                   "qos": self.qos, "constraint": self.constraint,
                   "signal": f"USR2@{self.signal_delay_s}", "requeue": True}
        options.update({key.replace("_", "-"): value for key, value in self.sbatch.items()})
        return [f"--{key}" if value is True else f"--{key}={value}"
                for key, value in options.items() if value is not None and value is not False]


def parse_minutes(value: Any, path: Optional[Path] = None) -> int:
    """A time limit in minutes from 240, "240", "4:00:00" or "1-12:00:00"."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d\d)(?::(\d\d))?|(\d+)", str(value).strip())
    if not match:
        raise InputError(f"[launcher] time = {value!r}: expected minutes, HH:MM:SS or "
                         "D-HH:MM:SS", path)
    days, hours, minutes, seconds, plain = match.groups()
    if plain:
        return int(plain)
    return (int(days or 0) * 24 + int(hours)) * 60 + int(minutes) + (1 if seconds and
                                                                     int(seconds) else 0)


def _slurm_memory(gigabytes: float) -> str:
    return f"{int(gigabytes)}GB" if gigabytes == int(gigabytes) else f"{int(gigabytes * 1024)}MB"


def job_name(experiment: Experiment) -> str:
    return f"{experiment.out.parent.name}/{experiment.name}"


# --------------------------------------------------------------------------------------------
# Launch records
# --------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# local: one run after the other on this machine
# --------------------------------------------------------------------------------------------

def local_command(experiment: Experiment) -> List[str]:
    if experiment.nodes > 1:
        raise InputError(f"run {experiment.name!r}: --launcher local runs on this machine; "
                         f"{experiment.nodes} nodes need --launcher slurm")
    return train_command(experiment.config_path, experiment.nproc_per_node)


def train_here(experiment: Experiment) -> int:
    """Train one run in a child process; its stderr goes to the terminal and to
    RUN/train_stderr.log. Returns the exit code."""
    experiment.write_config()
    arguments = local_command(experiment)
    record = {"launcher": "local", "host": socket.gethostname(), "started": _now(),
              "command": arguments}
    with open(experiment.out / LOCAL_STDERR, "ab") as log:
        process = subprocess.Popen(arguments, stderr=subprocess.PIPE)
        write_json_atomic(experiment.out / LAUNCH_RECORD, dict(record, pid=process.pid))
        code = None
        try:
            for chunk in iter(lambda: process.stderr.read1(65536), b""):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                log.write(chunk)
            code = process.wait()
        finally:
            if code is None:  # interrupted here: the child stops too
                _stop(process)
                code = process.wait()
            write_json_atomic(experiment.out / LAUNCH_RECORD,
                              dict(record, pid=process.pid, ended=_now(), exit_code=code))
    return code


def run_local(experiments: Sequence[Experiment]) -> int:
    """Train each run in turn, skipping finished ones. A failed run is reported and the
    rest still run. Exit code 0 when every run finished or was skipped, else 1."""
    failed, skipped, trained = [], [], []
    for number, experiment in enumerate(experiments, start=1):
        prefix = f"[{number}/{len(experiments)}]"
        if experiment.status == "finished":
            print(f"{prefix} {experiment.name}: finished, skipped ({experiment.out})")
            skipped.append(experiment.name)
            continue
        action = "resuming" if experiment.status == "unfinished" else "training"
        print(f"{prefix} {experiment.name}: {action} -> {experiment.out}\n"
              f"  {shlex.join(local_command(experiment))}", flush=True)
        code = train_here(experiment)
        if code != 0:
            print(f"{prefix} {experiment.name}: failed with exit code {code}", file=sys.stderr)
            failed.append(experiment.name)
        else:
            trained.append(experiment.name)
    print(f"trained {len(trained)}, skipped {len(skipped)} finished, failed {len(failed)}"
          + (f": {', '.join(failed)}" if failed else ""))
    _print_report_command(experiments)
    return 1 if failed else 0


def _print_report_command(experiments: Sequence[Experiment]) -> None:
    if experiments:
        folders = sorted({str(experiment.out.parent) for experiment in experiments})
        print("report: python -m maskdla.report " + " ".join(folders))


def describe_local(experiment: Experiment) -> str:
    if experiment.status == "finished":
        return describe(experiment) + "\n  finished: skipped"
    return describe(experiment) + "\n  command: " + shlex.join(local_command(experiment))


# --------------------------------------------------------------------------------------------
# slurm: one submitit job per run
# --------------------------------------------------------------------------------------------

def describe_slurm(experiment: Experiment, spec: SlurmSpec) -> str:
    """The dry-run lines of one SLURM run: plan, sbatch options, the command on each node."""
    if experiment.status == "finished":
        return describe(experiment) + "\n  finished: not submitted again"
    folder = (experiment.out / SUBMITIT_DIR).absolute()  # as submitit writes it
    options = spec.sbatch_options(job_name(experiment)) + [
        f"--output={folder}/%j_0_log.out", f"--error={folder}/%j_0_log.err"]
    if spec.nodes > 1:
        command = train_command(experiment.config_path, spec.gpus_per_node, spec.nodes,
                                "$SLURM_NODEID", "<first node of the job>",
                                f"<{RENDEZVOUS_PORT_BASE} + job id % 20000>")
        where = f"on each of the {spec.nodes} nodes"
    else:
        command = train_command(experiment.config_path, spec.gpus_per_node)
        where = "in the job"
    lines = [describe(experiment), "  sbatch " + " ".join(options)]
    if spec.setup:
        lines.append("  setup: " + "; ".join(spec.setup))
    lines.append(f"  command ({where}): {shlex.join(command)}")
    return "\n".join(lines)


class TrainingJob:
    """What a run's job does: train the run under torchrun with the job's GPUs.

    A callable with ``checkpoint()``, so submitit requeues it after a time limit or
    preemption (the job is the same; the training resumes from checkpoint_last.pth).
    """

    def __init__(self, config_path: str, gpus_per_node: int, workdir: str) -> None:
        self.config_path = config_path
        self.gpus_per_node = gpus_per_node
        self.workdir = workdir

    def command(self, job_environment) -> List[str]:
        """This node's command (rendezvous from the job: its first node, a port from its id)."""
        nodes = job_environment.num_nodes
        if nodes == 1:
            return train_command(self.config_path, self.gpus_per_node)
        port = RENDEZVOUS_PORT_BASE + int(re.sub(r"\D", "", job_environment.job_id) or 0) % 20000
        return train_command(self.config_path, self.gpus_per_node, nodes, job_environment.node,
                             job_environment.hostnames[0], port)

    def __call__(self) -> int:
        submitit = import_submitit()
        environment = submitit.JobEnvironment()
        arguments = self.command(environment)
        print(f"{environment}: {shlex.join(arguments)}", flush=True)
        process = subprocess.Popen(arguments, cwd=self.workdir, preexec_fn=_exit_with_parent)
        code = None
        try:
            code = process.wait()
        finally:
            if code is None:  # submitit's requeue or a cancel: stop the training too
                _stop(process)
        if code != 0:
            error = last_error_line(_read_text(environment.paths.stderr))
            raise RuntimeError(f"training exited with code {code}" + (f": {error}" if error
                                                                        else ""))
        return code

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue this job as it is: ``--resume auto`` picks up the last checkpoint."""
        return import_submitit().helpers.DelayedSubmission(self)


def _exit_with_parent() -> None:
    """In the child: get SIGTERM when the job's process dies, so that no training outlives
    its job (Linux; elsewhere the cluster's job cleanup does it), and ignore the time-limit
    warning SLURM sends to every process of the job: the job's process handles it (requeue)."""
    warning = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    if warning is not None:
        signal.signal(warning, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def submit_slurm(experiments: Sequence[Experiment], spec: SlurmSpec, cluster: str = "slurm"
                 ) -> List[Tuple[Experiment, Any]]:
    """Submit each run that is neither finished nor queued/running as a job.

    Args:
        cluster: submitit's executor: "slurm", or "local" (its LocalExecutor: the same jobs
            as background processes on this machine, for tests without a cluster).

    Returns:
        (run, submitit job) for each job submitted.
    """
    submitit = import_submitit()
    if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise InputError("--launcher slurm: no sbatch and srun here; run this on a machine of the "
                         "cluster (--dry-run shows the jobs without one)")
    submitted = []
    for number, experiment in enumerate(experiments, start=1):
        prefix = f"[{number}/{len(experiments)}] {experiment.name}"
        if experiment.status == "finished":
            print(f"{prefix}: finished, not submitted ({experiment.out})")
            continue
        active = active_job(experiment)
        if active:
            print(f"{prefix}: {active}, not submitted again")
            continue
        executor = submitit.AutoExecutor(folder=experiment.out / SUBMITIT_DIR, cluster=cluster,
                                         slurm_max_num_timeout=spec.max_requeues)
        experiment.write_config()
        executor.update_parameters(**spec.executor_parameters(job_name(experiment)))
        job = executor.submit(TrainingJob(str(experiment.config_path), spec.gpus_per_node,
                                          os.getcwd()))
        write_json_atomic(experiment.out / LAUNCH_RECORD, {
            "launcher": "slurm", "executor": cluster, "job_id": str(job.job_id),
            "submitted": _now(), "nodes": spec.nodes, "gpus_per_node": spec.gpus_per_node,
            "sbatch": spec.sbatch_options(job_name(experiment))})
        print(f"{prefix}: submitted as job {job.job_id} -> {experiment.out}", flush=True)
        submitted.append((experiment, job))
    print(f"submitted {len(submitted)} of {len(experiments)} runs; follow them with "
          "python -m maskdla.experiments status FILE")
    return submitted
