"""Pages out with text lines (issue 28): a line model's detections -> lines with baselines
-> placed into regions (orphans get regions of their own) -> reading order by layout ->
PAGE and ALTO (schema-valid, read back the same), overlays, the pipeline and the CLI."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import pytest
import shapely
import torch
from PIL import Image

from maskdla.data.alto import alto_to_xml, read_alto, write_alto
from maskdla.data.layout import read_layout
from maskdla.data.page import Page, Region, TextLine
from maskdla.data.pagexml import page_to_xml, read_page, write_page
from maskdla.errors import InputError
from maskdla.predict import main
from maskdla.prediction import PagePipeline, PostProcess, Predictor
from maskdla.prediction.baselines import lines_from_detections
from maskdla.prediction.lines import (DEFAULT_ZONE_LABEL, drop_duplicates, orphan_zone_label,
                                      place_lines, transcribable)
from maskdla.prediction.order import layout_reading_order, line_order, region_role
from maskdla.prediction.overlay import class_colours, draw_overlay

REPO = Path(__file__).resolve().parents[1]
PAGE_XSD = Path(__file__).parent / "data" / "pagecontent-2019-07-15.xsd"
ALTO_XSD = [REPO.parent / "shared" / "schemas" / "alto-4-3.xsd",
            REPO.parents[1] / "shared" / "schemas" / "alto-4-3.xsd"]
REAL = [REPO.parent / "shared" / "realdata" / "htromance",
        REPO.parents[1] / "shared" / "realdata" / "htromance"]
#: a real test page with every line type: DefaultLine, HeadingLine, DropCapitalLine,
#: InterlinearLine, and margins, numbering and drop capitals
REAL_PAGE = "htrita__bnf-it-590__btv1b8433319z_f41.xml"
LINE_CLASSES = ["DefaultLine", "HeadingLine"]
HEIGHT, WIDTH = 1400, 1000


# ----------------------------------------------------------------------- helpers

def band_mask(resolution: int = 28) -> torch.Tensor:
    """A line's mask probabilities over its box: a band filling the middle 80 % of the
    height, with ends slightly in from the box's sides."""
    grid = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    y, x = torch.meshgrid(grid, grid, indexing="ij")
    distance = torch.minimum(0.4 - (y - 0.5).abs(), torch.minimum(x - 0.02, 0.98 - x))
    return torch.sigmoid(40 * distance)


def detections(boxes: Sequence[Tuple[float, float, float, float]], labels: Sequence[int],
               scores: Sequence[float], empty: Sequence[int] = ()):
    """Hand-built raw detections of a line model: boxes, 1-based labels, scores and 28 x 28
    masks (all zero for the indices in ``empty``)."""
    masks = band_mask()[None, None].repeat(len(boxes), 1, 1, 1)
    for i in empty:
        masks[i] = 0
    return (torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64),
            torch.tensor(scores, dtype=torch.float32), masks)


def region(region_id: str, label: str, box: Tuple[float, float, float, float],
           score: float = 0.9, kind: str = "TextRegion") -> Region:
    x0, y0, x1, y1 = box
    return Region(id=region_id, kind=kind, label=label,
                  polygon=[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], score=score)


def column_lines(left: float, right: float, count: int, top: float = 170.0
                 ) -> List[Tuple[float, float, float, float]]:
    return [(left, top + 60 * k, right, top + 60 * k + 40) for k in range(count)]


#: a two-column page: running title with a heading line, folio number, two main columns
#: of four lines each, a marginal note beside the second column with one line
TITLE_LINE = (200.0, 50.0, 800.0, 90.0)
LEFT = column_lines(110, 470, 4)
RIGHT = column_lines(530, 890, 4)
NOTE_LINE = (925.0, 320.0, 985.0, 345.0)


def two_column_regions() -> Page:
    page = Page("folio.jpg", WIDTH, HEIGHT)
    page.regions = [region("a", "MainZone", (520, 150, 900, 1200)),
                    region("b", "MarginTextZone", (915, 300, 995, 500)),
                    region("c", "MainZone", (100, 150, 480, 1200)),
                    region("d", "NumberingZone", (900, 30, 980, 90)),
                    region("e", "RunningTitleZone", (150, 40, 850, 100))]
    return page


def two_column_lines(extra: Sequence[Tuple[float, float, float, float]] = (),
                     empty: Sequence[int] = ()):
    """Line detections of the two-column page, shuffled as a model gives them (by score),
    plus ``extra`` DefaultLine boxes."""
    boxes = [RIGHT[2], LEFT[0], TITLE_LINE, RIGHT[0], LEFT[3], NOTE_LINE, LEFT[1], RIGHT[3],
             LEFT[2], RIGHT[1], *extra]
    labels = [2 if box == TITLE_LINE else 1 for box in boxes]
    scores = [0.99 - 0.01 * i for i in range(len(boxes))]
    return lines_from_detections(*detections(boxes, labels, scores, empty), LINE_CLASSES,
                                 (HEIGHT, WIDTH))


def box_of(points) -> Tuple[float, float, float, float]:
    return shapely.MultiPoint(points).bounds


def schemas():
    etree = pytest.importorskip("lxml.etree", reason="lxml (the dev extra) validates")
    alto = next((path for path in ALTO_XSD if path.is_file()), None)
    if alto is None or not PAGE_XSD.is_file():
        pytest.skip("the PAGE 2019 or ALTO 4.3 schema is not next to the repository")
    return (etree, etree.XMLSchema(etree.parse(str(PAGE_XSD))),
            etree.XMLSchema(etree.parse(str(alto))))


def same_lines(read: Sequence[TextLine], written: Sequence[TextLine]) -> None:
    assert [(l.id, l.region_id, l.label, l.text) for l in read] == [
        (l.id, l.region_id, l.label, l.text) for l in written]
    for back, line in zip(read, written):
        assert back.polygon == line.polygon and back.baseline == line.baseline
        assert (back.score is None) == (line.score is None)
        if line.score is not None:
            assert back.score == pytest.approx(line.score, abs=1e-3)


# ----------------------------------------------------------------------- lines -> page

def test_detected_lines_are_placed_into_their_regions_in_reading_order():
    lines, dropped = two_column_lines()
    assert len(lines) == 10 and dropped == {}
    placed = place_lines(two_column_regions(), lines)
    page = placed.page
    assert placed.generated == 0 and placed.dropped == {}
    # running title, folio number (above the text), left column, right column, the
    # marginal note after the column it stands beside
    assert [r.label for r in page.regions] == ["RunningTitleZone", "NumberingZone", "MainZone",
                                               "MainZone", "MarginTextZone"]
    assert [r.id for r in page.regions] == ["r1", "r2", "r3", "r4", "r5"] == page.reading_order
    assert box_of(page.regions[2].polygon)[0] == 100  # the left column first
    assert [line.id for line in page.lines] == [f"l{i}" for i in range(1, 11)]
    assert [line.region_id for line in page.lines] == ["r1"] + ["r3"] * 4 + ["r4"] * 4 + ["r5"]
    tops = [box_of(line.polygon)[1] for line in page.lines]
    assert tops[1:5] == sorted(tops[1:5]) and tops[5:9] == sorted(tops[5:9])
    assert page.lines[0].label == "HeadingLine"
    assert {line.label for line in page.lines[1:]} == {"DefaultLine"}
    for line in page.lines:
        assert len(line.baseline) >= 2 and len(set(line.polygon)) >= 3
        polygon = shapely.Polygon(line.polygon)
        assert polygon.is_valid
        # the baseline runs across the line, inside its polygon's height
        xs = [x for x, _ in line.baseline]
        x0, y0, x1, y1 = polygon.bounds
        assert xs == sorted(xs) and xs[0] == x0 and xs[-1] == x1
        assert all(y0 < y < y1 for _, y in line.baseline)
        assert 0.5 < line.score <= 1


def test_pages_with_lines_are_schema_valid_and_read_back_the_same(tmp_path):
    etree, page_schema, alto_schema = schemas()
    page = place_lines(two_column_regions(), two_column_lines()[0]).page
    write_page(page, tmp_path / "page.xml")
    write_alto(page, tmp_path / "alto.xml")
    for path, schema in ((tmp_path / "page.xml", page_schema),
                         (tmp_path / "alto.xml", alto_schema)):
        assert schema.validate(etree.parse(str(path))), schema.error_log
    for back in (read_page(tmp_path / "page.xml"), read_alto(tmp_path / "alto.xml")):
        assert [(r.id, r.label, r.polygon) for r in back.regions] == [
            (r.id, r.label, r.polygon) for r in page.regions]
        assert back.reading_order == page.reading_order
        same_lines(back.lines, page.lines)
    # the line type as PAGE (custom structure) and ALTO (TAGREFS -> OtherTag) carry it
    xml = page_to_xml(page).decode()
    assert 'custom="readingOrder {index:0;} structure {type:HeadingLine;} score {value:' in xml
    root = etree.fromstring(alto_to_xml(page))
    namespace = {"a": root.nsmap[None]}
    tags = {tag.get("ID"): tag for tag in root.findall(".//a:Tags/a:OtherTag", namespace)}
    first = root.find(".//a:TextLine", namespace)
    references = [tags[ref] for ref in first.get("TAGREFS").split()]
    assert references[0].get("LABEL") == "HeadingLine"
    assert references[0].get("DESCRIPTION") == "line type HeadingLine"
    assert references[1].get("TYPE") == "score"
    assert first.get("BASELINE") and first.find("a:Shape/a:Polygon", namespace) is not None


def test_lines_outside_every_region_get_regions_of_their_own():
    below_left = column_lines(110, 470, 2, top=1250)  # two lines stacking into one block
    lone = [(700.0, 1320.0, 880.0, 1350.0)]  # a line apart from everything
    lines, _ = two_column_lines(extra=[*below_left, *lone])
    placed = place_lines(two_column_regions(), lines)
    page = placed.page
    assert placed.generated == 2 and placed.dropped == {}
    assert len(page.lines) == 13
    made = [r for r in page.regions if r.score is None]
    assert [r.label for r in made] == [DEFAULT_ZONE_LABEL] * 2
    by_region = {r.id: [line for line in page.lines if line.region_id == r.id] for r in made}
    assert sorted(len(held) for held in by_region.values()) == [1, 2]
    for made_region in made:
        outline = shapely.Polygon(made_region.polygon)
        assert outline.is_valid
        for line in by_region[made_region.id]:
            assert outline.buffer(0.5).contains(shapely.Polygon(line.polygon))
    # the made regions are read in the column order too: each at the foot of its column
    # (the marginal note still after the right column's last region)
    assert [(r.label, r.score is None) for r in page.regions] == [
        ("RunningTitleZone", False), ("NumberingZone", False), ("MainZone", False),
        (DEFAULT_ZONE_LABEL, True), ("MainZone", False), (DEFAULT_ZONE_LABEL, True),
        ("MarginTextZone", False)]
    assert box_of(made[0].polygon)[0] < box_of(made[1].polygon)[0]


def test_a_line_model_alone_puts_every_line_into_a_made_region():
    lines, _ = two_column_lines()
    placed = place_lines(Page("p.jpg", WIDTH, HEIGHT), lines, orphan_label="text")
    page = placed.page
    assert len(page.lines) == 10 and placed.dropped == {}
    assert {r.label for r in page.regions} == {"text"} and placed.generated == len(page.regions)
    # heading, the two columns (one region each), the note
    assert len(page.regions) == 4
    assert [len([l for l in page.lines if l.region_id == r.id]) for r in page.regions] == [
        1, 4, 4, 1]


def test_what_is_dropped_is_counted_by_reason():
    # an empty mask and the first left line detected again as a heading (lower score)
    lines, dropped = two_column_lines(extra=[LEFT[0], (10.0, 10.0, 60.0, 30.0)], empty=[11])
    assert dropped == {"empty mask": 1}
    duplicate = lines[-1]
    assert duplicate.score < lines[1].score
    no_baseline = TextLine("x", "", [(10, 600), (60, 600), (60, 620)], baseline=[(10, 615)])
    flat = TextLine("y", "", [(10, 700), (60, 700)], baseline=[(10, 700), (60, 700)])
    placed = place_lines(two_column_regions(), [*lines, no_baseline, flat], dropped=dropped)
    assert placed.dropped == {"empty mask": 1, "duplicate line": 1, "no baseline": 1,
                              "polygon under 3 points": 1}
    assert len(placed.page.lines) == 10
    assert transcribable([flat], {}) == [] and len(drop_duplicates(lines[:2], {})) == 2


def test_lines_are_not_placed_into_regions_that_cannot_hold_them():
    staff = region("s", "staff", (100, 150, 480, 1200), kind="MusicRegion")
    page = Page("p.jpg", WIDTH, HEIGHT, regions=[staff])
    lines = lines_from_detections(*detections(LEFT, [1] * 4, [0.9] * 4), LINE_CLASSES,
                                  (HEIGHT, WIDTH))[0]
    placed = place_lines(page, lines)
    assert placed.generated == 1
    held = {line.region_id for line in placed.page.lines}
    assert held == {r.id for r in placed.page.regions if r.label == DEFAULT_ZONE_LABEL}


def test_orphan_label_follows_the_region_model():
    assert orphan_zone_label([]) == "MainZone"
    assert orphan_zone_label(["DropCapitalZone", "MainZone"]) == "MainZone"
    assert orphan_zone_label(["drop-capital", "text"]) == "text"
    assert orphan_zone_label(["drop-capital", "lyrics", "staff"]) == "MainZone"


# ----------------------------------------------------------------------- reading order

def test_reading_order_of_a_two_column_page_with_title_margins_and_numbering():
    regions = {
        "quire": ("QuireMarksZone", (600, 1250, 700, 1280)),
        "right": ("MainZone", (520, 150, 900, 1200)),
        "note right": ("MarginTextZone#1", (915, 300, 995, 500)),
        "capital": ("DropCapitalZone", (105, 160, 160, 230)),
        "left": ("MainZone", (100, 150, 480, 1200)),
        "folio": ("NumberingZone", (900, 30, 980, 90)),
        "title": ("RunningTitleZone", (150, 40, 850, 100)),
        "note left": ("MarginTextZone", (10, 700, 90, 800)),
        "note left above": ("MarginTextZone", (10, 200, 90, 300)),
    }
    names = list(regions)
    polygons = [shapely.box(*regions[name][1]) for name in names]
    order = layout_reading_order(polygons, [regions[name][0] for name in names])
    assert [names[i] for i in order] == [
        "title", "folio", "capital", "left", "note left above", "note left", "right",
        "note right", "quire"]
    assert region_role("MarginTextZone:gloss") == "margin" and region_role("staff") == "text"
    assert layout_reading_order([], []) == []


def test_reading_order_without_segmonto_classes_keeps_the_row_rule():
    # the study's music page: drop capital beside its staff, lyrics below, row by row
    boxes = {"staff": (300, 100, 2000, 300), "capital": (100, 90, 280, 500),
             "lyrics": (300, 320, 1900, 420), "staff 2": (300, 600, 2000, 800),
             "lyrics 2": (300, 820, 1900, 900)}
    labels = {"staff": "staff", "capital": "drop-capital", "lyrics": "lyrics",
              "staff 2": "staff", "lyrics 2": "lyrics"}
    names = ["lyrics 2", "lyrics", "staff 2", "capital", "staff"]
    order = layout_reading_order([shapely.box(*boxes[n]) for n in names],
                                 [labels[n] for n in names])
    assert [names[i] for i in order] == ["capital", "staff", "lyrics", "staff 2", "lyrics 2"]


def test_lines_of_a_region_holding_two_columns_are_read_column_by_column():
    heading = (100.0, 40.0, 900.0, 80.0)  # spans both columns
    boxes = [RIGHT[1], LEFT[2], heading, LEFT[0], RIGHT[0], LEFT[1], RIGHT[2], LEFT[3],
             RIGHT[3]]
    order = line_order(np.asarray(boxes))
    assert [boxes[i] for i in order] == [heading, *LEFT, *RIGHT]
    # a line split into two detections side by side: one row, left to right
    split = [(110.0, 100.0, 280.0, 140.0), (300.0, 102.0, 470.0, 141.0)]
    rows = [split[1], (110.0, 160.0, 470.0, 200.0), split[0]]
    assert [rows[i] for i in line_order(np.asarray(rows))] == [split[0], split[1], rows[1]]
    # a short heading beside a line that spans the column (a real HTRomance page's
    # lines): the two are one row, the short lines below it stay in place
    column = [(79, 93, 350, 131), (79, 134, 348, 155), (77, 150, 297, 179),
              (299, 148, 345, 178), (74, 169, 351, 201), (102, 199, 341, 227),
              (79, 230, 200, 255), (79, 260, 200, 285), (250, 300, 345, 330)]
    assert line_order(np.asarray(column, dtype=float)) == list(range(len(column)))
    # a skewed column: neighbours overlap in height, still top to bottom
    skewed = [(100.0, 100 + 30 * k, 500.0, 160 + 30 * k) for k in range(5)][::-1]
    assert line_order(np.asarray(skewed)) == [4, 3, 2, 1, 0]


# ----------------------------------------------------------------------- real pages

def real_page() -> Path:
    folder = next((f for f in REAL if (f / "test" / REAL_PAGE).is_file()), None)
    if folder is None:
        pytest.skip("../shared/realdata/htromance is not there")
    return folder / "test" / REAL_PAGE


def test_a_real_pages_ground_truth_lines_are_written_and_read_back_identical(tmp_path):
    etree, page_schema, alto_schema = schemas()
    truth = read_layout(real_page())
    assert {line.label for line in truth.lines} >= {"DefaultLine", "HeadingLine",
                                                    "DropCapitalLine", "InterlinearLine"}
    write_page(truth, tmp_path / "page.xml")
    write_alto(truth, tmp_path / "alto.xml")
    assert page_schema.validate(etree.parse(str(tmp_path / "page.xml"))), page_schema.error_log
    assert alto_schema.validate(etree.parse(str(tmp_path / "alto.xml"))), alto_schema.error_log
    for back in (read_page(tmp_path / "page.xml"), read_alto(tmp_path / "alto.xml")):
        assert [(r.id, r.label, r.polygon) for r in back.regions] == [
            (r.id, r.label, r.polygon) for r in truth.regions]
        assert back.lines == truth.lines
    # and through the placement: each line back in the region that holds it
    bare = Page(truth.image_filename, truth.width, truth.height, regions=list(truth.regions))
    loose = [TextLine(l.id, "", l.polygon, l.baseline, l.text, l.label) for l in truth.lines]
    placed = place_lines(bare, loose)
    assert placed.dropped == {} and len(placed.page.lines) == len(truth.lines)
    region_of = {l.text: l.region_id for l in truth.lines}
    by_outline = {tuple(r.polygon): r.id for r in truth.regions}  # renumbered: match outlines
    truth_id = {r.id: by_outline.get(tuple(r.polygon)) for r in placed.page.regions}
    same = sum(truth_id[l.region_id] == region_of[l.text] for l in placed.page.lines)
    assert same >= 0.97 * len(truth.lines)


# ----------------------------------------------------------------------- overlay

def test_overlays_draw_baselines_in_the_line_class_colour():
    page = place_lines(two_column_regions(), two_column_lines()[0]).page
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    drawn = np.asarray(draw_overlay(image, page, ["MainZone"], LINE_CLASSES))
    colours = class_colours(["MainZone", "MarginTextZone", "NumberingZone",
                             "RunningTitleZone", *LINE_CLASSES])
    line = page.lines[3]
    (x0, y0), (x1, y1) = line.baseline[0], line.baseline[-1]
    x = int((x0 + x1) / 2)
    y = int(round(y0 + (y1 - y0) * (x - x0) / (x1 - x0)))
    near = drawn[y - 1:y + 2, x].astype(int)
    assert (np.abs(near - colours["DefaultLine"]).sum(axis=1) < 60).any()


# ----------------------------------------------------------------------- pipeline, CLI

@pytest.fixture(scope="module")
def line_checkpoint(tmp_path_factory):
    """A seeded, untrained vovnet19slim line model (task "lines") at another test size
    than the region model's."""
    from maskdla.model import build_model

    torch.manual_seed(1)
    model = build_model("vovnet19slim", len(LINE_CLASSES) + 1, min_size=96, max_size=160)
    config = {"backbone": "vovnet19slim", "norm": None, "min_size": [96], "max_size": 160,
              "classes": LINE_CLASSES, "task": "lines"}
    path = tmp_path_factory.mktemp("lines") / "lines.pth"
    torch.save({"model": model.state_dict(), "optimizer": None, "scheduler": None,
                "scaler": None, "epoch": 0, "iteration": 0, "rng": None, "config": config,
                "classes": LINE_CLASSES}, path)
    return path


@pytest.fixture(scope="module")
def region_checkpoint(tiny_checkpoint):
    return tiny_checkpoint(64, 128)


@pytest.fixture()
def scans(write_scans):
    return write_scans({"a.png": (120, 90), "b.jpg": (100, 130)})


def check_written_lines(page: Page) -> None:
    held = {r.id for r in page.regions}
    for line in page.lines:
        assert line.region_id in held
        assert len(line.baseline) >= 2 and len(set(line.polygon)) >= 3


def test_the_pipeline_runs_both_models_at_their_own_sizes(region_checkpoint, line_checkpoint,
                                                          scans):
    regions = Predictor(region_checkpoint, device="cpu", postprocess=PostProcess(score_thresh=0),
                        max_detections=5)
    lines = Predictor(line_checkpoint, device="cpu",
                      postprocess=PostProcess(score_thresh=0, mask_thresh=0.3))
    pipeline = PagePipeline(regions, lines)
    assert pipeline.sizes == [(64, 128), (96, 160)]
    views, original, name = pipeline.load(scans / "a.png")
    assert [tuple(view.shape[1:]) for view in views] == [(85, 64), (128, 96)]
    assert original == (120, 90) and name == "a.png"
    page = pipeline.predict(scans / "a.png")
    assert page.lines, "the random line model finds something at these thresholds"
    check_written_lines(page)
    with pytest.raises(InputError, match="needs a line model"):
        PagePipeline(regions, regions)
    with pytest.raises(InputError, match="region model is wanted"):
        PagePipeline(lines, lines)


def test_cli_writes_pages_with_lines_and_counts_them(region_checkpoint, line_checkpoint,
                                                     scans, tmp_path, capsys):
    etree, page_schema, alto_schema = schemas()
    out = tmp_path / "out"
    arguments = [str(region_checkpoint), str(scans), "--out", str(out), "--lines",
                 str(line_checkpoint), "--score-thresh", "0", "--max-detections", "5",
                 "--line-score-thresh", "0", "--mask-thresh", "0.3", "--format", "page,alto",
                 "--overlay", "--workers", "0", "--baseline-position", "0.3"]
    assert main(arguments) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lines_checkpoint"] == str(line_checkpoint.resolve())
    assert manifest["line_classes"] == LINE_CLASSES
    assert manifest["settings"]["baseline_position"] == 0.3
    total = 0
    for entry in manifest["pages"]:
        stem = Path(entry["file"]).stem
        page = read_page(out / "page" / f"{stem}.xml")
        alto = read_alto(out / "alto" / f"{stem}.xml")
        assert page_schema.validate(etree.parse(str(out / "page" / f"{stem}.xml")))
        assert alto_schema.validate(etree.parse(str(out / "alto" / f"{stem}.xml")))
        assert entry["lines"] == len(page.lines) == len(alto.lines)
        assert entry["regions"] == len(page.regions)
        assert isinstance(entry["dropped"], dict) and entry["generated"] >= 0
        assert {line.label for line in page.lines} <= set(LINE_CLASSES)
        same_lines(alto.lines, page.lines)
        check_written_lines(page)
        assert (out / "overlay" / f"{stem}.jpg").is_file()
        total += entry["lines"]
    assert total > 0
    assert f"{total} lines (" in summary and "dropped (" in summary
    assert "regions made for lines outside every region" in summary
    # resumed: the finished pages keep the figures the first run recorded
    assert main(arguments + ["--skip-existing"]) == 0
    resumed = json.loads((out / "manifest.json").read_text())
    assert [entry["status"] for entry in resumed["pages"]] == ["skipped"] * 2
    assert [(e["lines"], e["dropped"], e["generated"]) for e in resumed["pages"]] == [
        (e["lines"], e["dropped"], e["generated"]) for e in manifest["pages"]]


def test_cli_with_a_line_model_alone_and_its_errors(region_checkpoint, line_checkpoint, scans,
                                                    tmp_path, capsys):
    out = tmp_path / "alone"
    assert main([str(line_checkpoint), str(scans), "--out", str(out), "--score-thresh", "0",
                 "--mask-thresh", "0.3", "--workers", "0"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == [] and manifest["orphan_label"] == "MainZone"
    for entry in manifest["pages"]:
        page = read_page(out / "page" / f"{Path(entry['file']).stem}.xml")
        check_written_lines(page)
        assert {r.label for r in page.regions} <= {"MainZone"}
        assert all(r.score is None for r in page.regions)
        assert entry["generated"] == len(page.regions)
    capsys.readouterr()
    for arguments, message in (
            ([str(region_checkpoint), "--lines", str(region_checkpoint)], "needs a line model"),
            ([str(line_checkpoint), "--lines", str(line_checkpoint)], "region model is wanted"),
            ([str(line_checkpoint), "--coco", str(tmp_path / "c.json")], "line model only")):
        with pytest.raises(InputError, match=message):
            main([*arguments[:1], str(scans), "--out", str(tmp_path / "bad"), *arguments[1:]])
    assert not (tmp_path / "bad").exists()


def test_the_shipped_line_model_finds_the_lines_of_a_real_page():
    """segmonto-lines, by name, on a real HTRomance test page (a page it never trained
    on): most ground-truth baselines are found, each inside a region, in a valid page."""
    from maskdla.data.alto import read_alto
    from maskdla.evaluation.lines import page_line_metrics

    root = next((path for path in REAL if path.is_dir()), None)
    if root is None:
        pytest.skip("../shared/realdata/htromance is not there")
    truth_path = sorted((root / "test").glob("*.xml"))[10]
    truth = read_alto(truth_path)
    page = PagePipeline(lines=Predictor("segmonto-lines", device="cpu")).predict(
        truth_path.with_suffix(".jpg"))
    assert len(page.lines) >= 0.8 * len(truth.lines)
    assert {line.region_id for line in page.lines} <= {region.id for region in page.regions}
    assert page_line_metrics(truth, page)["baseline_f1"] > 70
