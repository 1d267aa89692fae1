"""Run the study's grids of training runs from TOML files: ``python -m maskdla.experiments``.

``run FILE [--launcher local|slurm]`` trains each run of an experiment file here, one after
the other, or submits each as a SLURM job (through submitit, extra ``slurm``); ``status
FILE`` prints where each run stands. The modules, in the order of the flow:

- :mod:`~maskdla.experiments.grid`: the file, its runs (one TrainConfig each), schedules;
- :mod:`~maskdla.experiments.launchers`: writing each run's config and training it
  (local) or submitting its job (slurm), with requeue and resume;
- :mod:`~maskdla.experiments.status`: the state of each run from its folder;
- :mod:`~maskdla.experiments.cli`: the command line.
"""
from maskdla.experiments.cli import build_parser, main
from maskdla.experiments.grid import (CONFIG_NAME, Experiment, read_experiment_file,
                                      resolve_experiments, run_config, schedule,
                                      train_command, train_size)
from maskdla.experiments.launchers import SlurmSpec, TrainingJob, run_local, submit_slurm
from maskdla.experiments.status import last_error_line, run_status

__all__ = ["CONFIG_NAME", "Experiment", "SlurmSpec", "TrainingJob", "build_parser",
           "last_error_line", "main", "read_experiment_file", "resolve_experiments",
           "run_config", "run_local", "run_status", "schedule", "submit_slurm",
           "train_command", "train_size"]
