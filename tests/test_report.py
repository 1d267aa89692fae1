"""maskdla.report: the study's tables and plots from hand-written run folders."""
from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import pytest

from maskdla.errors import InputError
from maskdla.report import build_report, load_run, main, run_labels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(box, segm):
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    return {"bbox": dict(zip(keys, box), AR=70.0, per_class={"staff": box[0]}),
            "segm": dict(zip(keys, segm), AR=69.0, per_class={"staff": segm[0]})}


def _summary(seconds, memory, kwh, cost, method="counter"):
    """summary.json as maskdla.train writes it, "energy" = EnergyMeter.summary()."""
    return {"training_time_s": seconds, "images_per_s": 12.5, "epochs": 450,
            "iterations": 28800, "world_size": max(1, len(memory)),
            "energy": {"duration_s": seconds + 30.0, "gpu_energy_kwh": kwh,
                       "gpus": [{"index": i, "name": "NVIDIA GeForce RTX 2080",
                                 "energy_kwh": kwh / len(memory), "mean_power_w": 180.0,
                                 "mean_memory_mib": mib - 100, "peak_memory_mib": mib,
                                 "mean_utilization": 90.0} for i, mib in enumerate(memory)],
                       "energy_kwh": kwh, "cpu_energy_kwh": None, "cost": cost,
                       "currency": "EUR", "method": method}}


def write_run(root: Path, name: str, backbone: str, epochs: float, lr_steps: str,
              metrics=None, summary=None, finished=True) -> Path:
    """A run folder shaped like maskdla.train's: config, log, history, energy, results."""
    run = root / name
    run.mkdir(parents=True)
    config = {"backbone": backbone, "epochs": epochs, "batch_size": 2, "lr": 0.02,
              "lr_steps": lr_steps, "out": str(run), "world_size": 2, "train_size": 128}
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "log.jsonl", "w") as log:
        for step in range(1, 21):
            epoch = epochs * step / 20
            log.write(json.dumps({"epoch": epoch, "iteration": step * 10, "lr": 0.02,
                                  "loss": 2.0 / step, "loss_classifier": 0.5 / step,
                                  "time": step * 3.0, "images_per_s": 10.0}) + "\n")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
        with open(run / "metrics_history.jsonl", "w") as history:
            for fraction in (0.5, 1.0):
                scaled = {task: {k: v * fraction for k, v in metrics[task].items()
                                 if k != "per_class"} for task in ("bbox", "segm")}
                history.write(json.dumps({"epoch": epochs * fraction, **scaled}) + "\n")
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
        with open(run / "energy.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["time_s", "gpu_index", "power_w", "energy_j", "memory_used_mib"])
            for second in range(0, 300, 10):
                for gpu, peak in enumerate(g["peak_memory_mib"]
                                           for g in summary["energy"]["gpus"]):
                    writer.writerow([second, gpu, 180.0, 180.0 * second,
                                     min(peak, 1000 + 20 * second)])
    if finished:
        (run / "checkpoint_final.pth").write_bytes(b"")
    return run


@pytest.fixture()
def study_runs(tmp_path: Path):
    """Three runs with the study's published figures (base case, resnet50 and vovnet39 at
    450 epochs, batch 2, two GPUs)."""
    base = write_run(tmp_path, "base_case", "resnet50", 2812.5, "default",
                     _metrics((68.66, 97.0, 81.0, -1, 40.0, 69.0),
                              (67.38, 96.0, 79.0, -1, 35.0, 68.0)),
                     _summary(38880, [4941, 4901], 3.823, 0.940458))
    resnet = write_run(tmp_path, "e450", "resnet50", 450, "default",
                       _metrics((69.56, 97.24, 81.89, -1, 40.97, 69.85),
                                (68.17, 96.25, 79.48, -1, 37.36, 68.43)),
                       _summary(6840, [3247, 3363], 0.684, 0.168264))
    vovnet = write_run(tmp_path, "vovnet39_e450", "vovnet39", 450, "late",
                       _metrics((70.23, 97.55, 82.08, -1, 42.0, 70.5),
                                (68.72, 96.5, 80.0, -1, 36.0, 69.0)),
                       _summary(7800, [4087, 4087], 0.808, 0.198768))
    return base, resnet, vovnet


EXPECTED_MARKDOWN = """\
# maskdla report

Runs: `{base}`, `{resnet}`, `{vovnet}`

## Quality (COCO AP, %)

| Run | Task | AP | AP50 | AP75 | APm | APl |
|---|---|---|---|---|---|---|
| base_case | Bounding Box | 68.66 | 97.00 | 81.00 | 40.00 | 69.00 |
| base_case | Segmentation | 67.38 | 96.00 | 79.00 | 35.00 | 68.00 |
| e450 | Bounding Box | 69.56 | 97.24 | 81.89 | 40.97 | 69.85 |
| e450 | Segmentation | 68.17 | 96.25 | 79.48 | 37.36 | 68.43 |
| vovnet39_e450 | Bounding Box | 70.23 | 97.55 | 82.08 | 42.00 | 70.50 |
| vovnet39_e450 | Segmentation | 68.72 | 96.50 | 80.00 | 36.00 | 69.00 |

## Efficiency

Mem: peak GPU memory used (as nvidia-smi shows it); kWh and Cost: energy of the run (GPUs, plus CPU packages where measured).

| Run | Training Time | Mem GPU1 | Mem GPU2 | kWh | Cost |
|---|---|---|---|---|---|
| base_case | 10 h 48 min | 4,941 MiB | 4,901 MiB | 3.823 | 0.940 EUR |
| e450 | 1 h 54 min | 3,247 MiB | 3,363 MiB | 0.684 | 0.168 EUR |
| vovnet39_e450 | 2 h 10 min | 4,087 MiB | 4,087 MiB | 0.808 | 0.199 EUR |

## Savings vs base_case

Baseline {base}: 3.823 kWh, 10 h 48 min.

| Run | kWh | Energy saved | Training Time | Time saved |
|---|---|---|---|---|
| e450 | 0.684 | 82.1 % | 1 h 54 min | 82.4 % |
| vovnet39_e450 | 0.808 | 78.9 % | 2 h 10 min | 79.9 % |
"""


def test_report_matches_expected_markdown(study_runs, tmp_path, capsys):
    base, resnet, vovnet = study_runs
    out = tmp_path / "report.md"
    assert main([str(base), str(resnet), str(vovnet), "--baseline", "base_case",
                 "--out", str(out)]) == 0
    assert out.read_text() == EXPECTED_MARKDOWN.format(base=base, resnet=resnet,
                                                       vovnet=vovnet)
    assert "report:" in capsys.readouterr().err


def test_folder_of_runs_and_baseline_by_path(study_runs, tmp_path, capsys):
    base, resnet, vovnet = study_runs
    # The parent folder stands for its runs; a baseline given by path that is among them
    # is not added twice.
    assert main([str(tmp_path), "--baseline", str(base)]) == 0
    markdown = capsys.readouterr().out
    assert markdown.count("| base_case | Bounding Box |") == 1
    assert markdown.index("| base_case | Bounding Box") < markdown.index("| e450 | Bounding Box")
    assert "| e450 | 0.684 | 82.1 % | 1 h 54 min | 82.4 % |" in markdown


def test_backbone_column_when_backbones_differ(study_runs):
    _, resnet, vovnet = study_runs
    report = build_report([resnet, vovnet])
    quality = report.tables[0].to_markdown()
    assert "| Backbone | Task | AP | AP50 | AP75 | APm | APl |" in quality
    assert "| resnet50 | Bounding Box | 69.56 | 97.24 | 81.89 | 40.97 | 69.85 |" in quality
    assert run_labels(report.runs) == ("Backbone", ["resnet50", "vovnet39"])


def test_missing_and_malformed_runs_are_named_and_the_rest_reported(study_runs, tmp_path,
                                                                     capsys):
    _, resnet, _ = study_runs
    broken = write_run(tmp_path / "bad", "broken", "resnet31", 450, "default",
                       _metrics((1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6)))
    (broken / "metrics.json").write_text('{"bbox": {"AP": 6')  # truncated
    unfinished = write_run(tmp_path / "bad", "unfinished", "resnet31", 450, "default",
                           finished=False)
    missing = tmp_path / "no_such_run"
    with open(resnet / "log.jsonl", "a") as log:
        log.write('{"epoch": 450.0, "lo')  # a run killed mid-write

    assert main([str(resnet), str(missing), str(broken), str(unfinished)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert f"maskdla: warning: skipped {missing}: no such run folder" in err
    assert f"skipped {broken / 'metrics.json'}: not valid JSON" in err
    assert f"skipped {unfinished}: nothing to report yet" in err
    assert f"{resnet / 'log.jsonl'}: skipped 1 malformed line(s): 21" in err
    assert "Traceback" not in err
    markdown = captured.out
    assert "| resnet50 | Bounding Box | 69.56 |" in markdown
    assert "## Skipped run folders" in markdown
    assert f"- {missing}: no such run folder" in markdown


def test_no_usable_run_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no usable run folder"):
        build_report([tmp_path / "missing", tmp_path / "empty"])
    with pytest.raises(SystemExit) as exit_info:
        from maskdla.cli import run_main
        run_main(main, [str(tmp_path / "missing")])
    assert exit_info.value.code == 2


def test_load_run_rejects_metrics_without_numbers(tmp_path):
    run = write_run(tmp_path, "r", "resnet50", 10, "default",
                    _metrics((1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6)))
    (run / "metrics.json").write_text(json.dumps({"bbox": {"AP": "high"}}))
    with pytest.raises(InputError, match=r"metrics.json: malformed: bbox.AP is not a number"):
        load_run(run)


def test_cpu_run_without_gpu_figures(tmp_path):
    run = write_run(tmp_path, "cpu", "resnet50", 2, "default",
                    _metrics((10, 20, 5, -1, -1, 10), (9, 19, 4, -1, -1, 9)),
                    _summary(95.0, [], None, None, method="unavailable"))
    tables = {t.title: t.to_markdown() for t in build_report([run]).tables}
    assert "| resnet50 | Bounding Box | 10.00 | 20.00 | 5.00 | n/a | 10.00 |" in tables["Quality (COCO AP, %)"]
    assert "| Backbone | Training Time | kWh | Cost |" in tables["Efficiency"]
    assert "| resnet50 | 2 min | n/a | n/a |" in tables["Efficiency"]


def test_an_estimated_cpu_run_is_marked_wherever_its_energy_shows(study_runs, tmp_path):
    """No GPU, no RAPL: kWh and cost are the CPU-seconds estimate (maskdla.energy), and the
    efficiency and savings tables say so, as does a saving computed from it."""
    base, _, _ = study_runs
    summary = _summary(3600.0, [], None, None, method="unavailable")
    summary["energy"].update(cpu_method="cpu-seconds-estimate", cpu_energy_kwh=0.5,
                             cpu_seconds=150_000.0, cpu_watts_per_core=12.0, energy_kwh=0.5,
                             cpu_energy_in_total=True, energy_estimate=True, cost=0.123)
    cpu = write_run(tmp_path, "cpu", "resnet50", 2, "default",
                    _metrics((10, 20, 5, -1, -1, 10), (9, 19, 4, -1, -1, 9)), summary)
    report = build_report([base, cpu], baseline="base_case")
    tables = {table.title: table.to_markdown() for table in report.tables}
    efficiency = tables["Efficiency"]
    assert "| cpu | 1 h 0 min | n/a | n/a | 0.500 (estimate) | 0.123 EUR (estimate) |" in efficiency
    assert "| base_case | 10 h 48 min | 4,941 MiB | 4,901 MiB | 3.823 | 0.940 EUR |" in efficiency
    assert "(estimate): no GPU and RAPL unreadable, so CPU-seconds x watts per core" in efficiency
    # 1 - 0.5 / 3.823 = 86.9 % saved, by an estimate
    assert ("| cpu | 0.500 (estimate) | 86.9 % (estimate) | 1 h 0 min | 90.7 % |"
            in tables["Savings vs base_case"])


def _assert_png(data: bytes):
    from PIL import Image
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 200


def test_plots_are_valid_pngs_and_html_is_self_contained(study_runs, tmp_path):
    pytest.importorskip("matplotlib")
    base, resnet, vovnet = study_runs
    plots, out, page = tmp_path / "plots", tmp_path / "report.md", tmp_path / "report.html"
    assert main([str(base), str(resnet), str(vovnet), "--baseline", "base_case",
                 "--out", str(out), "--plots", str(plots), "--html", str(page)]) == 0
    names = sorted(path.name for path in plots.iterdir())
    assert names == ["ap.png", "energy.png", "gpu_memory.png", "loss.png"]
    for path in plots.iterdir():
        _assert_png(path.read_bytes())
    markdown = out.read_text()
    assert "![Training loss (dashed: LR steps)](plots/loss.png)" in markdown
    text = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 4
    for data in images:
        _assert_png(base64.b64decode(data))
    # Offline: nothing is fetched from elsewhere.
    assert "http://" not in text and "https://" not in text
    assert "<td>82.1 %</td>" in text


def test_other_nodes_and_resumed_segments_energy_timelines_are_read(tmp_path):
    """energy-rankN.csv (another node's meter) and energy-from-iterationN.csv (a resumed
    segment) are part of the run: a segment's times continue the one before it."""
    run = write_run(tmp_path, "multi", "resnet50", 10, "default",
                    _metrics((1, 2, 3, 4, 5, 6), (1, 2, 3, 4, 5, 6)),
                    _summary(600, [3000], 0.1, 0.02))
    for name, gpu, times in (("energy-from-iteration40.csv", 0, (0, 10, 20)),
                             ("energy-rank4.csv", 0, (0, 10)),
                             ("energy-rank4-from-iteration40.csv", 1, (5,)),
                             ("energy-notes.csv", 0, (1,))):
        with open(run / name, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["time_s", "gpu_index", "power_w", "energy_j", "memory_used_mib"])
            for second in times:
                writer.writerow([second, gpu, 150.0, 150.0 * second, 2000])
    rows = load_run(run).energy
    first = [row for row in rows if row["node"] == 0]
    assert [row["time_s"] for row in first][-3:] == [290.0, 300.0, 310.0]  # 290 = energy.csv's end
    other = [(row["time_s"], row["gpu_index"]) for row in rows if row["node"] == 4]
    assert other == [(0.0, "0@rank4"), (10.0, "0@rank4"), (15.0, "1@rank4")]
    assert len(rows) == 30 + 3 + 3  # energy-notes.csv is not a timeline
