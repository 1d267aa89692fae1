"""The benchmarks end to end on tiny CPU settings (training step, loader), and their flags."""
import argparse
import json
import math
import tempfile

import pytest
import torch

from maskdla.bench.__main__ import main
from maskdla.bench.train import parse_size


def test_parse_size_takes_either_order_and_rejects_nonsense():
    assert parse_size("800x1333") == (800, 1333)
    assert parse_size("1333X800") == (1333, 800)
    for bad in ("800", "800x", "axb", "0x100", "1x2x3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_size(bad)


@pytest.mark.slow  # 3-35 s on the shared 2-core CPU
def test_tiny_benchmark_reports_sane_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["train", "--size", "64x96", "--batch-size", "1", "--steps", "2", "--warmup", "1",
                 "--repeats", "1", "--workers", "0", "--rois-per-image", "16", "--device", "cpu",
                 "--json"]) == 0
    output = capsys.readouterr().out
    figures = json.loads(output.strip().splitlines()[-1])
    assert "overhead of ours over bare" in output and "instrumented step" in output
    for key in ("images_per_s", "bare_images_per_s"):
        assert figures[key] > 0
    for key in ("overhead_percent", "data_wait_percent", "bare_data_wait_percent"):
        assert math.isfinite(figures[key])
    assert 0 <= figures["data_wait_percent"] < 100
    assert figures["overhead_percent"] > -100
    assert set(figures["phases_s"]) == {"data wait", "host-to-device copy", "forward", "backward",
                                        "optimizer"}
    assert all(seconds >= 0 for seconds in figures["phases_s"].values())
    assert figures["phases_s"]["forward"] > 0 and figures["phases_s"]["backward"] > 0
    # same model, seed, batches, LR schedule and clipping: the bare loop trains as ours does,
    # step after step (a bare step without the warmup once collapsed the RPN and did less work)
    assert figures["same_first_step_losses"] is True
    assert figures["same_losses_every_step"] is True
    assert 0 <= figures["max_relative_loss_difference"] <= 1e-2
    assert figures["peak_rss_mib"] > 0
    assert figures["size"] == [64, 96] and figures["device"] == "cpu" and figures["machine"]
    assert list(tmp_path.iterdir()) == []  # the corpus and run folders are removed


@pytest.mark.slow  # 10-30 s each on the shared 2-core CPU
@pytest.mark.parametrize("variant", ["fused-sgd", "cudnn-benchmark"])
def test_variant_is_timed_against_bare_and_leaves_no_trace(tmp_path, monkeypatch, capsys,
                                                           variant):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cudnn_benchmark = torch.backends.cudnn.benchmark
    assert main(["train", "--size", "64x96", "--batch-size", "1", "--steps", "1", "--warmup", "1",
                 "--repeats", "1", "--workers", "0", "--rois-per-image", "16", "--device", "cpu",
                 "--variant", variant, "--json"]) == 0
    output = capsys.readouterr().out
    figures = json.loads(output.strip().splitlines()[-1])
    assert figures["variant"] == variant and math.isfinite(figures["variant_speedup_percent"])
    assert set(figures["seconds_per_step_per_repeat"]) == {"ours", "bare", variant}
    assert all(seconds[0] > 0 for seconds in figures["seconds_per_step_per_repeat"].values())
    assert torch.backends.cudnn.benchmark == cudnn_benchmark


def test_bad_flags_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--size", "big"])
    assert exit_info.value.code == 2
    assert "expected HxW" in capsys.readouterr().err


# pycocotools (the naive pipeline's rasteriser) warns about numpy 2's __array__ protocol
@pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
def test_tiny_loader_benchmark_reports_every_pipeline(tmp_path, monkeypatch, capsys):
    """The loader bench end to end on 2 small pages: every pipeline timed, simplejpeg
    switched back on after its PIL-decoding row."""
    from maskdla.data import dataset as dataset_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    simplejpeg = dataset_module.simplejpeg
    assert main(["loader", "--pages", "2", "--repeats", "1", "--width", "540", "--json"]) == 0
    output = capsys.readouterr().out
    figures = json.loads(output.strip().splitlines()[-1])
    assert "ours, PIL decoding" in output and "1 worker process" in output and "naive" in output
    for key in ("pages_per_s", "pages_per_cpu_s", "pil_decoding_pages_per_s",
                "worker_process_pages_per_s",
                "naive_pages_per_s", "cached_pages_per_s", "speedup"):
        assert figures[key] > 0, key
    assert figures["regions_per_page"] == 25 and figures["pages"] == 2
    assert dataset_module.simplejpeg is simplejpeg


@pytest.mark.slow  # 10-60 s on the shared 2-core CPU
def test_a_diverging_benchmark_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["train", "--size", "64x96", "--batch-size", "1", "--steps", "6", "--warmup", "1",
                 "--repeats", "1", "--workers", "0", "--rois-per-image", "16", "--device", "cpu",
                 "--lr", "1e12", "--json"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("maskdla: bench train stopped: the loss became NaN or infinite")
    assert not any("Traceback" in line for line in error)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 10-20 s on the shared 2-core CPU
def test_profile_attributes_every_part_forward_and_backward(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    trace = tmp_path / "trace.json"
    assert main(["profile", "--size", "64x96", "--batch-size", "1", "--steps", "2", "--warmup",
                 "1", "--workers", "0", "--rois-per-image", "16", "--device", "cpu",
                 "--trace", str(trace), "--json"]) == 0
    output = capsys.readouterr().out
    figures = json.loads(output.strip().splitlines()[-1])
    parts = figures["parts_ms"]
    # every convolutional part has both directions: its backward operators were matched to
    # it through their autograd sequence numbers
    for part in ("backbone body", "FPN", "RPN head (convs)", "box head (2 FC)",
                 "mask head (convs)", "mask predictor (deconv)"):
        assert parts[part]["forward"] > 0 and parts[part]["backward"] > 0, part
    # RoIAlign's backward scatters into the FPN maps: it belongs to the pools, not the losses
    assert parts["box RoIAlign"]["backward"] > parts["RoI sampling, box and mask losses"]["backward"]
    unowned = parts["no part (loss sum, gradient accumulation)"]
    total = sum(part["forward"] + part["backward"] for part in parts.values())
    assert math.isclose(total, figures["step_ms"], rel_tol=0.05)
    assert unowned["forward"] + unowned["backward"] < 0.2 * figures["step_ms"]
    assert 0 < figures["memory_operator_percent"] < 100
    assert figures["plain_seconds_per_step"] > 0 and figures["profiled_seconds_per_step"] > 0
    assert "aten::convolution_backward" in figures["top_operators_ms"]
    assert json.loads(trace.read_text())["traceEvents"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trace.json"]


@pytest.mark.slow  # 10-20 s on the shared 2-core CPU
def test_a_config_variant_builds_its_own_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    built = []
    import maskdla.bench.train as bench_train
    original = bench_train.build_model_from_config

    def spy(config, *args, **kwargs):
        built.append(config.fpn_channels)
        return original(config, *args, **kwargs)

    monkeypatch.setattr(bench_train, "build_model_from_config", spy)
    assert main(["train", "--size", "64x96", "--batch-size", "1", "--steps", "1", "--warmup", "1",
                 "--repeats", "1", "--workers", "0", "--rois-per-image", "16", "--device", "cpu",
                 "--variant", "fpn-64", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["variant"] == "fpn-64" and math.isfinite(figures["variant_speedup_percent"])
    assert 64 in built and None in built  # the variant's model, and bare's and the others'
