"""Training: the study's schedule arithmetic, resume equivalence, the NaN guard, safe
checkpoint loading, DDP through torchrun, bad flags."""
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch

from maskdla.checkpoint import load_checkpoint
from maskdla.cli import run_main
from maskdla.data.synthetic import generate_corpus
from maskdla.errors import InputError
from maskdla.inference import cpu_supports_bf16
from maskdla.schedule import (epochs_to_iterations, iterations_per_epoch, lr_lambda,
                              parse_lr_steps, plan)
from maskdla.train import TrainConfig, TrainingDiverged, fit as train, main


# ------------------------------------------------------------------ schedule arithmetic

def test_the_studys_epoch_arithmetic():
    assert 90_000 / iterations_per_epoch(128, 2) == 1406.25
    assert 90_000 / iterations_per_epoch(128, 4) == 2812.5
    assert epochs_to_iterations(2812.5, 128, 4) == 90_000
    schedule = plan(450, train_size=128, batch_size=2, world_size=1, lr_steps="late")
    assert schedule.iterations_per_epoch == 64
    assert schedule.total_iterations == 28_800
    assert schedule.milestone_epochs == (337.5, 405.0)
    assert schedule.milestone_iterations == (21_600, 25_920)
    described = schedule.describe()
    assert "LR step at epoch 337.5 = iteration 21600" in described
    assert "iterations per epoch: 64" in described


@pytest.mark.parametrize("preset,expected", [
    ("default", [300, 400]), ("early", [180, 315]), ("late", [337.5, 405])])
def test_lr_step_presets_at_450_epochs(preset, expected):
    assert parse_lr_steps(preset, 450) == pytest.approx(expected, abs=1e-9)


def test_explicit_and_fractional_lr_steps():
    assert parse_lr_steps("300,400", 450) == [300, 400]
    assert parse_lr_steps("0.4,0.7", 450) == pytest.approx([180, 315])
    assert parse_lr_steps("none", 450) == []
    for bad in ("400,300", "500,600", "soon", "-1"):
        with pytest.raises(ValueError, match="--lr-steps"):
            parse_lr_steps(bad, 450)


def test_fractional_epoch_milestones_convert_exactly_and_distributed_batches_count():
    # 2 processes x batch 2 = 4 images per iteration: 450 epochs of 128 pages = 14,400
    schedule = plan(450, 128, batch_size=2, world_size=2, lr_steps="late")
    assert schedule.total_iterations == 14_400
    assert schedule.milestone_iterations == (10_800, 12_960)
    # batch 6 does not divide 128: 21.33 iterations per epoch, milestones rounded once
    schedule = plan(450, 128, batch_size=6, world_size=1, lr_steps="default")
    assert schedule.iterations_per_epoch == pytest.approx(128 / 6)
    assert schedule.milestone_iterations == (6400, 8533)


def test_lr_multiplier_has_linear_warmup_and_steps():
    multiplier = lr_lambda((10, 20), gamma=0.1, warmup_iters=4, warmup_factor=0.001)
    assert multiplier(0) == pytest.approx(0.001)
    assert multiplier(2) == pytest.approx(0.001 * 0.5 + 0.5)
    assert multiplier(4) == 1
    assert multiplier(10) == pytest.approx(0.1)
    assert multiplier(25) == pytest.approx(0.01)


# ------------------------------------------------------------------ tiny runs

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("corpus") / "data", pages=10, train=8,
                           seed=3, width=160)


def test_epoch_batches_run_across_epochs_and_start_mid_epoch(corpus):
    """One pass over the rest of a run: the same batches as epoch-by-epoch iteration, from
    any start; each rank of two sees its own half."""
    from maskdla.data.dataset import Dataset, View
    from maskdla.data.samplers import EpochBatches

    dataset = Dataset.from_folder(corpus, "train", view=View(min_size=96, max_size=160))
    batches = EpochBatches(dataset, 3, seed=5)
    per_epoch = batches.per_epoch
    assert per_epoch == 3  # 8 pages, batch 3, one aspect-ratio group: 3 + 3 + 2
    by_epoch = []
    for epoch in range(4):
        batches.start(epoch)
        assert len(batches) == per_epoch
        by_epoch.append(list(batches))
    assert by_epoch[0] != by_epoch[1]  # reshuffled every epoch
    flat = [batch for epoch in by_epoch for batch in epoch]
    for start in range(0, 7):
        for count in (0, 1, 4, 12 - start):
            batches.start(*divmod(start, per_epoch), count=count)
            assert len(batches) == count
            assert list(batches) == flat[start:start + count], (start, count)
    halves = []
    for rank in range(2):
        ranked = EpochBatches(dataset, 2, seed=5, rank=rank, world_size=2)
        ranked.start(0, count=2 * ranked.per_epoch)
        halves.append(list(ranked))
    assert len(halves[0]) == len(halves[1]) == 4
    first_epoch = [index for batch in halves[0][:2] + halves[1][:2] for index in batch]
    assert sorted(first_epoch) == list(range(8))


def tiny_config(corpus, out, **overrides):
    values = dict(backbone="vovnet19slim", data=str(corpus), epochs=2, batch_size=2,
                  min_size=[96], max_size=160, workers=0, seed=1, deterministic=True,
                  out=str(out), warmup_iters=0, checkpoint_every=0.5, log_every=1,
                  device="cpu", energy=False, lr=0.01, rois_per_image=64, clip_grad_norm=1.0)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_same_weights(corpus, tmp_path):
    reference = train(tiny_config(corpus, tmp_path / "uninterrupted"))
    assert reference["iterations"] == 8
    assert 0 < reference["clipped_steps"] <= 8  # tiny_config clips at 1.0: clipping acts
    # 4 iterations per epoch, checkpoints every 2: killed at iteration 3, mid-epoch,
    # after the checkpoint of iteration 2
    interrupted = tiny_config(corpus, tmp_path / "interrupted", stop_after_iterations=3)
    assert train(interrupted) == {"stopped_at_iteration": 3}
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoint_last.pth")["iteration"] == 2
    assert not (tmp_path / "interrupted" / "checkpoint_final.pth").exists()
    resumed = train(tiny_config(corpus, tmp_path / "interrupted", resume="auto"))
    assert resumed["iterations"] == 8
    expected = load_checkpoint(tmp_path / "uninterrupted" / "checkpoint_final.pth")["model"]
    actual = load_checkpoint(tmp_path / "interrupted" / "checkpoint_final.pth")["model"]
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == []
    assert resumed["parameter_checksums"] == reference["parameter_checksums"]
    assert resumed["clipped_steps"] == reference["clipped_steps"]  # counted across segments
    # the resumed run's log continues where the checkpoint left off
    log = [json.loads(line) for line in (tmp_path / "interrupted" / "log.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in log] == [1, 2, 3, 3, 4, 5, 6, 7, 8]


@pytest.mark.slow
def test_run_folder_contents_and_summary(corpus, tmp_path):
    summary = train(tiny_config(corpus, tmp_path / "run", epochs=1, energy=True,
                                energy_interval=0.05))
    run = tmp_path / "run"
    for name in ("config.json", "log.jsonl", "energy.csv", "metrics.json", "summary.json",
                 "summary.md", "checkpoint_last.pth", "checkpoint_final.pth"):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run / "checkpoint_final.pth")
    assert set(checkpoint) == {"model", "optimizer", "scheduler", "scaler", "epoch", "iteration",
                               "rng", "config", "classes", "progress"}
    assert checkpoint["progress"]["training_time_s"] > 0
    assert checkpoint["classes"] == ["drop-capital", "lyrics", "staff"]
    assert checkpoint["config"]["norm"] == "gn"  # resolved default, so eval can rebuild it
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert {"epoch", "iteration", "lr", "loss", "loss_mask", "time", "images_per_s"} <= set(record)
    assert record["epoch"] == 1.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "APm", "APl", "AR", "per_class"} <= set(metrics["segm"])
    markdown = (run / "summary.md").read_text()
    assert "| Training Time | kWh | Cost |" in markdown
    assert "Segmentation" in markdown
    assert summary["energy"]["method"] == "unavailable"  # no GPU here


def _poison_training_losses(monkeypatch, poisoned, term, factor):
    """Make ``train`` build models whose training forward number ``n`` (1-based) multiplies
    the loss ``term`` by ``factor`` (NaN, inf) when ``poisoned(n)``."""
    import maskdla.train as train_module

    real_build_model = train_module.build_model_from_config
    calls = {"forward": 0}

    def build_poisoned_model(*args, **kwargs):
        model = real_build_model(*args, **kwargs)
        forward = model.forward

        def poisoned_forward(images, targets=None):
            losses = forward(images, targets)
            if model.training:
                calls["forward"] += 1
                if poisoned(calls["forward"]):
                    losses[term] = losses[term] * factor
            return losses

        model.forward = poisoned_forward
        return model

    monkeypatch.setattr(train_module, "build_model_from_config", build_poisoned_model)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    # iteration 3 diverges, and every one after it
    _poison_training_losses(monkeypatch, lambda number: number >= 3, "loss_mask", float("nan"))
    config = tiny_config(corpus, tmp_path / "run", epochs=1, log_every=10, nonfinite_limit=2)
    with pytest.raises(TrainingDiverged, match="NaN or infinite by iteration 4.*checkpoint_last.pth"):
        train(config)
    last = load_checkpoint(tmp_path / "run" / "checkpoint_last.pth")
    assert last["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in last["model"].values()
               if value.is_floating_point())
    assert not (tmp_path / "run" / "checkpoint_final.pth").exists()


class _CreatesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_checkpoint_is_refused_and_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as file:
        pickle.dump({"model": _CreatesAFile(str(marker)), "config": {}, "classes": []}, file)
    with pytest.raises(InputError, match="evil.pth: cannot load checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--resume", str(evil), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "evil.pth" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("argv,message", [
    (["--backbone", "resnet18"], "unknown backbone 'resnet18'"),
    (["--epochs", "-3"], "--epochs must be a positive number"),
    (["--lr-steps", "400,300"], "--lr-steps"),
    (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a CUDA device"),
    (["--device", "cuda:0"], "no CUDA GPU is available"),
    (["--data", "/nonexistent/data"], "/nonexistent/data"),
    (["--resume", "/nonexistent/last.pth"], "checkpoint file not found"),
    (["--class-map", "paragraph"], "expected OLD=NEW"),
    (["--patience", "3"], "--patience counts evaluations: give --eval-every too"),
    (["--best-metric", "segm."], "--best-metric 'segm.': expected a dotted path"),
    (["--mask-resolution", "32"], "invalid choice: 32"),
    (["--clip-grad-norm", "-1"], "expected a finite number >= 0"),
    (["--val-fraction", "1"], "expected a number in [0, 1)"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "-0.02"], "--lr must be a finite number > 0, got -0.02"),
    (["--momentum", "1.5"], "--momentum must be in [0, 1), got 1.5"),
    (["--momentum", "nan"], "--momentum must be in [0, 1), got nan"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number >= 0, got inf"),
    (["--weight-decay=-1e-4"], "--weight-decay must be a finite number >= 0"),
    (["--gamma", "0"], "--gamma (the LR factor at each step) must be in (0, 1], got 0.0"),
    (["--gamma", "nan"], "--gamma (the LR factor at each step) must be in (0, 1]"),
    (["--min-size", "1000", "--max-size", "10"], "--max-size 10 is below --min-size 1000"),
    (["--best-metric", "segm.APP"], "--best-metric segm.APP: segm has no figure 'APP'"),
    (["--best-metric", "loss.total"], "--best-metric loss.total: no evaluation writes 'loss'"),
    (["--best-metric", "lines.baseline_f1"], "lines metrics are not computed during training"),
])
def test_bad_flags_give_one_clear_message_and_exit_2(argv, message, tmp_path, capsys):
    if not torch.cuda.is_available() or "cuda" not in " ".join(argv):
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, argv + ["--out", str(tmp_path / "run"), "--no-energy"])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert message in error
        assert "Traceback" not in error
        assert not (tmp_path / "run").exists()


def test_argparse_rejects_bad_types(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(InputError, match="--loader-pass 'always'"):
        TrainConfig(loader_pass="always").validate()


@pytest.mark.slow
def test_one_loader_pass_for_the_run_trains_the_same_weights(corpus, tmp_path):
    """--loader-pass run (prefetching through epoch ends, a worker process) sees the same
    batches in the same order as a pass per epoch, so a deterministic run ends the same."""
    per_epoch = train(tiny_config(corpus, tmp_path / "epoch", epochs=2.5, checkpoint_every=0))
    one_pass = train(tiny_config(corpus, tmp_path / "run", epochs=2.5, checkpoint_every=0,
                                 loader_pass="run", workers=1))
    assert per_epoch["iterations"] == one_pass["iterations"] == 10  # ends mid-epoch
    assert one_pass["parameter_checksums"] == per_epoch["parameter_checksums"]


def test_the_public_api_is_plain_names():
    import maskdla
    import maskdla.train

    assert maskdla.fit is maskdla.train.fit and callable(maskdla.fit)
    assert maskdla.TrainConfig is TrainConfig is maskdla.train.TrainConfig


@pytest.mark.slow
def test_two_process_gloo_run_under_torchrun_ends_with_identical_parameters(corpus, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone",
               "-m", "maskdla.train", "--backbone", "vovnet19slim", "--data", str(corpus),
               "--epochs", "1", "--batch-size", "1", "--min-size", "64", "--max-size", "128",
               "--workers", "0", "--device", "cpu", "--no-energy", "--out", str(out),
               "--log-every", "1", "--warmup-iters", "0"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["iterations"] == 4  # 8 pages / (1 x 2 processes)
    checksums = summary["parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert "batch: 1 per process x 2 processes = 2" in result.stdout


def test_an_input_error_from_a_loader_worker_is_reported_as_one_line(tmp_path, capsys):
    from maskdla.data.dataset import Dataset, View

    corpus = generate_corpus(tmp_path / "data", pages=3, train=2, seed=5, width=96)
    dataset = Dataset.from_folder(corpus, "train", view=View(min_size=64, max_size=128))
    broken = dataset.image_path(0)
    broken.write_bytes(b"not an image")
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1,
                                         collate_fn=lambda batch: batch)

    def read_all(argv):
        for _ in loader:
            pass
        return 0

    with pytest.raises(SystemExit) as exit_info:
        run_main(read_all, [])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert str(broken) in error


def test_a_restarted_torchrun_worker_resumes_without_being_asked(tmp_path, monkeypatch):
    from maskdla.run_state import resume_path as _resume_path

    config = TrainConfig(out=str(tmp_path))
    assert _resume_path(config, tmp_path) is None  # nothing to resume
    (tmp_path / "checkpoint_last.pth").write_bytes(b"")
    with pytest.raises(InputError, match="holds a checkpoint already.*--resume auto"):
        _resume_path(config, tmp_path)  # a fresh start neither resumes nor overwrites
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _resume_path(config, tmp_path) == tmp_path / "checkpoint_last.pth"


# ------------------------------------------------------------------ the run config

def test_config_round_trips_through_json_and_toml_and_flags_override_it(tmp_path):
    from maskdla.train_cli import config_from_argv

    config = TrainConfig(backbone="vovnet19slim", epochs=3.5, min_size=[96, 128], max_size=160,
                         class_map={"paragraph": "text", "junk": None}, scale_lr=True,
                         anchor_ratios=[0.25, 1.0], out=str(tmp_path / "run"))
    for name in ("run.json", "run.toml"):
        config.save(tmp_path / name)
        assert TrainConfig.load(tmp_path / name) == config
        from_cli = config_from_argv(["--config", str(tmp_path / name), "--epochs", "7",
                                     "--min-size", "64"])
        assert from_cli == dataclasses.replace(config, epochs=7.0, min_size=[64])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left


def test_anchor_scales_spread_anchors_over_the_octave_and_survive_a_checkpoint(tmp_path):
    from maskdla.checkpoint import load_model, save_checkpoint
    from maskdla.model import anchor_sizes, build_model_from_config
    from maskdla.train_cli import config_from_argv

    assert anchor_sizes(1) == ((32,), (64,), (128,), (256,), (512,))
    assert anchor_sizes(3)[0] == (32, 40.32, 50.8) and anchor_sizes(3)[4][2] == 812.75
    config = TrainConfig(backbone="vovnet19slim", min_size=[64], max_size=96, anchor_scales=3,
                         anchor_ratios=[0.5, 1.0, 2.0, 4.0])
    torch.manual_seed(0)
    model = build_model_from_config(config, num_classes=3)
    assert model.rpn.anchor_generator.num_anchors_per_location() == [12] * 5
    assert model.rpn.head.cls_logits.out_channels == 12
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[0, 10:54, 8:50] = 1
    losses = model.train()([torch.rand(3, 64, 80)], [{"boxes": torch.tensor([[8., 10, 50, 54]]),
                                                      "labels": torch.tensor([1]),
                                                      "masks": masks}])
    assert all(torch.isfinite(loss) for loss in losses.values())
    path = tmp_path / "model.pth"
    save_checkpoint({"model": model.state_dict(), "config": config.to_dict(),
                     "classes": ["a", "b"]}, path)
    loaded, _ = load_model(path)  # rebuilt from the config: 12 anchors, not torchvision's 3
    assert loaded.rpn.head.cls_logits.out_channels == 12
    assert config_from_argv(["--anchor-scales", "2"]).anchor_scales == 2
    with pytest.raises(InputError, match="--anchor-scales must be one of 1, 2, 3, 4, got 5"):
        TrainConfig(anchor_scales=5).validate()


def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "run.toml").write_text('epochs = "many"\nbackbone = "resnet18"\n')
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--config", str(tmp_path / "run.toml")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "run.toml" in error and "unknown backbone 'resnet18'" in error
    (tmp_path / "run.json").write_text('{"epochs": 3, "learning_rate": 0.1}')
    with pytest.raises(InputError, match="run.json.*unknown training setting.*learning_rate"):
        TrainConfig.load(tmp_path / "run.json")


def test_configs_of_older_checkpoints_still_load():
    from maskdla.backbones import BACKBONES

    old = dict(TrainConfig().to_dict(), vovnet_version=2, anchor_ratios=None, min_size=None)
    config = TrainConfig.from_dict(old)
    assert config == TrainConfig()  # None meant the default then
    with pytest.raises(InputError, match="only the VoVNet backbones have a version 1"):
        TrainConfig.from_dict(dict(old, backbone="resnet50", vovnet_version=1))
    if "vovnet39v1" not in BACKBONES:
        pytest.skip("the V1 VoVNet rows are not in this tree")
    assert TrainConfig.from_dict(dict(old, backbone="vovnet39", vovnet_version=1)).backbone \
        == "vovnet39v1"


def test_load_model_hands_back_the_config_as_a_train_config(tmp_path):
    from maskdla.checkpoint import load_model, save_checkpoint
    from maskdla.model import build_model_from_config

    config = TrainConfig(backbone="vovnet19slim", min_size=[64], max_size=96)
    model = build_model_from_config(config, num_classes=3)
    old = dict(config.to_dict(), vovnet_version=2, anchor_ratios=None)
    save_checkpoint({"model": model.state_dict(), "config": old, "classes": ["a", "b"]},
                    tmp_path / "model.pth")
    loaded, checkpoint = load_model(tmp_path / "model.pth")
    assert isinstance(checkpoint["config"], TrainConfig)
    assert checkpoint["config"] == dataclasses.replace(config, norm=None)
    assert loaded.transform.min_size == (64,)


# ------------------------------------------------------------------ training that holds up

def test_warmup_protects_short_runs_and_stays_a_tenth_of_long_ones():
    from maskdla.schedule import warmup_iterations

    assert warmup_iterations(1000, 12) == 6  # was 1 (a tenth)
    assert warmup_iterations(1000, 192) == 50
    assert warmup_iterations(1000, 1_000) == 100
    assert warmup_iterations(1000, 28_800) == 1000
    assert warmup_iterations(0, 12) == 0  # --warmup-iters 0 still turns it off
    assert warmup_iterations(1000, 1) == 0


def test_one_nan_step_is_skipped_counted_and_the_run_finishes(corpus, tmp_path, monkeypatch):
    _poison_training_losses(monkeypatch, lambda number: number == 2, "loss_box_reg", float("inf"))
    summary = train(tiny_config(corpus, tmp_path / "run", epochs=1, checkpoint_every=0))
    assert summary["iterations"] == 4 and summary["skipped_steps"] == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["skipped_steps"] for record in log] == [0, 1, 0, 0]
    assert log[1]["loss"] is None and all(record["loss"] > 0 for record in log[::2])
    final = load_checkpoint(tmp_path / "run" / "checkpoint_final.pth")["model"]
    assert all(torch.isfinite(value).all() for value in final.values() if value.is_floating_point())
    assert "steps skipped for a NaN/inf loss: 1" in (tmp_path / "run" / "summary.md").read_text()


def test_resuming_a_pretrained_run_needs_no_pretrained_flag(tmp_path):
    from maskdla.run_state import resumed_config as _resumed_config

    saved = TrainConfig(backbone="vovnet19slim", pretrained="body.pth", norm="frozenbn")
    checkpoint = {"optimizer": {}, "iteration": 2, "config": saved.to_dict()}
    resumed = _resumed_config(TrainConfig(backbone="vovnet19slim", resume="auto"), checkpoint,
                              tmp_path / "checkpoint_last.pth")
    assert resumed.norm == "frozenbn"
    with pytest.raises(InputError, match="trained with norm='frozenbn', this run asks for 'gn'"):
        _resumed_config(TrainConfig(backbone="vovnet19slim", norm="gn"), checkpoint, tmp_path)
    with pytest.raises(InputError, match="mask_resolution=28, this run asks for 56"):
        _resumed_config(TrainConfig(backbone="vovnet19slim", mask_resolution=56), checkpoint,
                        tmp_path)


def test_best_metric_paths_and_patience():
    from types import SimpleNamespace

    from maskdla.evaluation.selection import Selection, metric_value
    from maskdla.train import _select

    metrics = {"bbox": {"AP": 40.0}, "segm": {"AP": 30.0, "AP50": 55.5,
                                              "per_class": {"staff": 61.0}}}
    assert metric_value(metrics, "segm.AP50") == 55.5
    assert metric_value(metrics, "segm.per_class.staff") == 61.0
    with pytest.raises(InputError, match="--best-metric layout.region_f1: metrics.json has no "
                                         "'layout' \\(keys: bbox, segm\\)"):
        metric_value(metrics, "layout.region_f1")
    run = SimpleNamespace(selection=Selection(), iteration=0, say=lambda message: None,
                          config=TrainConfig(eval_every=1, patience=2, best_metric="segm.AP"))
    decisions = []
    for run.iteration, value in ((10, 30.0), (20, 31.0), (30, 31.0), (40, 29.0), (50, 35.0)):
        decisions.append(_select(run, value))
        if run.selection.stop_reason:
            break
    assert decisions == [True, True, False, False]  # ties do not count as better
    assert run.selection.best == 31.0 and run.selection.best_iteration == 20
    assert run.selection.stop_reason.startswith("early stop at iteration 40: segm.AP did not "
                                                "improve on 31.00 (iteration 20) for 2")


def test_the_evaluators_say_what_an_evaluation_during_training_computes():
    from maskdla.evaluation.evaluators import EVALUATORS, check_best_metric, evaluators_for

    assert list(EVALUATORS) == ["coco", "layout", "proposals", "lines"]
    assert evaluators_for("segm.AP") == evaluators_for("bbox.per_class.staff") == ("coco",)
    assert evaluators_for("layout.region_f1") == ("coco", "layout")
    assert evaluators_for("proposals.all.recall.50@100") == ("coco", "proposals")
    for path in ("segm.AP", "bbox.AR", "segm.per_class.staff", "layout.pixel_miou",
                 "proposals.all.recall.50@100"):
        check_best_metric(path)  # no InputError


@pytest.mark.slow
def test_validation_split_best_checkpoint_early_stop_and_tensorboard(corpus, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # LR 1e-12: the weights stay put, so the second evaluation cannot improve on the first
    run = tmp_path / "run"
    summary = train(tiny_config(corpus, run, epochs=3, lr=1e-12, weight_decay=0.0,
                                val_fraction=0.25, eval_every=1, patience=1,
                                best_metric="segm.AP50", tensorboard=True))
    assert summary["val_size"] == 2 and summary["train_size"] == 6
    # 3 iterations per epoch: evaluations at 3 and 6, then patience 1 stops the run
    assert summary["stop_reason"].startswith("early stop at iteration 6: segm.AP50")
    assert summary["iterations"] == 6
    history = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
    assert [(row["iteration"], row["split"], row["best"]) for row in history] == [
        (3, "val", True), (6, "val", False)]
    best = load_checkpoint(run / "checkpoint_best.pth")
    assert best["iteration"] == 3
    assert summary["evaluated"] == {"checkpoint": "checkpoint_best.pth", "iteration": 3,
                                    "best_metric": "segm.AP50", "value": history[0]["value"],
                                    "split": "val"}
    assert "Weights: checkpoint_best.pth (iteration 3" in (run / "summary.md").read_text()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/mask", "lr", "speed/images_per_s", "speed/data_wait_percent",
            "val/segm/AP", "val/bbox/AP50", "final_test/segm/AP"} <= scalars
    assert [event.step for event in events.Scalars("val/segm/AP50")] == [3, 6]
    assert {"overlay/0", "overlay/1"} <= set(events.Tags()["images"])


@pytest.mark.slow
def test_the_best_checkpoint_can_be_chosen_by_a_layout_metric(corpus, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(corpus, run, epochs=1, eval_every=1,
                                best_metric="layout.region_f1"))
    history = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and "layout" in history[0]
    assert history[0]["value"] == history[0]["layout"]["region_f1"]
    assert summary["evaluated"]["best_metric"] == "layout.region_f1"
    assert "layout" in json.loads((run / "metrics.json").read_text())


def test_tensorboard_without_its_package_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(InputError, match=r"pip install 'maskdla\[tensorboard\]'"):
        train(TrainConfig(tensorboard=True, out=str(tmp_path / "run"), device="cpu"))
    assert not (tmp_path / "run").exists()


def test_mask_resolution_56_predicts_56_pixel_masks_and_trains(corpus):
    from maskdla.data.dataset import Dataset, View, collate_fn
    from maskdla.inference import raw_detections
    from maskdla.model import build_model_from_config

    config = TrainConfig(backbone="vovnet19slim", min_size=[96], max_size=160,
                         mask_resolution=56, rois_per_image=32)
    model = build_model_from_config(config, num_classes=4)
    assert model.roi_heads.mask_roi_pool.output_size == (28, 28)
    images, targets = collate_fn([Dataset.from_folder(corpus, "train",
                                                      view=View(min_size=96, max_size=160))[0]])
    losses = model.train()(images, targets)
    assert torch.isfinite(losses["loss_mask"])
    model.eval().roi_heads.score_thresh = 0.0
    with torch.no_grad():
        detections, _ = raw_detections(model, images)
    assert detections[0]["masks"].shape[1:] == (1, 56, 56)


def test_brightness_contrast_reaches_the_training_view_only(corpus):
    from maskdla.data.sources import run_data
    from maskdla.train_cli import config_from_argv

    config = config_from_argv(["--data", str(corpus), "--brightness-contrast", "0.3",
                               "--min-size", "96", "--max-size", "160"])
    data = run_data(config)
    assert (data.train.view.augment.brightness_contrast == 0.3
            and data.test.view.augment.brightness_contrast == 0.0)
    assert data.val is None


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_a_trained_model_with_other_classes(corpus, tmp_path,
                                                                           capsys):
    first = tmp_path / "first"
    train(tiny_config(corpus, first, epochs=0.5))
    trained = load_checkpoint(first / "checkpoint_final.pth")
    # the new corpus: staff and lyrics merged into one "music" class, drop-capital kept
    config = tiny_config(corpus, tmp_path / "second", epochs=0.5, seed=7,
                         init_from=str(first / "checkpoint_final.pth"),
                         class_map={"staff": "music", "lyrics": "music"})
    summary = train(config)
    assert summary["iterations"] == 2  # a new schedule, not the first run's
    out = capsys.readouterr().out
    assert "class layers rebuilt" in out and "drop-capital" in out
    second = load_checkpoint(tmp_path / "second" / "checkpoint_final.pth")
    assert second["classes"] == ["drop-capital", "music"]
    assert second["config"]["init_from"] == str(first / "checkpoint_final.pth")
    # the body started from the trained weights: it stays much closer to them than a run
    # from scratch with the same seed
    body = [key for key in trained["model"] if key.startswith("backbone.body.")
            and trained["model"][key].is_floating_point()]
    scratch = tmp_path / "scratch"
    train(tiny_config(corpus, scratch, epochs=0.5, seed=7, class_map=config.class_map))
    fresh = load_checkpoint(scratch / "checkpoint_final.pth")

    def distance(state):
        return sum(float((state[key] - trained["model"][key]).abs().sum()) for key in body)

    assert distance(second["model"]) < 0.5 * distance(fresh["model"])
    with pytest.raises(InputError, match="--init-from"):
        TrainConfig(init_from="x.pth", pretrained="y.pth").validate()
    with pytest.raises(InputError, match="--init-from"):
        TrainConfig(init_from="x.pth", resume="y.pth").validate()


@pytest.mark.slow
def test_init_from_with_resume_auto_starts_from_the_model_then_continues_its_own_run(
        corpus, tmp_path, capsys):
    # what an experiment's run does: --init-from with --resume auto
    first = tmp_path / "first"
    train(tiny_config(corpus, first, epochs=0.5))
    capsys.readouterr()
    run = tmp_path / "fine-tuned"
    config = dict(epochs=1, seed=7, init_from=str(first / "checkpoint_final.pth"), resume="auto")
    assert train(tiny_config(corpus, run, stop_after_iterations=3, **config)) == {
        "stopped_at_iteration": 3}
    assert "init from" in capsys.readouterr().out
    summary = train(tiny_config(corpus, run, **config))
    out = capsys.readouterr().out
    assert "resumed from" in out and "at iteration 2" in out and "init from" not in out
    assert summary["iterations"] == 4


# ------------------------------------------------------------------ bad input at the edge


def test_a_batch_larger_than_the_training_set_is_refused_before_the_run_starts(
        corpus, tmp_path, capsys):
    """It used to plan 1e-06 iterations per epoch and grow to 24 GB filling the batch."""
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--data", str(corpus), "--batch-size", "1000000", "--out", str(run),
                        "--no-energy", "--device", "cpu", "--workers", "0"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == ("maskdla: error: --batch-size 1000000 is larger than the training set "
                     "(8 pages): give a batch of at most 8 per process, or more training pages")
    assert not run.exists()
    from maskdla.schedule import check_batch_fits

    check_batch_fits(8, 8)  # the whole set in one batch is fine
    with pytest.raises(InputError, match=r"--batch-size 3 x 3 processes = 9 pages an "
                                         r"iteration is larger than the training set \(8 pages\)"):
        check_batch_fits(8, 3, world_size=3)


def test_a_class_map_that_drops_every_class_is_one_clear_line(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["--data", str(corpus), "--class-map", "*=", "--out", str(run),
                        "--no-energy", "--device", "cpu", "--workers", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdla: error: {corpus / 'train'}: no class is left to train: --class-map drops "
        "every class of the data; a model needs at least one class besides the background")
    assert not run.exists()


def test_an_out_that_is_a_file_or_read_only_is_one_line(corpus, tmp_path, monkeypatch, capsys):
    """FileExistsError and EROFS/EACCES tracebacks used to come after loading the data."""
    import errno

    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    flags = ["--data", str(corpus), "--no-energy", "--device", "cpu", "--workers", "0"]
    for out, expected in ((taken, f"{taken}: --out: this is a file, not a folder"),
                          (taken / "run", f"{taken / 'run'}: --out: cannot create the folder: "
                                          f"{taken} is a file")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, flags + ["--out", str(out)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == f"maskdla: error: {expected}"
    # a read-only disk: root writes through chmod, so the disk refuses as EROFS would
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: not (mode & os.W_OK))
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, flags + ["--out", str(readonly / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdla: error: {readonly / 'run'}: --out: cannot create the folder: {readonly} "
        "is not writable")
    real_open = open

    def read_only_disk(file, mode="r", *args, **kwargs):
        if "x" in mode and str(file).startswith(str(readonly)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *args, **kwargs)

    import io
    monkeypatch.setattr(io, "open", read_only_disk)  # pathlib's open
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, flags + ["--out", str(readonly)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdla: error: {readonly}: --out: cannot write in this folder "
        f"({os.strerror(errno.EROFS)})")
    assert not list(readonly.iterdir())


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_leaves_no_file(tmp_path,
                                                                            monkeypatch):
    from maskdla.checkpoint import save_checkpoint

    def full_disk(obj, file):
        file.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                           "failed writing file data/12: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    path = tmp_path / "run" / "checkpoint_last.pth"
    with pytest.raises(InputError) as error:
        save_checkpoint({"model": {}}, path)
    assert str(error.value) == (f"{path}: cannot write the checkpoint, is the disk full? "
                                "(RuntimeError: [enforce fail at inline_container.cc:778] "
                                "PytorchStreamWriter failed writing file data/12: file write "
                                "failed)")
    assert not list(path.parent.iterdir())  # neither the file nor its temporary
    monkeypatch.setattr(torch, "save", lambda obj, file: 1 / 0)  # a bug stays a bug
    with pytest.raises(ZeroDivisionError):
        save_checkpoint({"model": {}}, path)


def test_a_file_that_is_no_checkpoint_is_called_so(tmp_path):
    """Random bytes used to be "Python objects other than tensors"; torch's page of
    weights_only advice (with terminal escape codes) is cut to its one meaningful line."""
    from maskdla.backbones import build_backbone

    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(InputError) as error:
        load_checkpoint(noise)
    message = str(error.value)
    assert message.startswith(f"{noise}: cannot load checkpoint: not a PyTorch file, or a "
                              "corrupted or truncated one (")
    assert "Python objects" not in message
    evil = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "hook": print}, evil)
    for load in (load_checkpoint, lambda path: build_backbone("resnet50", pretrained=str(path))):
        with pytest.raises(InputError) as error:
            load(evil)
        message = str(error.value)
        assert "holds Python objects other than tensors" in message
        assert "Unsupported global" in message
        assert "\x1b" not in message and "\n" not in message and len(message) < 400


def test_bf16_on_the_cpu_is_taken_where_the_cpu_has_bf16_kernels_and_refused_elsewhere(monkeypatch):
    from maskdla import train as training

    cpu = torch.device("cpu")
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: True)
    assert training.resolve_amp("bf16", cpu) == "bf16"
    assert training.resolve_amp(None, cpu) == "off"  # the default waits for its accuracy figure
    monkeypatch.setattr(training, "cpu_supports_bf16", lambda: False)
    with pytest.raises(InputError, match="--amp bf16: this CPU has no bfloat16 kernels"):
        training.resolve_amp("bf16", cpu)
    with pytest.raises(InputError, match="--amp fp16 needs a CUDA device"):
        training.resolve_amp("fp16", cpu)


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(),
                    reason="this CPU has no bfloat16 kernels")
def test_a_bf16_run_on_the_cpu_trains_finite_losses_and_saves_float32_weights(corpus, tmp_path):
    summary = train(tiny_config(corpus, tmp_path / "bf16", amp="bf16", epochs=1))
    assert summary["iterations"] == 4 and summary["skipped_steps"] == 0
    lines = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in lines)
    weights = torch.load(tmp_path / "bf16" / "checkpoint_final.pth", weights_only=True)["model"]
    assert {value.dtype for value in weights.values() if value.is_floating_point()} == {torch.float32}


@pytest.mark.slow
def test_a_run_folders_config_json_replays_the_run_with_the_same_metrics(corpus, tmp_path):
    from maskdla.train_cli import config_from_argv

    first = train(tiny_config(corpus, tmp_path / "first", epochs=1))
    saved = json.loads((tmp_path / "first" / "config.json").read_text())
    assert saved["train_size"] == 8 and saved["world_size"] == 1  # the run's facts are kept
    replay_config = config_from_argv(["--config", str(tmp_path / "first" / "config.json"),
                                      "--out", str(tmp_path / "replay")])
    # the settings as the run resolved them: its norm, its classes in its label order
    assert replay_config == tiny_config(corpus, tmp_path / "replay", epochs=1, norm="gn",
                                        classes=first_classes(tmp_path / "first"))
    replay = train(replay_config)
    assert replay["metrics"] == first["metrics"]
    assert replay["parameter_checksums"] == first["parameter_checksums"]


def first_classes(run):
    return json.loads((run / "config.json").read_text())["classes"]


def test_class_options_that_match_nothing_in_the_data_are_one_warning(corpus, tmp_path, capsys):
    """--class-map nosuch=x and --classes naming a class no page has were taken without a
    word: a misspelt class name trained a model that never saw the class."""
    import shutil

    from maskdla.data.coco import folder_to_coco
    from maskdla.data.sources import run_data

    options = dict(class_map={"nosuch": "x", "lyrics": "text", "drop-capital": None},
                   classes=["staff", "text", "neume"])
    data = run_data(tiny_config(corpus, tmp_path / "run", **options))
    assert data.train.classes == ["staff", "text", "neume"]  # a warning, not an error
    assert capsys.readouterr().err == (
        f"maskdla: warning: {corpus / 'train'}: --class-map nosuch: no class of the data has "
        "this name (its classes: drop-capital, lyrics, staff); --classes neume: no page has "
        "this class\n")
    # the same from COCO files, whose classes the Dataset maps
    images = tmp_path / "images"
    shutil.copytree(corpus / "train", images, ignore=shutil.ignore_patterns("page"))
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps(folder_to_coco(corpus / "train")[0]))
    coco = dict(data=None, train_ann=str(train_json), test_ann=str(train_json),
                train_images=str(images), test_images=str(images))
    run_data(tiny_config(corpus, tmp_path / "run", **options, **coco))
    assert capsys.readouterr().err == (
        f"maskdla: warning: {train_json}: --class-map nosuch: no class of the data has this "
        "name (its classes: drop-capital, lyrics, staff); --classes neume: no page has this "
        "class\n")
    for source in ({}, coco):  # options that each match something: not a word
        run_data(tiny_config(corpus, tmp_path / "run", class_map={"lyrics": "text"},
                             classes=["staff", "text", "drop-capital"], **source))
        assert capsys.readouterr().err == ""


def test_a_run_that_fails_before_its_first_step_leaves_nothing_behind(corpus, tmp_path, capsys):
    """A truncated ground-truth image used to leave config.json and an empty log.jsonl, a
    folder that looks like a run that started (and that reports list as unfinished)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    image = sorted((data / "train").glob("*.jpg"))[0]
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 3])
    flags = ["--backbone", "vovnet19slim", "--data", str(data), "--epochs", "0.25",
             "--batch-size", "8", "--min-size", "96", "--max-size", "160", "--workers", "0",
             "--device", "cpu", "--log-every", "1"]
    experiment = tmp_path / "experiment"  # a folder with files of its own (a launcher's)
    experiment.mkdir()
    (experiment / "train_config.json").write_text("{}")
    for out in (tmp_path / "runs" / "new", experiment):
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, flags + ["--out", str(out)])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"maskdla: error: {image}: cannot read the image (image file "
                                "is truncated")
    assert not (tmp_path / "runs").exists()
    assert sorted(path.name for path in experiment.iterdir()) == ["train_config.json"]
    # --resume auto (the launchers' flag) finds nothing to resume: the run starts afresh
    from maskdla.run_state import resume_path as _resume_path

    assert _resume_path(tiny_config(data, experiment, resume="auto"), experiment) is None
