"""ALTO reading (versions, classes, outlines, units, size, hardening), writing (ALTO 4.3
schema), round trips with PAGE, one reader for both formats, and a few real pages."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pytest
from PIL import Image

from maskdla.cli import run_main
from maskdla.convert import main as convert_main
from maskdla.data.alto import alto_to_xml, read_alto, write_alto
from maskdla.data.coco import folder_to_coco
from maskdla.data.dataset import Dataset, View
from maskdla.data.layout import collect_layout_files, read_layout
from maskdla.data.page import Page, Region, TextLine
from maskdla.data.pagexml import read_page, write_page
from maskdla.data.reading import RepairReport
from maskdla.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PAGE_DATA = Path(__file__).parent / "data"
SCHEMAS = [REPO.parent / "shared" / "schemas", REPO.parents[1] / "shared" / "schemas"]
REAL = [REPO.parent / "shared" / "realdata" / "htromance",
        REPO.parents[1] / "shared" / "realdata" / "htromance"]
NAMESPACES = {"v2": "http://www.loc.gov/standards/alto/ns-v2#",
              "v3": "http://www.loc.gov/standards/alto/ns-v3#",
              "v4": "http://www.loc.gov/standards/alto/ns-v4#", "none": ""}
TAGS = ('<Tags><OtherTag ID="BT1" LABEL="MainZone"/><LayoutTag ID="LT1" LABEL="DropCapitalZone"/>'
        '<OtherTag ID="BT2" LABEL="MainZone#1"/><OtherTag ID="BT3" LABEL="MainZone:column"/>'
        '<StructureTag ID="ST1" LABEL="chapter"/></Tags>')


def alto_xml(blocks: str, version: str = "v4", unit: Optional[str] = "pixel",
             width: Optional[str] = "200", height: Optional[str] = "100",
             image: str = "img.png", doctype: str = "", tags: str = TAGS) -> str:
    namespace = NAMESPACES[version]
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    size = "".join(f' {name}="{value}"' for name, value in (("WIDTH", width), ("HEIGHT", height))
                   if value is not None)
    measurement = f"<MeasurementUnit>{unit}</MeasurementUnit>" if unit else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}<alto{xmlns}><Description>'
            f'{measurement}<sourceImageInformation><fileName>{image}</fileName>'
            f'</sourceImageInformation></Description>{tags}<Layout>'
            f'<Page ID="p1" PHYSICAL_IMG_NR="1"{size}><PrintSpace>{blocks}</PrintSpace></Page>'
            '</Layout></alto>')


def block(points: Optional[str] = "10 10 50 10 50 40 10 40", block_id: str = "b1",
          tagrefs: Optional[str] = "BT1", element: str = "TextBlock", box: str = "",
          inner: str = "") -> str:
    refs = f' TAGREFS="{tagrefs}"' if tagrefs else ""
    shape = f'<Shape><Polygon POINTS="{points}"/></Shape>' if points is not None else ""
    return f'<{element} ID="{block_id}"{refs}{box}>{shape}{inner}</{element}>'


def write(folder: Path, text: str, name: str = "page.xml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def make_image(path: Path, size=(200, 100), dpi=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path, **({"dpi": dpi} if dpi else {}))
    return path


def schema():
    etree = pytest.importorskip("lxml.etree", reason="lxml (the dev extra) validates ALTO")
    folder = next((f for f in SCHEMAS if (f / "alto-4-3.xsd").is_file()), None)
    if folder is None:
        pytest.skip("shared/schemas/alto-4-3.xsd not found next to the repository")
    return etree, etree.XMLSchema(etree.parse(str(folder / "alto-4-3.xsd")))


# ------------------------------------------------------------------ versions, classes

@pytest.mark.parametrize("version", ["v2", "v3", "v4", "none"])
def test_each_alto_version_reads_regions_classes_and_order(tmp_path, version):
    blocks = (block(block_id="b1", tagrefs="BT1")
              + block("60,10 90,10 90,40 60,40", block_id="b2", tagrefs="LT1")
              + block(block_id="b3", tagrefs=None, element="Illustration"))
    page = read_alto(write(tmp_path, alto_xml(blocks, version)))
    assert [(r.id, r.kind, r.label) for r in page.regions] == [
        ("b1", "TextBlock", "MainZone"), ("b2", "TextBlock", "DropCapitalZone"),
        ("b3", "Illustration", "Illustration")]
    assert page.reading_order == ["b1", "b2", "b3"]
    assert (page.width, page.height) == (200, 100)
    assert page.regions[1].polygon == [(60, 10), (90, 10), (90, 40), (60, 40)]


def test_tagrefs_take_the_first_other_or_layout_tag(tmp_path):
    blocks = (block(block_id="a", tagrefs="ST1 LT1 BT1")  # StructureTag is not a class
              + block(block_id="b", tagrefs="missing BT2")
              + block(block_id="c", tagrefs="ST1"))
    page = read_alto(write(tmp_path, alto_xml(blocks)))
    assert [r.label for r in page.regions] == ["DropCapitalZone", "MainZone#1", "TextBlock"]


def test_box_only_blocks_and_both_points_spellings(tmp_path):
    blocks = (block(None, "box", box=' HPOS="10" VPOS="20" WIDTH="30.5" HEIGHT="40"')
              + block("10,10 50,10 50,40", "commas") + block("10 10 50 10 50 40", "spaces")
              + block(None, "nothing"))
    report = RepairReport()
    page = read_alto(write(tmp_path, alto_xml(blocks)), report=report)
    box, commas, spaces = page.regions
    assert box.polygon == [(10, 20), (40.5, 20), (40.5, 60), (10, 60)]
    assert commas.polygon == spaces.polygon == [(10, 10), (50, 10), (50, 40)]
    assert report.skipped == 1 and report.notes == [
        f"{tmp_path / 'page.xml'}: region nothing skipped: unreadable or missing outline"]


def test_subtypes_are_kept_or_folded_and_the_class_map_applies_after(tmp_path):
    blocks = block(block_id="a", tagrefs="BT2") + block(block_id="b", tagrefs="BT3") \
        + block(block_id="c", tagrefs="BT1") + block(block_id="d", tagrefs="LT1")
    path = write(tmp_path, alto_xml(blocks))
    assert [r.label for r in read_alto(path).regions] == [
        "MainZone#1", "MainZone:column", "MainZone", "DropCapitalZone"]
    assert [r.label for r in read_alto(path, fold_subtypes=True).regions] == ["MainZone"] * 3 + [
        "DropCapitalZone"]
    report = RepairReport()
    kept = read_alto(path, fold_subtypes=True, class_map={"MainZone": "text", "*": None},
                     report=report)
    assert [r.label for r in kept.regions] == ["text"] * 3
    assert report.dropped == 1 and report.classes == {"text": 3}


def test_composed_blocks_are_looked_into_and_selectable(tmp_path):
    inner = block(block_id="inner") + block(block_id="graphic", element="GraphicalElement")
    composed = block("0 0 100 0 100 60 0 60", "group", tagrefs=None, element="ComposedBlock",
                     inner=inner)
    path = write(tmp_path, alto_xml(composed))
    assert [r.id for r in read_alto(path).regions] == ["inner", "graphic"]
    assert [r.id for r in read_alto(path, elements=["ComposedBlock", "TextBlock"]).regions] == [
        "group", "inner"]
    assert read_alto(path, elements=["TextRegion"]).regions == []  # a PAGE name keeps nothing
    with pytest.raises(InputError, match="unknown region element"):
        read_alto(path, elements=["Paragraph"])


def test_text_lines_with_baselines_polygons_and_text(tmp_path):
    lines = ('<TextLine ID="l1" BASELINE="12 30 48 31" HPOS="10" VPOS="12" WIDTH="40" HEIGHT="20">'
             '<Shape><Polygon POINTS="10 12 50 12 50 32 10 32"/></Shape>'
             '<String CONTENT="in principio"/><SP/><String CONTENT="erat"/></TextLine>'
             '<TextLine ID="l2" BASELINE="35" HPOS="10" VPOS="33" WIDTH="40" HEIGHT="5">'
             '<String CONTENT=""/></TextLine>'
             '<TextLine ID="l3" BASELINE="1 x"><String CONTENT="bad"/></TextLine>')
    report = RepairReport()
    page = read_alto(write(tmp_path, alto_xml(block(inner=lines))), report=report)
    first, second = page.lines
    assert (first.id, first.region_id, first.text) == ("l1", "b1", "in principio erat")
    assert first.baseline == [(12, 30), (48, 31)] and len(first.polygon) == 4
    # ALTO before 4.2: BASELINE is one y, taken across the line's box; no String text -> None
    assert second.baseline == [(10, 35), (50, 35)] and second.text is None
    assert second.polygon == [(10, 33), (50, 33), (50, 38), (10, 38)]
    assert report.notes == [f"{tmp_path / 'page.xml'}: text line l3 skipped: unreadable points"]


def test_reading_order_element_reorders_blocks(tmp_path):
    order = ('<ReadingOrder><OrderedGroup ID="g"><ElementRef ID="e1" REF="b2"/>'
             '<ElementRef ID="e2" REF="b1"/></OrderedGroup></ReadingOrder>')
    text = alto_xml(block(block_id="b1") + block(block_id="b2") + block(block_id="b3"))
    text = text.replace("<Layout>", order + "<Layout>")
    page = read_alto(write(tmp_path, text))
    assert page.reading_order == ["b2", "b1", "b3"] == [r.id for r in page.regions]


def test_repair_rules_are_those_of_page(tmp_path):
    blocks = (block("10 10 90 90 90 10 10 60", "bowtie") + block("-20 -5 250 -5 250 40", "wide")
              + block("10 10 20 20 30 30", "flat"))
    report = RepairReport()
    page = read_alto(write(tmp_path, alto_xml(blocks)), report=report)
    assert [r.id for r in page.regions] == ["bowtie", "wide"]
    assert (report.repaired, report.clipped, report.skipped) == (1, 1, 1)
    assert [note.split(": ", 1)[1] for note in report.notes] == [
        "region bowtie: self-intersection repaired", "region wide: clipped to the page",
        "region flat skipped: no area inside the page"]


# ---------------------------------------------------------------------- units, size

def flat(points):
    return [c for point in points for c in point]


def test_mm10_and_inch1200_are_converted_with_the_image_dpi(tmp_path):
    make_image(tmp_path / "img.jpg", (300, 150), dpi=(300, 300))  # JFIF keeps whole dpi
    # 300 px at 300 dpi = 1 inch = 254 mm10 = 1200 inch1200
    mm10 = alto_xml(block("0 0 127 0 127 100", tagrefs="BT1"), unit="mm10", width="254",
                    height="127", image="img.jpg")
    page = read_alto(write(tmp_path, mm10))
    assert (page.width, page.height) == (300, 150)
    assert flat(page.regions[0].polygon) == pytest.approx([0, 0, 150, 0, 150, 100 * 300 / 254])
    inch = alto_xml(block(None, box=' HPOS="600" VPOS="0" WIDTH="580" HEIGHT="480"'),
                    unit="inch1200", width="1200", height="600", image="img.jpg")
    page = read_alto(write(tmp_path, inch, "inch.xml"))
    assert flat(page.regions[0].polygon) == pytest.approx([150, 0, 295, 0, 295, 120, 150, 120])


def test_a_converted_size_rounded_by_its_writer_is_the_image_size(tmp_path):
    make_image(tmp_path / "scan.jpg", (2481, 100), dpi=(300, 300))
    # 2481 px at 300 dpi = 2100.46 mm10, written as 2100 (= 2480.3 px)
    text = alto_xml(block("0 0 2000 0 2000 80"), unit="mm10", width="2100", height="85",
                    image="scan.jpg")
    page = read_alto(write(tmp_path, text))
    assert (page.width, page.height) == (2481, 100)
    far = alto_xml(block(), unit="mm10", width="2090", height="85", image="scan.jpg")
    with pytest.raises(InputError, match="differs from the image"):
        read_alto(write(tmp_path, far, "far.xml"))


def test_units_without_dpi_bad_units_and_missing_images_are_one_line_errors(tmp_path):
    make_image(tmp_path / "img.png")  # no dpi in the file
    cases = [(alto_xml(block(), unit="mm10"), "mm10 needs the image's resolution"),
             (alto_xml(block(), unit="mm10", image="gone.png"), "image was not found"),
             (alto_xml(block(), unit="furlong"), "unknown MeasurementUnit 'furlong'"),
             (alto_xml(block(), width=None, image="gone.png"), "'gone.png' was not found"),
             (alto_xml(block(), width="201"), "differs from the image")]
    for number, (text, message) in enumerate(cases):
        path = write(tmp_path, text, f"case{number}.xml")
        with pytest.raises(InputError, match=message) as error:
            read_alto(path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_size_from_the_image_and_image_by_stem(tmp_path):
    make_image(tmp_path / "folio.jpg", (120, 80))
    report = RepairReport()
    page = read_alto(write(tmp_path, alto_xml(block(), width=None, height=None, image=""),
                           "folio.xml"), report=report)
    assert (page.width, page.height, page.image_filename) == (120, 80, "folio.jpg")
    assert report.size_from_image == 1
    # pixel units with WIDTH/HEIGHT need no image (as PAGE)
    assert read_alto(write(tmp_path, alto_xml(block(), image="gone.png"))).width == 200


# ------------------------------------------------------------------ broken, hostile

@pytest.mark.parametrize("text, message", [
    ("<alto><Layout", "not well-formed"),
    ('<alto xmlns="http://example.org/other"/>', "not an ALTO file"),
    (f'<alto xmlns="{NAMESPACES["v4"]}"><Layout/></alto>', "without a Layout/Page"),
    ("<mets/>", "neither PAGE-XML nor ALTO"),
])
def test_broken_or_foreign_xml_is_an_input_error(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message) as error:
        read_layout(path)
    assert str(path) in str(error.value)


def test_external_entity_in_alto_is_never_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doctype = f'<!DOCTYPE alto [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>\n'
    path = write(tmp_path, alto_xml(block(), image="&xxe;", doctype=doctype))
    for reader in (read_alto, read_layout):
        with pytest.raises(InputError, match="DOCTYPE") as error:
            reader(path)
        assert "TOP-SECRET" not in str(error.value)


def test_entity_bomb_in_alto_is_refused_quickly(tmp_path):
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    path = write(tmp_path, alto_xml(block(), image="&lol9;",
                                    doctype=f"<!DOCTYPE alto [{entities}]>\n"))
    start = time.perf_counter()
    for reader in (read_alto, read_layout):
        with pytest.raises(InputError, match="DOCTYPE"):
            reader(path)
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------- writing

def sample_page() -> Page:
    return Page(
        image_filename="folio 1.jpg", width=300, height=200,
        regions=[Region("r2", "TextBlock", "MainZone", [(10, 10), (150, 10), (150, 90), (10, 90)]),
                 Region("1bad id", "TextRegion", "DropCapitalZone#1",
                        [(160, 10), (200, 10), (200, 50)], score=0.875),
                 Region("img", "ImageRegion", "GraphicZone", [(10, 100), (90, 100), (90, 190)],
                        score=0.5)],
        lines=[TextLine("l1", "r2", [(12, 12), (148, 12), (148, 40), (12, 40)],
                        [(12, 38), (148, 38)], "incipit"),
               TextLine("l2", "r2", [(12, 42), (148, 42), (148, 70), (12, 70)], [], None)],
        reading_order=["1bad id", "r2", "img"])


def test_written_alto_is_valid_alto_4_3(tmp_path):
    etree, alto_schema = schema()
    path = tmp_path / "alto" / "folio.xml"
    write_alto(sample_page(), path, created=datetime(2024, 5, 1, tzinfo=timezone.utc))
    document = etree.parse(str(path))
    assert alto_schema.validate(document), alto_schema.error_log
    text = path.read_text(encoding="utf-8")
    assert "<processingDateTime>2024-05-01T00:00:00Z</processingDateTime>" in text
    assert 'TAGREFS="BT1 score1"' in text and 'LABEL="DropCapitalZone#1"' in text
    assert '<OtherTag ID="score1" TYPE="score" LABEL="0.875"' in text
    assert "<Illustration " in text and not list(tmp_path.glob("alto/.*.tmp"))
    # byte-identical with a fixed time
    again = alto_to_xml(sample_page(), created=datetime(2024, 5, 1, tzinfo=timezone.utc))
    assert again == path.read_bytes()


@pytest.mark.parametrize("name", sorted(p.name for p in PAGE_DATA.glob("*.xml")))
def test_every_page_fixture_and_an_empty_page_write_valid_alto(tmp_path, name):
    etree, alto_schema = schema()
    for page in (read_page(PAGE_DATA / name), Page("empty.png", 10, 10)):
        document = etree.fromstring(alto_to_xml(page))
        assert alto_schema.validate(document), (name, alto_schema.error_log)


def test_alto_to_page_to_alto_keeps_everything(tmp_path):
    original = sample_page()
    write_alto(original, tmp_path / "a.xml")
    first = read_alto(tmp_path / "a.xml")
    assert [r.label for r in first.regions] == ["DropCapitalZone#1", "MainZone", "GraphicZone"]
    assert [r.score for r in first.regions] == [0.875, None, 0.5]
    write_page(first, tmp_path / "p.xml")
    write_alto(read_page(tmp_path / "p.xml"), tmp_path / "b.xml")
    second = read_alto(tmp_path / "b.xml")
    assert [(r.label, r.polygon, r.score) for r in second.regions] == [
        (r.label, r.polygon, r.score) for r in first.regions]
    assert second.reading_order == first.reading_order
    assert [(l.polygon, l.baseline, l.text) for l in second.lines] == [
        (l.polygon, l.baseline, l.text) for l in first.lines]


def test_page_to_alto_to_page_keeps_everything(tmp_path):
    for name in ("transkribus_2013.xml", "page_2019.xml", "page_2017.xml"):
        original = read_page(PAGE_DATA / name)
        write_alto(original, tmp_path / "alto" / name)
        back_alto = read_alto(tmp_path / "alto" / name)
        write_page(back_alto, tmp_path / "page" / name)
        back = read_page(tmp_path / "page" / name)
        assert [(r.label, r.polygon) for r in back.regions] == [
            (r.label, [(float(round(x)), float(round(y))) for x, y in r.polygon])
            for r in original.regions], name
        assert [r.id for r in back.regions] == [r.id for r in original.regions]
        kept_lines = [line for line in original.lines
                      if line.region_id in {r.id for r in original.regions
                                            if r.kind == "TextRegion"}]
        assert [(l.region_id, l.baseline, l.text) for l in back.lines] == [
            (l.region_id, l.baseline, l.text) for l in kept_lines], name


# ------------------------------------------------------------ one reader, folders

def alto_folder(folder: Path, stems=("f1", "f2"), sub: str = "") -> Path:
    for stem in stems:
        make_image(folder / f"{stem}.png")
        blocks = block(block_id=f"{stem}_a") + block("60 10 90 10 90 40", f"{stem}_b", "LT1")
        write(folder / sub if sub else folder, alto_xml(blocks, image=f"{stem}.png"), f"{stem}.xml")
    return folder


def test_folders_next_to_images_page_and_alto_subfolders(tmp_path):
    escriptorium = alto_folder(tmp_path / "esc")
    (escriptorium / "METS.xml").write_text("<mets/>")
    assert [p.name for p in collect_layout_files([escriptorium])] == ["f1.xml", "f2.xml"]
    ours = alto_folder(tmp_path / "ours", sub="alto")
    assert [p.parent.name for p in collect_layout_files([ours])] == ["alto", "alto"]
    coco, report = folder_to_coco(ours)
    assert [image["file_name"] for image in coco["images"]] == ["f1.png", "f2.png"]
    assert report.classes == {"MainZone": 2, "DropCapitalZone": 2}
    (tmp_path / "empty" / "page").mkdir(parents=True)
    with pytest.raises(InputError, match=r"looked for page/\*\.xml, alto/\*\.xml, else \*\.xml"):
        collect_layout_files([tmp_path / "empty"])


def test_dataset_over_an_alto_folder(tmp_path, capsys):
    alto_folder(tmp_path / "data" / "train")
    dataset = Dataset.from_folder(tmp_path / "data", "train", view=View(min_size=64, max_size=128))
    assert dataset.classes == ["DropCapitalZone", "MainZone"] and len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (3, 64, 128) and target["labels"].tolist() == [2, 1]
    assert capsys.readouterr().err == ""  # nothing repaired: nothing said
    assert dataset.repair_report.summary().startswith("2 pages, 4 regions")
    bowtie = (tmp_path / "data" / "train" / "f2.xml").read_text().replace(
        "10 10 50 10 50 40 10 40", "10 10 50 40 50 10 10 40")
    (tmp_path / "data" / "train" / "f2.xml").write_text(bowtie)
    Dataset.from_folder(tmp_path / "data", "train", view=View(min_size=64))
    note, summary = capsys.readouterr().err.splitlines()
    assert note.endswith("f2.xml: region f2_a: self-intersection repaired")
    assert summary.startswith(f"maskdla: {tmp_path / 'data' / 'train'}: 2 pages, 4 regions")
    only_main = Dataset.from_folder(tmp_path / "data", "train", class_map={"MainZone": "text",
                                                                          "*": None},
                                    verbosity=0, view=View(min_size=64))
    assert only_main.classes == ["text"] and capsys.readouterr().err == ""


def test_convert_to_coco_over_mixed_page_and_alto_then_to_alto(tmp_path, capsys):
    mixed = alto_folder(tmp_path / "mixed", stems=("f1",))
    page = read_alto(mixed / "f1.xml")
    page.image_filename = "f2.png"
    make_image(mixed / "f2.png")
    write_page(page, mixed / "f2.xml")
    out = tmp_path / "ann.json"
    with pytest.raises(SystemExit) as exit_:
        run_main(convert_main, ["to-coco", str(mixed), "--out", str(out),
                                "--class-map", "DropCapitalZone="])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    assert "2 pages, 2 regions (MainZone 2)" in captured.out and "dropped by the class map 2" \
        in captured.out
    coco = json.loads(out.read_text())
    assert [image["file_name"] for image in coco["images"]] == ["mixed/f1.png", "mixed/f2.png"]
    with pytest.raises(SystemExit) as exit_:
        run_main(convert_main, ["to-alto", str(out), str(mixed / "f1.xml"), "--out",
                                str(tmp_path / "both"), "--quiet"])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and "share the image stem" in captured.err  # f1 twice
    with pytest.raises(SystemExit) as exit_:
        run_main(convert_main, ["to-alto", str(out), "--out", str(tmp_path / "back"), "-q"])
    assert exit_.value.code == 0 and capsys.readouterr().out == ""
    assert sorted(p.name for p in (tmp_path / "back" / "alto").iterdir()) == ["f1.xml", "f2.xml"]
    assert [r.label for r in read_layout(tmp_path / "back" / "alto" / "f2.xml").regions] == [
        "MainZone"]


# ----------------------------------------------------------------- real pages

def real_pages(count: int = 4):
    folder = next((f for f in REAL if (f / "train").is_dir()), None)
    if folder is None:
        pytest.skip("../shared/realdata/htromance not found next to the repository")
    return sorted((folder / "train").glob("*.xml"))[:count]


def test_real_escriptorium_pages_read_write_and_validate(tmp_path):
    etree, alto_schema = schema()
    for path in real_pages():
        report = RepairReport()
        page = read_layout(path, report=report)
        assert page.regions and page.lines and report.pages == 1
        assert set(report.classes) <= {"MainZone", "DropCapitalZone", "MarginTextZone",
                                       "NumberingZone", "RunningTitleZone", "TextBlock",
                                       "GraphicZone", "StampZone", "DecorationZone", "text"}
        image = Image.open(path.with_suffix(".jpg"))
        assert (page.width, page.height) == image.size
        target = tmp_path / path.name
        write_alto(page, target)
        assert alto_schema.validate(etree.parse(str(target))), alto_schema.error_log
        again = read_alto(target)
        assert again.regions == page.regions and again.lines == page.lines


def test_real_pages_as_a_dataset(tmp_path):
    pages = real_pages(3)
    split = tmp_path / "train"
    split.mkdir()
    for path in pages:  # links, not copies
        (split / path.name).symlink_to(path)
        (split / path.with_suffix(".jpg").name).symlink_to(path.with_suffix(".jpg"))
    dataset = Dataset.from_folder(tmp_path, "train", view=View(min_size=128, max_size=200),
                                  verbosity=0,
                                  class_map={name: name for name in ("MainZone", "DropCapitalZone")}
                                  | {"*": None})
    assert set(dataset.classes) <= {"MainZone", "DropCapitalZone"} and len(dataset) == 3
    image, target = dataset[0]
    assert image.shape[0] == 3 and len(target["labels"]) == len(target["masks"]) > 0


def test_coco_categories_fold_subtypes_too(tmp_path):
    coco = {"images": [{"id": 1, "file_name": "f1.png", "width": 200, "height": 100}],
            "categories": [{"id": 1, "name": "MainZone#1"}, {"id": 2, "name": "MainZone:column"},
                           {"id": 3, "name": "GraphicZone"}],
            "annotations": [{"id": i, "image_id": 1, "category_id": i,
                             "bbox": [10 * i, 10, 20, 20]} for i in (1, 2, 3)]}
    make_image(tmp_path / "f1.png")
    dataset = Dataset(coco, tmp_path, fold_subtypes=True, class_map={"*": None, "MainZone": "MainZone"},
                      view=View(min_size=64))
    assert dataset.classes == ["MainZone"] and dataset[0][1]["labels"].tolist() == [1, 1]


def test_public_names():
    import maskdla.data as data

    assert data.read_layout is read_layout and data.write_alto is write_alto
    assert data.read_alto is read_alto and data.RepairReport is RepairReport


def test_an_image_name_climbing_out_of_the_data_folder_is_refused(tmp_path):
    """``../../../../etc/passwd`` in fileName was looked up (and read) as written."""
    outside = make_image(tmp_path / "elsewhere" / "secret.png", (120, 80))
    data = tmp_path / "data" / "train"
    climbing = "../" * (len(data.parts) + 2) + "etc/passwd"
    for name in (climbing, f"../../../elsewhere/{outside.name}"):
        xml = write(data / "alto", alto_xml(block(), width=None, height=None, image=name))
        with pytest.raises(InputError, match=r"alto/page.xml: the image name .* points outside "
                                             r"the data folder"):
            read_alto(xml)
        with pytest.raises(InputError, match="points outside the data folder"):
            Dataset.from_folder(tmp_path / "data", "train", verbosity=0)
    # within the data folder ../ is fine, and an absolute path (an export's) goes by its
    # base name, looked up in the data folder only
    make_image(data / "folio.png", (120, 80))
    for name in ("../folio.png", str(outside.parent / "folio.png")):
        xml = write(data / "alto", alto_xml(block(), width=None, height=None, image=name))
        assert read_alto(xml).width == 120
    xml = write(data / "alto", alto_xml(block(), width=None, height=None, image=str(outside)))
    with pytest.raises(InputError, match="secret.png. was not found"):  # not read from elsewhere
        read_alto(xml)


def test_duplicate_block_ids_are_counted_and_written_under_new_ids(tmp_path):
    blocks = (block("10 10 50 10 50 40", "b1") + block("60 10 90 10 90 40", "b1")
              + block("10 50 50 50 50 90", "b2"))
    report = RepairReport()
    path = write(tmp_path, alto_xml(blocks))
    page = read_alto(path, report=report)
    assert [r.id for r in page.regions] == ["b1", "b1", "b2"]
    assert report.duplicate_ids == 1
    assert report.notes == [f"{path}: region b1: the id of an earlier region of the page "
                            "(written under a new id)"]
    assert "duplicate region ids 1" in report.summary()
    write_alto(page, tmp_path / "out.xml")
    again = RepairReport()
    assert sorted(r.id for r in read_alto(tmp_path / "out.xml", report=again).regions) == [
        "b1", "b1_1", "b2"]
    assert again.duplicate_ids == 0
