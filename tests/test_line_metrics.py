"""Text-line metrics (maskdla.evaluation.lines): baseline P/R/F1 of the READ-BAD scheme and
line-polygon IoU F1 on hand-built pages whose figures are known by hand, the
``maskdla.eval --lines`` command line, real HTRomance pages, and agreement with kraken's
implementation where the two schemes coincide (run where kraken is importable)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

from maskdla.cli import run_main
from maskdla.data.alto import write_alto
from maskdla.data.layout import read_layout
from maskdla.data.page import Page, Region, TextLine
from maskdla.data.pagexml import write_page
from maskdla.eval import main as eval_main
from maskdla.evaluation.lines import (align_baselines, baseline_tolerances, coverage,
                                      interpolate_baseline, line_metrics, line_spacings,
                                      page_line_metrics, page_table)

REPO = Path(__file__).resolve().parents[1]
REAL = [REPO.parent / "shared" / "realdata" / "htromance",
        REPO.parents[1] / "shared" / "realdata" / "htromance"]

# The hand-built page: four horizontal lines 400 px long (x 100..500) at y 100, 150, 200,
# 250. Every line's spacing is 50 px, so every tolerance is t = 0.25 x 50 = 12.5 px and
# coverage falls to 0 at 3 t = 37.5 px. Line polygons are 35 px high boxes on the baseline.
LINE_YS = (100, 150, 200, 250)
TOLERANCE = 12.5


def _line(number: int, y: float, x0: float = 100, x1: float = 500) -> TextLine:
    return TextLine(id=f"l{number}", region_id="r1", baseline=[(x0, y), (x1, y)],
                    polygon=[(x0, y - 30), (x1, y - 30), (x1, y + 5), (x0, y + 5)])


def _page(lines: List[TextLine]) -> Page:
    return Page(image_filename="p.jpg", width=600, height=400, lines=lines,
                regions=[Region(id="r1", kind="TextRegion", label="text",
                                polygon=[(50, 50), (550, 50), (550, 300), (50, 300)])])


def _truth() -> Page:
    return _page([_line(k, y) for k, y in enumerate(LINE_YS)])


def _figures(truth: Page, predicted: Optional[Page], **options) -> dict:
    return page_line_metrics(truth, predicted, **options)


# ------------------------------------------------------------------ building blocks

def test_baselines_are_resampled_at_most_5_px_apart_with_their_ends():
    points = interpolate_baseline([(0, 0), (12, 0), (12, 12)])
    assert points[0].tolist() == [0, 0] and points[-1].tolist() == [12, 12]
    assert len(points) == 6  # 24 px of arc in 5 equal steps of 4.8 px, one across the corner
    assert np.allclose(points[:3, 0], [0, 4.8, 9.6]) and np.allclose(points[3:, 1], [2.4, 7.2, 12])
    straight = interpolate_baseline([(0, 0), (50, 0), (101, 0)])
    assert np.allclose(np.diff(straight[:, 0]), 101 / 21)  # 21 steps <= 5 px
    assert interpolate_baseline([(3, 4), (3, 4)]).tolist() == [[3, 4]]


def test_tolerance_is_a_quarter_of_the_line_spacing():
    baselines = [interpolate_baseline(line.baseline) for line in _truth().lines]
    assert np.allclose(line_spacings(baselines), 50)
    assert np.allclose(baseline_tolerances(baselines), TOLERANCE)
    # a line 20 px under the first: its spacing and the first's are 20, the second's 30,
    # the page mean (20 + 30 + 50 + 50 + 20) / 5 = 34 caps the others
    baselines.append(interpolate_baseline([(100, 120), (500, 120)]))
    assert np.allclose(line_spacings(baselines), [20, 30, 50, 50, 20])
    assert np.allclose(baseline_tolerances(baselines),
                       0.25 * np.minimum([20, 30, 50, 50, 20], 34))
    # a lone line has no spacing: it takes the 250 px cap
    assert np.allclose(baseline_tolerances(baselines[:1]), 62.5)
    # a line beside another (a second column) is no neighbour
    beside = [interpolate_baseline([(0, 100), (200, 100)]),
              interpolate_baseline([(300, 110), (500, 110)])]
    assert np.isnan(line_spacings(beside)).all()


def test_coverage_is_1_within_the_tolerance_and_falls_to_0_at_three_times_it():
    distances = np.array([0, 10, 12.5, 25, 37.5, 50])
    assert np.allclose(coverage(distances, 12.5), [1, 1, 1, 0.5, 0, 0])


def test_alignment_is_one_to_one_highest_first():
    scores = np.array([[0.9, 0.8], [0.95, 0.0], [0.0, 0.0]])
    assert align_baselines(scores) == [(1, 0), (0, 1)]


# ----------------------------------------------------------------- hand-built pages

def test_identical_pages_score_100():
    figures = _figures(_truth(), _truth())
    for key in ("baseline_precision", "baseline_recall", "baseline_f1", "line_precision",
                "line_recall", "line_f1"):
        assert figures[key] == pytest.approx(100), key
    assert figures["tolerance"] == pytest.approx(TOLERANCE)
    assert figures["line_matched"] == 4


def test_one_of_four_lines_missing():
    predicted = _page(_truth().lines[1:])
    figures = _figures(_truth(), predicted)
    assert figures["baseline_recall"] == pytest.approx(75)
    assert figures["baseline_precision"] == pytest.approx(100)
    assert figures["baseline_f1"] == pytest.approx(2 * 0.75 / 1.75 * 100)
    assert (figures["line_precision"], figures["line_recall"]) == (100, 75)
    assert figures["line_f1"] == pytest.approx(600 / 7)


def test_a_prediction_covering_half_a_baseline():
    lines = _truth().lines
    lines[0] = _line(0, 100, 100, 300)
    figures = _figures(_truth(), _page(lines))
    # the first truth line has 81 points, x = 100, 105, .., 500: those up to x = 312.5 are
    # within the tolerance of the piece (x 100..300; 43 points), the next five (x 315..335,
    # 15..35 px from its end) are covered (37.5 - d) / 25 = 0.9, 0.7, 0.5, 0.3, 0.1
    first = (43 + 2.5) / 81
    assert figures["baseline_recall"] == pytest.approx((3 + first) / 4 * 100)
    assert figures["baseline_precision"] == pytest.approx(100)  # all of the piece is on it
    # its polygon has IoU 0.5 with the truth's: matched at >= 0.5
    assert figures["line_matched"] == 4


@pytest.mark.parametrize("shift, covered", [(10, 1.0), (25, 0.5), (40, 0.0)])
def test_a_line_shifted_vertically(shift, covered):
    """The first line moved up: within the tolerance still found, 25 px (2 t) half
    covered, 40 px (beyond 3 t) not matched at all; its polygon too far from 25 px on."""
    lines = _truth().lines
    lines[0] = _line(0, 100 - shift)
    figures = _figures(_truth(), _page(lines))
    assert figures["baseline_recall"] == pytest.approx((3 + covered) / 4 * 100)
    assert figures["baseline_precision"] == pytest.approx((3 + covered) / 4 * 100)
    # polygons 35 px high: shifted 10 px they overlap 25 of 45 px (IoU 0.56), 25 px: 10/60
    assert figures["line_matched"] == (4 if shift == 10 else 3)


def test_a_split_line_is_recalled_but_lowers_precision():
    lines = _truth().lines
    lines[0:1] = [_line(0, 100, 100, 290), _line(9, 100, 310, 500)]
    figures = _figures(_truth(), _page(lines))
    assert figures["baseline_recall"] == pytest.approx(100)  # every point within 10 px
    assert figures["baseline_precision"] == pytest.approx(80)  # one piece is not aligned
    assert figures["baseline_f1"] == pytest.approx(2 * 0.8 / 1.8 * 100)
    # each piece has IoU 190 / 400 with the truth polygon: neither matches
    assert (figures["line_matched"], figures["line_precision"]) == (3, 60)
    assert figures["line_f1"] == pytest.approx(2 * 3 / 9 * 100)


def test_an_empty_prediction_and_no_prediction_miss_every_line():
    for predicted in (_page([]), None):
        figures = _figures(_truth(), predicted)
        assert (figures["baseline_recall"], figures["baseline_precision"]) == (0, 100)
        assert figures["baseline_f1"] == 0
        assert figures["line_precision"] is None
        assert (figures["line_recall"], figures["line_f1"]) == (0, 0)
        assert figures["prediction"] is (predicted is not None)


def test_a_page_without_ground_truth_lines():
    figures = _figures(_page([]), _truth())
    assert (figures["baseline_recall"], figures["baseline_precision"]) == (100, 0)
    assert figures["baseline_f1"] == 0 and figures["tolerance"] is None
    assert figures["line_recall"] is None and figures["line_f1"] == 0
    nothing = _figures(_page([]), _page([]))
    assert nothing["baseline_f1"] == 100 and nothing["line_f1"] == 100


def test_a_fixed_tolerance_replaces_the_line_spacing():
    lines = _truth().lines
    lines[0] = _line(0, 90)
    assert _figures(_truth(), _page(lines))["baseline_recall"] == 100  # 10 px <= 12.5
    figures = _figures(_truth(), _page(lines), tolerance=4)  # 10 px: (12 - 10) / 8
    assert figures["baseline_recall"] == pytest.approx((3 + 0.25) / 4 * 100)
    with pytest.raises(ValueError, match="tolerance"):
        _figures(_truth(), _truth(), tolerance=0)


def test_lines_without_baseline_or_polygon_are_left_out_and_counted():
    lines = _truth().lines
    lines[0] = TextLine(id="l0", region_id="r1", polygon=lines[0].polygon)  # no baseline
    lines[1] = TextLine(id="l1", region_id="r1", polygon=[], baseline=lines[1].baseline)
    figures = _figures(_truth(), _page(lines))
    assert figures["predicted_without_baseline"] == 1
    assert figures["predicted_without_polygon"] == 1
    assert figures["baseline_recall"] == pytest.approx(75)
    assert figures["line_recall"] == pytest.approx(75)


def test_a_set_averages_pages_for_baselines_and_sums_lines_for_polygons():
    half = _page(_truth().lines[:2])
    block = line_metrics([("b", _truth(), half), ("a", _truth(), _truth()),
                          ("c", _truth(), None)])
    assert block["baseline_recall"] == pytest.approx((50 + 100 + 0) / 3)
    assert block["baseline_precision"] == pytest.approx(100)
    assert block["baseline_f1"] == pytest.approx(2 * 50 / 150 * 100)
    assert block["line_recall"] == pytest.approx(6 / 12 * 100)
    assert block["line_precision"] == pytest.approx(100)
    assert [page["name"] for page in block["pages"]] == ["c", "b", "a"]  # worst first
    assert block["missing_predictions"] == ["c"]
    assert (block["truth"], block["predicted"], block["page_count"]) == (12, 6, 3)
    csv_text = page_table(block, "csv")
    assert csv_text.splitlines()[0].startswith("name,truth,predicted,baseline_precision")
    assert "c (no prediction)" in page_table(block)


# --------------------------------------------------------------------- command line

def _write_pair(tmp_path: Path) -> Path:
    """DATA/test/page/p1.xml, p2.xml (PAGE ground truth) and PRED/p1.xml (ALTO, the first
    line missing); p2 has no prediction, x9 pairs with no page."""
    data = tmp_path / "data" / "test" / "page"
    data.mkdir(parents=True)
    write_page(_truth(), data / "p1.xml")
    write_page(_truth(), data / "p2.xml")
    predicted = tmp_path / "pred"
    predicted.mkdir()
    write_alto(_page(_truth().lines[1:]), predicted / "p1.xml")
    other = _truth()
    other.image_filename = "x9.jpg"
    write_alto(other, predicted / "x9.xml")
    return tmp_path


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(eval_main, [str(arg) for arg in argv])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_cli_scores_alto_predictions_against_page_ground_truth(tmp_path, capsys):
    root = _write_pair(tmp_path)
    code, out, err = _run(["--lines", "--predictions", root / "pred", "--data", root / "data",
                           "--out", root / "m.json", "--table", root / "pages.csv"], capsys)
    assert code == 0, err
    block = json.loads((root / "m.json").read_text())["lines"]
    assert block["baseline_recall"] == pytest.approx((75 + 0) / 2)
    assert block["baseline_precision"] == pytest.approx(100)
    assert block["line_recall"] == pytest.approx(3 / 8 * 100)
    assert block["missing_predictions"] == ["p2"]
    assert "1 of 2 pages have no prediction (all their lines count as missed): p2" in out
    assert "1 prediction files pair with no ground-truth page (left out): x9.xml" in out
    assert "| baselines | 8 | 3 |" in out
    rows = (root / "pages.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("p2,4,0,100.0,0.0,0.0")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    root = _write_pair(tmp_path)
    code, out, err = _run(["--lines", "--predictions", root / "missing", "--data",
                           root / "data"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no such file or folder" in err
    assert err.startswith(f"maskdla: error: {root / 'missing'}")
    code, _, err = _run(["--lines", "--predictions", root / "pred", "--data", root / "nodata"],
                        capsys)
    assert code == 2 and "no such dataset folder" in err and "Traceback" not in err
    (root / "pred" / "p1.xml").write_text("<alto><Layout>", encoding="utf-8")
    code, _, err = _run(["--lines", "--predictions", root / "pred", "--data", root / "data",
                         "--out", root / "m.json"], capsys)
    assert code == 2 and err.startswith(f"maskdla: error: {root / 'pred' / 'p1.xml'}: ")
    assert "not well-formed XML" in err and not (root / "m.json").exists()
    code, _, err = _run(["--lines", "--data", root / "data"], capsys)
    assert code == 2 and "--predictions" in err
    code, _, err = _run(["--predictions", root / "pred", "--data", root / "data",
                         "--tolerance", "3"], capsys)
    assert code == 2 and "--tolerance and --table go with --lines" in err


def test_cli_refuses_a_prediction_of_another_size(tmp_path, capsys):
    root = _write_pair(tmp_path)
    smaller = _truth()
    smaller.width = 300
    write_alto(smaller, root / "pred" / "p2.xml")
    code, _, err = _run(["--lines", "--predictions", root / "pred", "--data", root / "data"],
                        capsys)
    assert code == 2 and "page size 300x400 differs from the ground truth's 600x400" in err


# --------------------------------------------------------------------- real pages

def _real_pages(count: int = 3) -> List[Path]:
    folder = next((f for f in REAL if (f / "test").is_dir()), None)
    if folder is None:
        pytest.skip("../shared/realdata/htromance not found next to the repository")
    return sorted((folder / "test").glob("*.xml"))[:count]


def _perturbed(page: Page, seed: int = 0) -> Page:
    """Every line moved 2 px down (within any tolerance here), every fourth dropped,
    every fifth cut to its first half."""
    generator = random.Random(seed)
    lines = []
    for k, line in enumerate(page.lines):
        if k % 4 == 3:
            continue
        baseline = [(x, y + 2) for x, y in line.baseline]
        if k % 5 == 4:
            baseline = _first_half(baseline)
        lines.append(TextLine(id=line.id, region_id=line.region_id, baseline=baseline,
                              polygon=[(x, y + 2) for x, y in line.polygon]))
    generator.shuffle(lines)  # the order of predicted lines means nothing
    return Page(image_filename=page.image_filename, width=page.width, height=page.height,
                lines=lines)


def _first_half(baseline):
    points = interpolate_baseline(baseline, spacing=1.0)
    return [tuple(point) for point in points[: max(2, len(points) // 2)]]


def test_real_pages_against_themselves_and_a_perturbed_copy():
    pages = [(path.stem, read_layout(path)) for path in _real_pages()]
    assert all(len(page.lines) >= 10 for _, page in pages)
    same = line_metrics([(name, page, page) for name, page in pages])
    assert same["baseline_f1"] == pytest.approx(100) and same["line_f1"] == pytest.approx(100)
    assert all(page["tolerance"] > 2 for page in same["pages"])  # a few px at 1,200 px
    perturbed = line_metrics([(name, page, _perturbed(page)) for name, page in pages])
    assert perturbed["baseline_precision"] > 95  # the halves and the shifted lines are on it
    assert 60 < perturbed["baseline_recall"] < 75 + 1e-9  # a quarter dropped, halves cut
    # the polygons (moved 2 px, not cut) of the kept three quarters still match
    assert perturbed["line_matched"] == sum(len(p.lines) - len(p.lines) // 4 for _, p in pages)


# ------------------------------------------------------ agreement with kraken's metric

@pytest.mark.slow
def test_agrees_with_kraken_where_the_schemes_coincide():
    """kraken (7.1.1) scores a page with one tolerance, one-to-one (Hungarian) matching
    and the mean of both directed coverages per pair; with a fixed tolerance, shifts that
    stay nearer to their own line than to a neighbour and dropped lines, it must give our
    figures (run: the tests in a venv where kraken is importable)."""
    metrics = pytest.importorskip("kraken.lib.segmentation_metrics")
    torch = pytest.importorskip("torch")
    # kraken compares every pair of lines in Python: the two shortest of eight pages
    # keep this to a minute
    pages = sorted((read_layout(path) for path in _real_pages(8)), key=lambda p: len(p.lines))
    for truth in pages[:2]:
        for shift, drop in ((0, False), (6, False), (3, True)):
            lines = [TextLine(id=line.id, region_id=line.region_id,
                              baseline=[(x, y + shift) for x, y in line.baseline], polygon=[])
                     for k, line in enumerate(truth.lines) if not (drop and k % 3 == 1)]
            predicted = Page(image_filename="", width=truth.width, height=truth.height,
                             lines=lines)
            ours = page_line_metrics(truth, predicted, tolerance=4.0)
            theirs = metrics.compute_detection_metrics(
                [metrics.interpolate_polyline(torch.tensor(line.baseline, dtype=torch.float64))
                 for line in predicted.lines],
                [metrics.interpolate_polyline(torch.tensor(line.baseline, dtype=torch.float64))
                 for line in truth.lines], 4.0)
            for key in ("precision", "recall", "f1"):
                assert math.isclose(ours[f"baseline_{key}"] / 100, theirs[key], abs_tol=1e-6), (
                    truth.image_filename, shift, drop, key)
