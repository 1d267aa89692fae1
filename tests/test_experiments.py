"""maskdla.experiments: experiment files, the commands they launch, plans, skip/resume."""
from __future__ import annotations

import json
import shlex
import os
import re
import signal
import sys
import socket
import time
from pathlib import Path

import pytest

from maskdla.cli import run_main
from maskdla.errors import InputError
from maskdla.experiments import (CONFIG_NAME, SlurmSpec, last_error_line, main,
                                 read_experiment_file,
                                 resolve_experiments, run_local, run_status, schedule,
                                 train_command, train_size)
from maskdla.experiments import launchers

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def write_file(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture()
def grid(tmp_path, monkeypatch):
    """A two-run file with runs under tmp_path/runs (relative paths: cwd = tmp_path)."""
    monkeypatch.chdir(tmp_path)
    return write_file(tmp_path, """
description = "test grid"
out_dir = "runs/grid"

[defaults]
backbone = "resnet50"
data = "no/such/data"
total_batch_size = 2
lr = 0.02

[[runs]]
name = "e450_late"
epochs = 450
lr_steps = "late"

[[runs]]
name = "e225"
epochs = 225
min_size = [640, 800]
deterministic = true
energy = false
classes = ["drop-capital", "lyrics", "staff"]
class_map = {paragraph = "lyrics"}
""")


def test_dry_run_prints_the_study_plan(grid, capsys):
    assert main(["run", str(grid), "--dry-run", "--only", "e450_late"]) == 0
    out = capsys.readouterr().out
    assert "e450_late: new -> runs/grid/e450_late" in out
    assert "train set: 128 images\n    (assumed: the study's VORAU-253 train split; " \
        "no/such/data/train not found)" in out
    assert "iterations per epoch: 64" in out
    assert "epochs: 450 = 28800 iterations" in out
    assert "LR step at epoch 337.5 = iteration 21600" in out
    assert "LR step at epoch 405 = iteration 25920" in out
    assert "command: " + shlex.join(train_command("runs/grid/e450_late/train_config.json")) in out
    assert "e225" not in out  # --only


def test_plan_numbers(grid):
    late = resolve_experiments(grid, only=["e450_late"])[0]
    plan = schedule(late, 128)
    assert plan.iterations_per_epoch == 64
    assert plan.total_iterations == 28800
    assert plan.milestone_epochs == (337.5, 405.0)
    assert plan.milestone_iterations == (21600, 25920)
    # Two GPUs, same total batch: 1 image per GPU and the same schedule.
    late2 = resolve_experiments(grid, nproc=2, only=["e450_late"])[0]
    assert late2.config["batch_size"] == 1
    assert schedule(late2, 128).milestone_iterations == (21600, 25920)


def test_train_command_single_torchrun_and_multinode(grid):
    late, small = resolve_experiments(grid)
    config = ["-m", "maskdla.train", "--config", "runs/grid/e450_late/train_config.json",
              "--resume", "auto"]
    assert train_command(late.config_path) == [sys.executable, *config]
    assert train_command(late.config_path, nproc_per_node=2) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        *config]
    assert train_command(late.config_path, 4, nnodes=2, node_rank=1, master_addr="gpu07",
                         master_port=23456)[3:8] == [
        "--nnodes=2", "--node_rank=1", "--master_addr=gpu07", "--master_port=23456",
        "--nproc_per_node=4"]
    distributed = resolve_experiments(grid, nproc=2, only=["e225"])[0]
    assert distributed.config["batch_size"] == 1


def test_the_run_config_file_round_trips_through_the_train_cli(grid):
    """What the runner writes, maskdla.train --config reads back as the config the
    experiment file describes; flags given as well still override it."""
    import maskdla.train_cli as train_cli
    for experiment in resolve_experiments(grid):
        path = experiment.write_config()
        assert path == experiment.out / CONFIG_NAME
        parsed = train_cli.config_from_argv(["--config", str(path), "--resume", "auto"])
        for key, value in experiment.config.items():
            assert getattr(parsed, key) == value, key
        assert parsed.resume == "auto"
        assert train_cli.config_from_argv(["--config", str(path), "--epochs", "3"]).epochs == 3
    small = train_cli.config_from_argv(["--config", "runs/grid/e225/train_config.json"])
    assert (small.deterministic, small.energy, small.min_size) == (True, False, [640, 800])
    assert small.class_map == {"paragraph": "lyrics"}
    assert small.classes == ["drop-capital", "lyrics", "staff"]


def test_the_train_cli_names_a_bad_config_file(tmp_path, capsys):
    import maskdla.train as train
    bad = tmp_path / "bad.json"
    bad.write_text('{"epoch": 4}')
    with pytest.raises(SystemExit):
        run_main(train.main, ["--config", str(bad)])
    error = capsys.readouterr().err
    assert error.startswith(f"maskdla: error: {bad}: unknown training setting(s) epoch")


@pytest.fixture()
def launched(monkeypatch):
    """Record the runs the local launcher trains instead of training; exit codes from a
    queue."""
    calls, codes = [], []

    def fake_train_here(experiment):
        calls.append(experiment)
        return codes.pop(0) if codes else 0
    monkeypatch.setattr(launchers, "train_here", fake_train_here)
    return calls, codes


def test_finished_runs_skipped_unfinished_resumed(grid, tmp_path, launched, capsys):
    calls, _ = launched
    finished = tmp_path / "runs/grid/e450_late"
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text("{}")
    (finished / "checkpoint_last.pth").write_bytes(b"")
    unfinished = tmp_path / "runs/grid/e225"
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint_last.pth").write_bytes(b"")

    late, small = resolve_experiments(grid)
    assert (late.status, small.status) == ("finished", "unfinished")
    assert main(["run", str(grid)]) == 0
    assert [experiment.name for experiment in calls] == ["e225"]
    out = capsys.readouterr().out
    assert "e450_late: finished, skipped" in out
    assert "e225: resuming -> runs/grid/e225" in out
    assert "--config runs/grid/e225/train_config.json --resume auto" in out
    assert "report: python -m maskdla.report runs/grid" in out


def test_a_failed_run_does_not_stop_the_rest(grid, launched, capsys):
    calls, codes = launched
    codes += [3, 0]
    assert run_local(resolve_experiments(grid)) == 1
    assert len(calls) == 2
    captured = capsys.readouterr()
    assert "e450_late: failed with exit code 3" in captured.err
    assert "trained 1, skipped 0 finished, failed 1: e450_late" in captured.out


def test_scale_shrinks_epochs_and_images_into_a_separate_folder(grid):
    small = resolve_experiments(grid, scale=0.01, only=["e225"])[0]
    assert small.config["epochs"] == 2.25
    assert small.config["min_size"] == [64]        # 6.4 and 8 px clamp to 64
    assert small.config["max_size"] == 107     # 64 x 1333 / 800: same room as before
    assert small.config["out"] == "runs/grid-scale0.01/e225"
    half = resolve_experiments(grid, scale=0.5, only=["e225"])[0]
    assert half.config["min_size"] == [320, 400]


def test_train_size_counts_data_folder_and_coco(tmp_path):
    page = tmp_path / "data/train/page"
    page.mkdir(parents=True)
    for stem in ("a", "b", "c"):
        (page / f"{stem}.xml").write_text("<PcGts/>")
    assert train_size({"data": str(tmp_path / "data")}) == (3, f"counted in {page.parent}")
    annotations = tmp_path / "train.json"
    annotations.write_text('{"images": [{"id": 1}, {"id": 2}], "annotations": []}')
    assert train_size({"train_ann": str(annotations)})[0] == 2
    size, source = train_size({})
    assert size == 128 and "synthetic" in source


@pytest.mark.parametrize("text, message", [
    ('[[runs]]\nname = "a"\nepoch = 4\n', "run 'a': unknown field(s) epoch"),
    ('[[runs]]\nname = "a"\ntotal_batch_size = 3\n', "does not split over 2 process(es)"),
    ('[[runs]]\nname = "a"\nbackbone = "resnet7"\n', "run 'a': --backbone"),
    ('[launcher]\nnodes = 2\n[[runs]]\nname = "a"\nbatch_size = [1]\n',
     "run 'a': "),
    ('[[runs]]\nname = "a"\n[[runs]]\nname = "a"\n', "duplicate run name(s): a"),
    ('[[runs]]\nname = "a/b"\n', "'name' must be a plain folder name"),
    ('runs = [\n', "malformed TOML"),
    ('[defaults]\nepochs = 4\n', "expected at least one [[runs]] entry"),
])
def test_bad_experiment_files_name_the_file_and_problem(tmp_path, text, message):
    path = write_file(tmp_path, text)
    with pytest.raises(InputError) as error:
        resolve_experiments(path, nproc=2)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_unknown_only_name(grid):
    with pytest.raises(InputError, match="no run named e9; runs: e450_late, e225"):
        resolve_experiments(grid, only=["e9"])


def test_set_overrides_every_run(grid):
    assert main(["run", str(grid), "--dry-run", "--set", "data=elsewhere",
                 "--set", "workers=8"]) == 0
    for experiment in resolve_experiments(grid, overrides={"data": "elsewhere", "workers": 8}):
        config = json.loads(experiment.write_config().read_text())
        assert (config["data"], config["workers"]) == ("elsewhere", 8)


# The study's grid, as shipped in experiments/: run counts and the schedule arithmetic.
STUDY_FILES = {
    "base_case.toml": {"base_case": (2812.5, 4, "resnet50", 90000)},
    "epochs.toml": {"e115": (115, 2, "resnet50", 7360), "e225": (225, 2, "resnet50", 14400),
                    "e450": (450, 2, "resnet50", 28800), "e900": (900, 2, "resnet50", 57600)},
    "lr_steps.toml": {f"e{e}_{steps}": (e, 2, "resnet50", 64 * e)
                      for e in (225, 450) for steps in ("default", "early", "late")},
    "batch_size.toml": {f"{backbone}_b{b}": (450, b, backbone, round(450 * 128 / b))
                        for backbone in ("resnet50", "vovnet39") for b in (2, 4, 6)},
    "backbones.toml": {name: (450, 2, name, 28800) for name in (
        "resnet31", "resnet50", "resnet50b", "resnet50c", "resnet101", "vovnet19lite",
        "vovnet19", "vovnet39", "vovnet57", "vovnet99")},
}


@pytest.mark.parametrize("file_name", sorted(STUDY_FILES))
def test_study_experiment_files(file_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/vorau253 absent: the study's 128 pages
    experiments = resolve_experiments(EXPERIMENTS / file_name)
    expected = STUDY_FILES[file_name]
    assert [e.name for e in experiments] == list(expected)
    for experiment in experiments:
        epochs, batch, backbone, iterations = expected[experiment.name]
        assert experiment.config["epochs"] == epochs
        assert experiment.config["batch_size"] == batch
        assert experiment.config["backbone"] == backbone
        assert experiment.config["lr"] == 0.02
        assert schedule(experiment, 128).total_iterations == iterations
    if file_name == "lr_steps.toml":
        milestones = {e.name: schedule(e, 128).milestone_epochs for e in experiments}
        assert milestones["e450_default"] == pytest.approx((300, 400))
        assert milestones["e450_early"] == pytest.approx((180, 315))
        assert milestones["e450_late"] == pytest.approx((337.5, 405))


def test_htromance_file_forms():
    """The real-data benchmark's two forms as docs/benchmarks.md and experiments/README.md
    describe them, each a valid TrainConfig."""
    from maskdla.config import TrainConfig

    experiments = {e.name: e for e in resolve_experiments(EXPERIMENTS / "htromance.toml")}
    assert list(experiments) == ["cpu_vovnet19slim", "cpu_finetune", "gpu_resnet50",
                                 "gpu_vovnet39"]
    zones = ["MainZone", "DropCapitalZone", "MarginTextZone", "NumberingZone",
             "RunningTitleZone"]
    for experiment in experiments.values():
        config = TrainConfig.from_dict(experiment.config)
        assert config.classes == zones
        assert config.class_map == {**{zone: zone for zone in zones}, "*": None}  # "" = drop
        assert config.batch_size == 2
    cpu = TrainConfig.from_dict(experiments["cpu_vovnet19slim"].config)
    assert (cpu.device, cpu.backbone, cpu.epochs, cpu.lr, cpu.rois_per_image) == (
        "cpu", "vovnet19slim", 10, 0.02, 128)
    assert (cpu.amp, cpu.fpn_channels) == ("bf16", 96)  # issue 26: 2x the images per CPU-s
    assert (cpu.min_size, cpu.max_size, cpu.pretrained) == ([384, 448, 512, 576, 640], 960, None)
    for name, backbone in (("gpu_resnet50", "resnet50"), ("gpu_vovnet39", "vovnet39")):
        gpu = TrainConfig.from_dict(experiments[name].config)
        assert (gpu.backbone, gpu.min_size, gpu.max_size, gpu.epochs, gpu.lr) == (
            backbone, [800], 1333, 275, 0.02)
    # the fine-tuning form: the CPU form's budget and sizes, from the base model, half the LR
    finetune = TrainConfig.from_dict(experiments["cpu_finetune"].config)
    assert (finetune.init_from, finetune.lr, finetune.epochs, finetune.min_size,
            finetune.rois_per_image) == ("segmonto-base", 0.01, 5, cpu.min_size, 128)


def test_the_line_benchmark_and_the_fine_tuning_file_are_valid_runs():
    """experiments/htromance_lines.toml trains text lines (every line type kept or folded
    into DefaultLine, pages of 60+ lines); experiments/finetune.toml fine-tunes the base
    model on a folder given with --set data=."""
    from maskdla.config import TrainConfig

    lines = {e.name: TrainConfig.from_dict(e.config)
             for e in resolve_experiments(EXPERIMENTS / "htromance_lines.toml")}
    assert list(lines) == ["cpu_lines", "gpu_lines"]
    for config in lines.values():
        assert config.task == "lines" and config.detections_per_image == 300
        assert config.classes == ["DefaultLine", "HeadingLine", "InterlinearLine"]
        assert config.class_map["*"] == "DefaultLine"
    assert lines["cpu_lines"].init_from == "segmonto-base"
    (finetune,) = resolve_experiments(EXPERIMENTS / "finetune.toml")
    config = TrainConfig.from_dict(finetune.config)
    assert (config.init_from, config.backbone, config.lr, config.fold_subtypes) == (
        "segmonto-base", "vovnet19slim", 0.01, True)


def test_the_base_model_file_trains_the_benchmark_zones_on_the_base_corpus_only():
    """experiments/base.toml: the HTRomance benchmark's five zones (so that fine-tuning on
    HTRomance keeps every class row), sub-types folded, on the base corpus (HTRomance stays
    out of it); its CPU form as docs/models.md states it."""
    from maskdla.config import TrainConfig

    experiments = {e.name: e for e in resolve_experiments(EXPERIMENTS / "base.toml")}
    assert list(experiments) == ["cpu_vovnet19slim", "gpu_resnet50"]
    benchmark = TrainConfig.from_dict(
        resolve_experiments(EXPERIMENTS / "htromance.toml")[0].config)
    for experiment in experiments.values():
        config = TrainConfig.from_dict(experiment.config)
        assert config.classes == benchmark.classes and config.class_map == benchmark.class_map
        assert config.fold_subtypes and config.data.endswith("realdata/base")
        assert "htromance" not in config.data
    cpu = TrainConfig.from_dict(experiments["cpu_vovnet19slim"].config)
    assert (cpu.device, cpu.backbone, cpu.epochs, cpu.lr, cpu.rois_per_image, cpu.amp) == (
        "cpu", "vovnet19slim", 3.5, 0.02, 128, "bf16")
    assert (cpu.min_size, cpu.max_size) == ([384, 448, 512, 576, 640], 960)


# ------------------------------------------------------------------ SLURM through submitit

TWO_NODES = """
[launcher]
nodes = 2
gpus_per_node = 1
cpus_per_task = 16
mem_gb = 64
time = "12:00:00"
partition = "gpu"
account = "proj"
sbatch = {exclusive = true, mail-type = "END"}
setup = ["module load cuda/12.4"]
"""


def test_dry_run_of_a_two_node_job_prints_sbatch_options_and_the_command(grid, capsys):
    grid.write_text(grid.read_text() + TWO_NODES)
    assert main(["run", str(grid), "--launcher", "slurm", "--dry-run", "--only", "e450_late",
                 "--account", "other", "--sbatch", "constraint=a100"]) == 0
    out = capsys.readouterr().out
    assert "batch: 1 per process x 2 processes = 2" in out
    assert ("  sbatch --job-name=grid/e450_late --nodes=2 --ntasks-per-node=1 --gpus-per-node=1 "
            "--cpus-per-task=16 --mem=64GB --time=720 --partition=gpu --account=other "
            "--constraint=a100 --signal=USR2@120 --requeue --exclusive --mail-type=END "
            f"--output={Path.cwd()}/runs/grid/e450_late/submitit/%j_0_log.out "
            f"--error={Path.cwd()}/runs/grid/e450_late/submitit/%j_0_log.err\n") in out
    assert "  setup: module load cuda/12.4\n" in out
    command = out.split("command (on each of the 2 nodes): ")[1].splitlines()[0]
    assert shlex.split(command) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=$SLURM_NODEID",
        "--master_addr=<first node of the job>", "--master_port=<20000 + job id % 20000>",
        "--nproc_per_node=1", "-m", "maskdla.train",
        "--config", "runs/grid/e450_late/train_config.json", "--resume", "auto"]
    assert not Path("runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize("launcher_table, flags, message", [
    ("[launcher]\nnode = 2\n", [], "[launcher]: unknown key(s) node"),
    ("[launcher]\ntime = \"soon\"\n", [], "[launcher] time = 'soon': expected minutes"),
    ("[launcher]\nnodes = 2\n", [], "--launcher local runs on this machine; nodes = 2"),
    ("", ["--launcher", "slurm", "--nodes", "2", "--gpus-per-node", "2"],
     "does not split over 4 process(es)"),
])
def test_bad_launcher_settings(grid, launcher_table, flags, message, capsys):
    grid.write_text(grid.read_text() + launcher_table)
    with pytest.raises(SystemExit) as exit_code:
        run_main(main, ["run", str(grid), "--dry-run", *flags])
    assert exit_code.value.code == 2
    assert message in capsys.readouterr().err


def test_time_limits_in_slurm_spelling():
    assert [launchers.parse_minutes(text) for text in (90, "90", "4:00:00", "1-12:00:00",
                                                      "0:30")] == [90, 90, 240, 2160, 30]


def _fake_slurm(tmp_path, monkeypatch, squeue_state):
    """sbatch, srun and squeue stand-ins on PATH: sbatch keeps the script it gets."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {"sbatch": f'cp "$1" {tmp_path}/sbatch_script.sh; echo "Submitted batch job 4242"',
               "srun": "exit 1", "squeue": f'echo {squeue_state}'}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_submission_writes_what_the_dry_run_shows_and_is_not_repeated(grid, tmp_path,
                                                                      monkeypatch, capsys):
    """Through submitit's real SLURM executor, with sbatch and squeue faked on PATH."""
    pytest.importorskip("submitit")
    _fake_slurm(tmp_path, monkeypatch, "PENDING")
    grid.write_text(grid.read_text() + TWO_NODES)
    assert main(["run", str(grid), "--launcher", "slurm", "--only", "e450_late"]) == 0
    assert "e450_late: submitted as job 4242 -> runs/grid/e450_late" in capsys.readouterr().out
    run = Path("runs/grid/e450_late")
    script = (tmp_path / "sbatch_script.sh").read_text()
    experiment = resolve_experiments(grid, nproc=2, nodes=2, only=["e450_late"])[0]
    spec = SlurmSpec.from_sources(read_experiment_file(grid)["launcher"], {})
    capsys.readouterr()
    main(["run", str(grid), "--launcher", "slurm", "--dry-run", "--only", "e450_late"])
    dry_run = capsys.readouterr().out.split("  sbatch ")[1].splitlines()[0].split()
    assert dry_run == spec.sbatch_options("grid/e450_late") + [
        f"--output={run.absolute()}/submitit/%j_0_log.out",
        f"--error={run.absolute()}/submitit/%j_0_log.err"]
    for option in dry_run:
        assert f"#SBATCH {option}\n" in script, option
    assert "module load cuda/12.4\n" in script
    assert (run / "submitit" / "4242_submitted.pkl").is_file()
    assert json.loads((run / CONFIG_NAME).read_text())["epochs"] == 450
    assert json.loads((run / "launch.json").read_text())["job_id"] == "4242"
    assert run_status(experiment) == "queued (job 4242, PENDING)"
    assert main(["status", str(grid), "--only", "e450_late"]) == 0
    assert capsys.readouterr().out == "e450_late  queued (job 4242, PENDING)\n"
    # Submitting the file again leaves the queued run alone.
    assert main(["run", str(grid), "--launcher", "slurm", "--only", "e450_late"]) == 0
    assert "e450_late: queued (job 4242, PENDING), not submitted again" in capsys.readouterr().out


def test_status_lines_from_the_run_folder(grid):
    late, small = resolve_experiments(grid)
    assert run_status(late) == "not started"
    folder = late.out
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text('{"epoch": 0.5, "iteration": 32}\n'
                                      '{"epoch": 112.5, "iteration": 7200}\n')
    (folder / "checkpoint_last.pth").write_bytes(b"")
    record = {"launcher": "local", "host": "elsewhere", "pid": 1, "command": []}
    (folder / "launch.json").write_text(json.dumps(record))
    assert run_status(late) == ("stopped at epoch 112.5 of 450 (resumable; process 1 on "
                                "elsewhere, which is gone)")
    (folder / "launch.json").write_text(json.dumps(dict(record, host=socket.gethostname(),
                                                        pid=os.getpid())))
    assert run_status(late) == f"running at epoch 112.5 of 450 (process {os.getpid()} on " \
        f"{socket.gethostname()})"
    (folder / "launch.json").write_text(json.dumps(dict(record, exit_code=1)))
    (folder / "train_stderr.log").write_text(
        " 40%|####      | 7200/28800 [10:00<30:00, 12.00it/s]\rTraceback (most recent call "
        "last):\n  File \"x.py\", line 1\nmaskdla.train.TrainingDiverged: loss is nan at "
        "iteration 7201\n 40%|####      | 7201/28800 [10:00<30:00, 12.00it/s]\n")
    assert run_status(late) == ("failed at epoch 112.5 of 450: maskdla.train.TrainingDiverged: "
                                "loss is nan at iteration 7201")
    (folder / "metrics.json").write_text('{"bbox": {"AP": 69.564}, "segm": {"AP": 68.171}}')
    (folder / "summary.json").write_text("{}")
    assert run_status(late) == "finished: segm AP 68.17, box AP 69.56"
    assert run_status(small) == "not started"


def test_last_error_line():
    assert last_error_line("maskdla: error: data/x.xml: broken XML\n") == \
        "maskdla: error: data/x.xml: broken XML"
    assert last_error_line("all fine\n 10%| 1/10 [00:01<00:09, 1.00it/s]") == ""


# ------------------------------------------------------------------ submitit jobs on this CPU

TINY_GRID = """
out_dir = "runs/tiny"

[defaults]
backbone = "vovnet19slim"
data = "data"
epochs = 1
batch_size = 1
min_size = [64]
max_size = 128
workers = 0
device = "cpu"
energy = false
warmup_iters = 0
log_every = 1
checkpoint_every = 0.5
rois_per_image = 32

[launcher]
time = 10

[[runs]]
name = "a"

[[runs]]
name = "b"
lr = 0.01
"""


@pytest.fixture()
def tiny_grid(tmp_path, monkeypatch):
    """Two tiny CPU runs (2 train pages of 128 px, batch 1: 2 iterations an epoch)."""
    pytest.importorskip("submitit")
    from maskdla.data.synthetic import generate_corpus

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    generate_corpus(tmp_path / "data", pages=4, train=2, seed=3, width=128)
    return write_file(tmp_path, TINY_GRID)


def _children(pid: int) -> list:
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """A process that runs (not gone, not a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _wait_for(condition, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_grid_runs_to_the_end_as_local_submitit_jobs(tiny_grid):
    """submitit's LocalExecutor runs the jobs the slurm launcher submits: two runs train to
    the end, a third with missing data fails, and status tells them apart."""
    tiny_grid.write_text(tiny_grid.read_text() + '\n[[runs]]\nname = "broken"\n'
                         'data = "no/such/data"\n')
    experiments = resolve_experiments(tiny_grid)
    spec = SlurmSpec.from_sources(read_experiment_file(tiny_grid)["launcher"], {})
    submitted = launchers.submit_slurm(experiments, spec, cluster="local")
    assert [experiment.name for experiment, _ in submitted] == ["a", "b", "broken"]
    assert all(run_status(experiment).startswith(("queued (job", "running"))
               for experiment in experiments)
    for experiment, job in submitted:
        job.wait()
    lines = {experiment.name: run_status(experiment) for experiment in experiments}
    assert re.fullmatch(r"finished: segm AP \d+\.\d\d, box AP \d+\.\d\d", lines["a"])
    assert re.fullmatch(r"finished: segm AP \d+\.\d\d, box AP \d+\.\d\d", lines["b"])
    assert lines["broken"].startswith("failed at epoch 0 of 1: RuntimeError: training exited "
                                      "with code 2: maskdla: error: ")
    for experiment, job in submitted:
        folder = experiment.out / "submitit"
        assert (folder / f"{job.job_id}_0_log.out").is_file()
        assert (folder / f"{job.job_id}_0_log.err").is_file()
    summary = json.loads(Path("runs/tiny/a/summary.json").read_text())
    assert summary["iterations"] == 2
    # Finished runs are never submitted again.
    again = launchers.submit_slurm(experiments[:2], spec, cluster="local")
    assert again == []


@pytest.fixture
def sigint_interrupts():
    """submitit's LocalExecutor cancels a job with SIGINT. A shell starts a background job
    (``cmd &``, as CI scripts and nohup do) with SIGINT ignored, its children inherit that and
    the job would never see the cancel: restore Python's own SIGINT handling for the test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.usefixtures("sigint_interrupts")
def test_a_requeued_job_and_a_killed_one_resume_from_their_last_checkpoint(tiny_grid):
    """A time-limit warning (USR2, as SLURM sends it) makes submitit requeue the job, which
    resumes; a job killed outright leaves no training behind, and launching the run again
    resumes it too. 4 epochs = 8 iterations, a checkpoint at each."""
    experiment = resolve_experiments(tiny_grid, only=["a"], overrides={"epochs": 4})[0]
    spec = SlurmSpec(time=10)
    [(_, job)] = launchers.submit_slurm([experiment], spec, cluster="local")
    _wait_for(lambda: (experiment.out / "checkpoint_last.pth").is_file())
    [task] = _children(int(job.job_id))
    os.kill(task, signal.SIGUSR2)  # the job's time is nearly up
    _wait_for(lambda: "resumed from" in (job.stdout() or ""))
    iterations = lambda: [json.loads(line)["iteration"] for line in  # noqa: E731
                          (experiment.out / "log.jsonl").read_text().splitlines()]
    resumed_at = iterations()[-1]
    _wait_for(lambda: iterations()[-1] > resumed_at + 1)
    assert run_status(experiment).startswith("running at epoch ")
    training = [grandchild for child in _children(int(job.job_id))
                for grandchild in _children(child)]
    assert training
    job.cancel()  # killed
    _wait_for(job.done, 60)
    _wait_for(lambda: not any(_alive(pid) for pid in training), 60)
    assert re.match(r"stopped at epoch [\d.]+ of 4 \(resumable; ", run_status(experiment))
    [(_, again)] = launchers.submit_slurm([experiment], spec, cluster="local")
    again.wait()
    assert "resumed from" in again.stdout()
    assert run_status(experiment).startswith("finished: segm AP ")
    assert json.loads((experiment.out / "summary.json").read_text())["iterations"] == 8
    assert iterations()[-1] == 8


def test_status_of_submitit_jobs_from_their_result_files(grid):
    """A job that raised is failed; one that ran out of requeues is stopped, resumable."""
    import pickle
    late = resolve_experiments(grid)[0]
    folder = late.out / "submitit"
    folder.mkdir(parents=True)
    (late.out / "checkpoint_last.pth").write_bytes(b"")
    (late.out / "launch.json").write_text(json.dumps(
        {"launcher": "slurm", "executor": "slurm", "job_id": "77"}))
    result = folder / "77_0_result.pkl"
    result.write_bytes(pickle.dumps(("error", "Traceback (most recent call last):\n  ...\n"
                                     "RuntimeError: training exited with code 2: maskdla: "
                                     "error: data/x.xml: broken XML\n")))
    assert run_status(late) == ("failed at epoch 0 of 450: RuntimeError: training exited "
                                "with code 2: maskdla: error: data/x.xml: broken XML")
    result.write_bytes(pickle.dumps(("error", "submitit.core.utils.UncompletedJobError: Job "
                                     "not requeued because: timed-out too many times.")))
    assert run_status(late) == ("stopped at epoch 0 of 450 (resumable; job 77 not requeued "
                                "again: Job not requeued because: timed-out too many times.)")


@pytest.mark.slow
def test_the_local_launcher_trains_a_run_and_reports_a_failed_one(tiny_grid, capsys):
    tiny_grid.write_text(tiny_grid.read_text() + '\n[[runs]]\nname = "broken"\n'
                         'data = "no/such/data"\n')
    assert main(["run", str(tiny_grid), "--only", "a,broken"]) == 1
    out = capsys.readouterr().out
    assert "trained 1, skipped 0 finished, failed 1: broken" in out
    a, broken = resolve_experiments(tiny_grid, only=["a", "broken"])
    assert run_status(a).startswith("finished: segm AP ")
    assert json.loads((a.out / "launch.json").read_text())["exit_code"] == 0
    line = run_status(broken)
    assert line.startswith("failed at epoch 0 of 1: maskdla: error: ") and "no/such/data" in line
    assert main(["run", str(tiny_grid), "--only", "a"]) == 0  # finished: not trained again
    assert "a: finished, skipped" in capsys.readouterr().out
