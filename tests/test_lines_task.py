"""The line model's data and geometry (issue 28): text lines as training instances
(``--task lines``), baselines derived from line polygons, a tiny line training run."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from shapely.geometry import Polygon

from maskdla.config import TrainConfig
from maskdla.data.dataset import Dataset, View
from maskdla.data.lines import LINE_KIND, read_line_instances
from maskdla.data.reading import RepairReport
from maskdla.errors import InputError
from maskdla.prediction.baselines import (BASELINE_POSITION, lines_from_detections,
                                          polygon_baseline)

REPO = Path(__file__).resolve().parents[1]
REAL = [REPO.parent / "shared" / "realdata" / "htromance",
        REPO.parents[1] / "shared" / "realdata" / "htromance"]
NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"


def _points(polygon):
    return " ".join(f"{x},{y}" for x, y in polygon)


def write_line_page(folder: Path, stem: str, width: int = 160, height: int = 128,
                    rows: int = 4, heading: bool = True) -> Path:
    """A page image with ``rows`` dark text-like bands in one region, and its PAGE file:
    one TextRegion (class MainZone) holding one TextLine per band with Coords and
    Baseline; the first line is typed HeadingLine when ``heading``. Returns the XML path."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    lines = []
    spacing = (height - 16) // rows
    for row in range(rows):
        top = 8 + row * spacing
        bottom = top + spacing // 2
        draw.rectangle([12, top, width - 12, bottom], fill=(40, 30, 20))
        polygon = [(10, top - 2), (width - 10, top - 2), (width - 10, bottom + 2), (10, bottom + 2)]
        baseline_y = bottom - round(0.25 * (bottom - top))
        lines.append((polygon, [(10, baseline_y), (width - 10, baseline_y)]))
    image.save(folder / f"{stem}.png")
    line_xml = "".join(
        f'<TextLine id="{stem}_l{number}"'
        + (' custom="structure {type:HeadingLine;}"' if heading and number == 0 else "")
        + f'><Coords points="{_points(polygon)}"/><Baseline points="{_points(baseline)}"/>'
        "</TextLine>" for number, (polygon, baseline) in enumerate(lines))
    region = [(6, 4), (width - 6, 4), (width - 6, height - 4), (6, height - 4)]
    xml = (f'<?xml version="1.0" encoding="UTF-8"?><PcGts xmlns="{NS}"><Page imageFilename='
           f'"{stem}.png" imageWidth="{width}" imageHeight="{height}"><TextRegion id="{stem}_r"'
           f' custom="structure {{type:MainZone;}}"><Coords points="{_points(region)}"/>'
           f"{line_xml}</TextRegion></Page></PcGts>")
    path = folder / f"{stem}.xml"
    path.write_text(xml, encoding="utf-8")
    return path


@pytest.fixture()
def line_corpus(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        folder = tmp_path / "lines" / split
        folder.mkdir(parents=True)
        for number in range(count):
            write_line_page(folder, f"{split}{number}")
    return tmp_path / "lines"


def test_text_lines_become_instances_whatever_their_region_class(tmp_path):
    path = write_line_page(tmp_path, "p")
    report = RepairReport()
    page = read_line_instances(path, class_map={"HeadingLine": "HeadingLine", "*": "DefaultLine"},
                               report=report)
    assert [region.kind for region in page.regions] == [LINE_KIND] * 4
    assert [region.label for region in page.regions] == ["HeadingLine"] + ["DefaultLine"] * 3
    assert [region.id for region in page.regions] == [f"p_l{i}" for i in range(4)]
    assert page.lines[1].baseline and page.lines[1].label == "DefaultLine"
    assert report.pages == 1 and report.classes == {"HeadingLine": 1, "DefaultLine": 3}
    # the class map folds line types; one that drops a type drops its lines
    folded = read_line_instances(path, class_map={"*": "line"})
    assert {region.label for region in folded.regions} == {"line"}
    dropped = RepairReport()
    assert len(read_line_instances(path, class_map={"HeadingLine": ""},
                                   report=dropped).regions) == 3
    assert dropped.dropped == 1


def test_the_dataset_of_a_line_task_has_one_target_per_line(line_corpus):
    dataset = Dataset.from_folder(line_corpus, "train", instances="lines",
                                  view=View(min_size=96, max_size=160))
    assert dataset.classes == ["DefaultLine", "HeadingLine"]
    _, target = dataset[0]
    assert target["boxes"].shape == (4, 4) and target["masks"].shape[0] == 4
    regions = Dataset.from_folder(line_corpus, "train", view=View(min_size=96, max_size=160))
    assert regions.classes == ["MainZone"]
    with pytest.raises(ValueError, match="instances"):
        Dataset.from_folder(line_corpus, "train", instances="words")


def test_the_task_is_validated_and_travels_with_the_config():
    with pytest.raises(InputError, match="--task 'words'"):
        TrainConfig(task="words").validate()
    with pytest.raises(InputError, match="--detections-per-image"):
        TrainConfig(detections_per_image=0).validate()
    config = TrainConfig(task="lines", detections_per_image=300).validate()
    assert TrainConfig.from_dict(config.to_dict()).task == "lines"


def test_a_baseline_lies_at_the_measured_height_of_a_line_polygon():
    box = Polygon([(10, 20), (110, 20), (110, 40), (10, 40)])
    baseline = polygon_baseline(box)
    assert baseline[0][0] == pytest.approx(10) and baseline[-1][0] == pytest.approx(110)
    assert all(y == pytest.approx(40 - BASELINE_POSITION * 20) for _, y in baseline)
    assert len(baseline) == 2  # a straight line simplifies to its ends
    # a line sloping down by 10 px over its width: the baseline follows it
    sloped = Polygon([(0, 0), (200, 10), (200, 30), (0, 20)])
    points = np.array(polygon_baseline(sloped, position=0.5))
    assert np.interp(100, points[:, 0], points[:, 1]) == pytest.approx(15, abs=0.6)
    assert polygon_baseline(Polygon()) == []


def test_detections_become_lines_with_polygons_and_baselines():
    boxes = np.array([[10, 10, 110, 30], [10, 40, 110, 60], [0, 0, 5, 5]], dtype=np.float32)
    masks = np.zeros((3, 1, 28, 28), dtype=np.float32)
    masks[0, 0, 4:24, :] = 1.0  # the middle of the box: y 10 + 20 * 4/28 ... 10 + 20 * 24/28
    masks[1, 0, 4:24, 2:26] = 1.0
    lines, dropped = lines_from_detections(boxes, np.array([1, 2, 1]),
                                           np.array([0.9, 0.8, 0.7]), masks,
                                           ["DefaultLine", "HeadingLine"], (100, 120))
    assert [line.label for line in lines] == ["DefaultLine", "HeadingLine"]
    assert dropped == {"empty mask": 1}
    first = lines[0]
    assert first.id == "l1" and first.region_id == "" and first.score == pytest.approx(0.9)
    top, bottom = min(y for _, y in first.polygon), max(y for _, y in first.polygon)
    assert 12 <= top <= 14 and 26 <= bottom <= 28
    assert all(abs(y - (bottom - BASELINE_POSITION * (bottom - top))) <= 1
               for _, y in first.baseline)
    assert first.baseline[0][0] < 15 and first.baseline[-1][0] > 105


def test_a_tiny_line_model_trains_and_remembers_its_task(line_corpus, tmp_path):
    from maskdla.checkpoint import load_checkpoint
    from maskdla.train import fit

    config = TrainConfig(backbone="vovnet19slim", task="lines", data=str(line_corpus),
                         epochs=1, batch_size=2, min_size=[96], max_size=160, workers=0,
                         out=str(tmp_path / "run"), warmup_iters=0, device="cpu",
                         energy=False, lr=0.005, rois_per_image=32, detections_per_image=150,
                         anchor_ratios=[0.1, 0.25, 0.5], checkpoint_every=1, log_every=1)
    summary = fit(config)
    assert summary["iterations"] == 2
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoint_final.pth")
    assert checkpoint["classes"] == ["DefaultLine", "HeadingLine"]
    assert checkpoint["config"]["task"] == "lines"
    assert checkpoint["config"]["detections_per_image"] == 150


def _real_pages(count):
    root = next((path for path in REAL if path.is_dir()), None)
    if root is None:
        pytest.skip("../shared/realdata/htromance not found next to the repository")
    return sorted((root / "test").glob("*.xml"))[:count]


def test_real_pages_give_every_line_and_their_polygons_give_their_baselines():
    """On real eScriptorium pages: every TextLine is an instance, and the baseline derived
    from the ground-truth polygon lies within a few pixels of the ground-truth baseline."""
    errors = []
    for path in _real_pages(3):
        page = read_line_instances(path)
        assert len(page.regions) == path.read_text(encoding="utf-8").count("<TextLine ")
        for line, region in zip(page.lines, page.regions):
            if len(line.baseline) < 2:
                continue
            derived = np.array(polygon_baseline(Polygon(region.polygon)))
            truth = np.array(sorted(line.baseline))
            xs = np.linspace(max(derived[0, 0], truth[0, 0]), min(derived[-1, 0], truth[-1, 0]), 8)
            errors.append(np.median(np.abs(np.interp(xs, *derived.T) - np.interp(xs, *truth.T))))
    assert len(errors) > 50
    assert np.median(errors) < 2.5  # pixels, on pages 1,200 px high (lines ~23 px)
