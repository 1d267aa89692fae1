"""maskdla.experiments: experiment files, the commands they launch, plans, skip/resume."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from maskdla.errors import InputError
from maskdla.experiments import (command, main, resolve_experiments, run_experiments,
                                 schedule, train_size)

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


def test_command_single_and_torchrun(grid):
    late, small = resolve_experiments(grid)
    assert command(late) == [
        sys.executable, "-m", "maskdla.train", "--backbone", "resnet50",
        "--data", "no/such/data", "--lr", "0.02", "--epochs", "450", "--lr-steps", "late",
        "--batch-size", "2", "--out", "runs/grid/e450_late"]
    assert command(small)[3:] == [
        "--backbone", "resnet50", "--data", "no/such/data", "--lr", "0.02",
        "--epochs", "225", "--min-size", "640,800", "--deterministic", "--no-energy",
        "--classes", "drop-capital", "lyrics", "staff", "--class-map", "paragraph=lyrics",
        "--batch-size", "2", "--out", "runs/grid/e225"]
    distributed = command(resolve_experiments(grid, nproc=2, only=["e225"])[0])
    assert distributed[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                               "--nproc_per_node=2"]
    assert distributed[5:7] == ["-m", "maskdla.train"]
    assert distributed[distributed.index("--batch-size") + 1] == "1"


def test_command_round_trips_through_the_train_cli(grid):
    """The flags the runner builds parse back, in maskdla.train's own CLI, to the config
    the experiment file describes."""
    import maskdla.train as train
    for experiment in resolve_experiments(grid):
        parsed = train.config_from_args(train.build_parser().parse_args(command(experiment)[3:]))
        for key, value in experiment.config.items():
            assert getattr(parsed, key) == value, key


@pytest.fixture()
def launched(monkeypatch):
    """Record subprocess.run calls instead of training; exit codes from a queue."""
    calls, codes = [], []

    def fake_run(arguments, check=False):
        calls.append(arguments)
        return subprocess.CompletedProcess(arguments, codes.pop(0) if codes else 0)
    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls, codes


def test_finished_runs_skipped_unfinished_resumed(grid, tmp_path, launched, capsys):
    calls, _ = launched
    finished = tmp_path / "runs/grid/e450_late"
    finished.mkdir(parents=True)
    (finished / "checkpoint_final.pth").write_bytes(b"")
    (finished / "checkpoint_last.pth").write_bytes(b"")
    unfinished = tmp_path / "runs/grid/e225"
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint_last.pth").write_bytes(b"")

    late, small = resolve_experiments(grid)
    assert (late.status, small.status) == ("finished", "unfinished")
    assert command(small)[-2:] == ["--resume", "auto"]
    assert main(["run", str(grid)]) == 0
    assert len(calls) == 1 and calls[0][-3:] == ["runs/grid/e225", "--resume", "auto"]
    out = capsys.readouterr().out
    assert "e450_late: finished, skipped" in out
    assert "e225: resuming -> runs/grid/e225" in out
    assert "report: python -m maskdla.report runs/grid" in out


def test_a_failed_run_does_not_stop_the_rest(grid, launched, capsys):
    calls, codes = launched
    codes += [3, 0]
    assert run_experiments(resolve_experiments(grid)) == 1
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
    ('[[runs]]\nname = "a"\nstop_after_iterations = 5\n',
     "stop_after_iterations: no python -m maskdla.train flag sets this field"),
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
        arguments = command(experiment)
        assert arguments[arguments.index("--data") + 1] == "elsewhere"
        assert arguments[arguments.index("--workers") + 1] == "8"


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
