"""PAGE-XML reading (versions, classes, repair, size, hardening) and writing (schema)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pytest
from PIL import Image
from shapely.geometry import Polygon

from maskdla.data.page import Page, Region, TextLine
from maskdla.data.pagexml import (RepairReport, parse_class_map, parse_custom, read_page,
                                  write_page)
from maskdla.errors import InputError

DATA = Path(__file__).parent / "data"
XSD = DATA / "pagecontent-2019-07-15.xsd"
NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"


def page_xml(regions: str, width: Optional[str] = "200", height: Optional[str] = "100",
             image: str = "img.png", doctype: str = "") -> str:
    size = "".join(f' {name}="{value}"' for name, value in
                   (("imageWidth", width), ("imageHeight", height)) if value is not None)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n{doctype}'
            f'<PcGts xmlns="{NAMESPACE}"><Metadata><Creator>t</Creator>'
            '<Created>2020-01-01T00:00:00</Created><LastChange>2020-01-01T00:00:00</LastChange>'
            f'</Metadata><Page imageFilename="{image}"{size}>{regions}</Page></PcGts>')


def region(points: str, region_id: str = "r1", label: str = "lyrics") -> str:
    return (f'<TextRegion id="{region_id}" custom="structure {{type:{label};}}">'
            f'<Coords points="{points}"/></TextRegion>')


def write(folder: Path, text: str, name: str = "page.xml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ versions, classes

@pytest.mark.parametrize("name, expected", [
    # file, [(id, kind, label)] in reading order
    ("transkribus_2013.xml", [("r_staff", "TextRegion", "staff"),
                              ("r_lyrics", "TextRegion", "lyrics"),
                              ("r_dc", "TextRegion", "drop capital")]),
    ("page_2010.xml", [("r2", "GraphicRegion", "GraphicRegion"),
                       ("r1", "TextRegion", "heading")]),
    ("page_2017.xml", [("t1", "TextRegion", "drop-capital"),
                       ("m1", "MusicRegion", "MusicRegion")]),
    ("page_2019.xml", [("tab", "TableRegion", "TableRegion"),
                       ("cell", "TextRegion", "table cell"),
                       ("m1", "MusicRegion", "staff")]),
])
def test_each_schema_version_reads_regions_and_classes(name, expected):
    page = read_page(DATA / name)
    assert (page.width, page.height) == (200, 300)
    assert [(r.id, r.kind, r.label) for r in page.regions] == expected


def test_transkribus_custom_type_wins_over_type_attribute_and_escapes_decode():
    page = read_page(DATA / "transkribus_2013.xml")
    labels = {r.id: r.label for r in page.regions}
    assert labels["r_staff"] == "staff"  # custom structure beats @type="paragraph"
    assert labels["r_dc"] == "drop capital"  # \u0020 decoded
    assert page.reading_order == ["r_staff", "r_lyrics", "r_dc"]


def test_parse_custom_blocks():
    assert parse_custom(r"readingOrder {index:3;} structure {type:a\u003bb\u0020c;}") == {
        "readingOrder": {"index": "3"}, "structure": {"type": "a;b c"}}
    assert parse_custom(None) == {}


def test_page_2010_point_children_and_reading_order():
    page = read_page(DATA / "page_2010.xml")
    heading = next(r for r in page.regions if r.id == "r1")
    assert heading.polygon == [(10, 10), (190, 10), (190, 40), (10, 40)]
    assert page.reading_order == ["r2", "r1"]
    assert page.lines[0].polygon[0] == (12, 12) and page.lines[0].region_id == "r1"


def test_text_lines_with_baseline_and_text():
    (line,) = read_page(DATA / "transkribus_2013.xml").lines
    assert line.region_id == "r_lyrics"
    assert line.baseline == [(22, 76), (178, 76)]
    assert line.text == "Kyrie eleison"


def test_nested_regions_and_element_selection():
    everything = read_page(DATA / "page_2019.xml")
    assert [r.id for r in everything.regions] == ["tab", "cell", "m1"]
    text_only = read_page(DATA / "page_2019.xml", elements=["TextRegion"])
    assert [r.id for r in text_only.regions] == ["cell"]  # found inside the TableRegion
    with pytest.raises(InputError, match="Paragraph"):
        read_page(DATA / "page_2019.xml", elements=["Paragraph"])


def test_score_is_read_from_custom():
    page = read_page(DATA / "page_2019.xml")
    assert {r.id: r.score for r in page.regions} == {"tab": None, "cell": None, "m1": 0.97}


def test_class_map_renames_merges_and_drops():
    class_map = parse_class_map(["lyrics=text", "drop capital=text", "staff="])
    assert class_map == {"lyrics": "text", "drop capital": "text", "staff": None}
    report = RepairReport()
    page = read_page(DATA / "transkribus_2013.xml", class_map=class_map, report=report)
    assert [(r.id, r.label) for r in page.regions] == [("r_lyrics", "text"), ("r_dc", "text")]
    assert page.reading_order == ["r_lyrics", "r_dc"]
    assert report.dropped == 1
    with pytest.raises(InputError, match="OLD=NEW"):
        parse_class_map(["lyrics"])


# ------------------------------------------------------------------- polygon repair

def test_degenerate_polygons_are_skipped_with_a_note(tmp_path, recwarn):
    regions = (region("10,10 50,10 50,10 10,10", "two_points")  # 2 distinct points
               + region("10,10 20,20 30,30", "collinear")  # no area
               + region("1,x 2,3 4,5", "unreadable")
               + region("nan,1 20,3 4,50", "not_finite")
               + region("10,10 50,10 50,50", "good"))
    report = RepairReport()
    path = write(tmp_path, page_xml(regions))
    page = read_page(path, report=report)
    assert [r.id for r in page.regions] == ["good"]
    assert report.skipped == 4
    assert not recwarn.list  # one note a region, no Python warning
    messages = report.notes
    assert len(messages) == 4 and all(m.startswith(f"{path}: region ") for m in messages)
    assert any("two_points skipped: fewer than 3 distinct points" in m for m in messages)
    assert any("collinear skipped: no area" in m for m in messages)
    assert any("unreadable skipped: unreadable" in m for m in messages)


def test_self_intersecting_polygon_is_repaired(tmp_path):
    # a bow-tie with one large and one small lobe: the larger lobe is kept
    report = RepairReport()
    page = read_page(write(tmp_path, page_xml(region("10,10 90,90 90,10 10,60"))),
                     report=report)
    assert report.notes == [f"{tmp_path / 'page.xml'}: region r1: self-intersection repaired"]
    (kept,) = page.regions
    shape = Polygon(kept.polygon)
    assert shape.is_valid and shape.area > 0
    assert report.repaired == 1 and report.skipped == 0


def test_out_of_page_polygon_is_clipped_and_outside_one_skipped(tmp_path):
    regions = region("-20,-5 250,-5 250,40 -20,40", "wide") + region("300,10 400,10 400,50", "away")
    report = RepairReport()
    page = read_page(write(tmp_path, page_xml(regions)), report=report)
    assert len(report.notes) == 2
    (wide,) = page.regions
    xs, ys = zip(*wide.polygon)
    assert min(xs) == 0 and max(xs) == 199 and min(ys) == 0 and max(ys) == 40
    assert report.clipped == 2 and report.skipped == 1


def test_an_outline_overflowing_shapelys_arithmetic_is_repaired_without_a_warning(tmp_path):
    """make_valid on 1e300 coordinates used to raise shapely's RuntimeWarning (overflow,
    invalid value) beside the reader's own note."""
    import warnings

    report = RepairReport()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        page = read_page(write(tmp_path, page_xml(region("0,0 1e300,1e300 1e300,0 0,1e300"))),
                         report=report)
    assert report.notes == [f"{tmp_path / 'page.xml'}: region r1: self-intersection repaired "
                            "and clipped to the page"]
    (kept,) = page.regions
    assert Polygon(kept.polygon).is_valid


def test_duplicate_region_ids_are_counted_and_written_under_new_ids(tmp_path):
    """Two regions of a page sharing an id were read and renamed by the writers without a
    word in the summary."""
    regions = (region("10,10 50,10 50,40", "r1") + region("60,10 90,10 90,40", "r1")
               + region("10,50 50,50 50,90", "r2") + region("60,50 90,50 90,90", "r1"))
    report = RepairReport()
    path = write(tmp_path, page_xml(regions))
    page = read_page(path, report=report)
    assert [r.id for r in page.regions] == ["r1", "r1", "r2", "r1"]
    assert report.duplicate_ids == 2
    assert report.notes == [f"{path}: region r1: the id of an earlier region of the page "
                            "(written under a new id)"] * 2
    assert report.summary().endswith("size from image 0, duplicate region ids 2")
    write_page(page, tmp_path / "out.xml")
    again = RepairReport()
    assert [r.id for r in read_page(tmp_path / "out.xml", report=again).regions] == [
        "r1", "r1_1", "r2", "r1_2"]
    assert again.duplicate_ids == 0 and not again.notes


# ---------------------------------------------------------------------- page size

def make_image(path: Path, size=(200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path)
    return path


def test_missing_image_uses_attributes(tmp_path):
    page = read_page(write(tmp_path, page_xml(region("1,1 5,1 5,5"), image="absent.jpg")))
    assert (page.width, page.height) == (200, 100)


def test_garbage_width_falls_back_to_image_in_parent_folder(tmp_path):
    make_image(tmp_path / "img.png", (120, 80))  # Transkribus layout: XML in page/
    report = RepairReport()
    page = read_page(write(tmp_path / "page", page_xml("", width="wide", height=None)),
                     report=report)
    assert (page.width, page.height) == (120, 80)
    assert report.size_from_image == 1


def test_unknown_size_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path, page_xml("", width="abc"))
    with pytest.raises(InputError, match="imageWidth") as error:
        read_page(path)
    assert error.value.path == str(path)


def test_size_differing_from_image_is_an_error(tmp_path):
    make_image(tmp_path / "img.png", (300, 100))
    with pytest.raises(InputError, match="differs"):
        read_page(write(tmp_path, page_xml("")))


# ----------------------------------------------------------------- broken input, XXE

@pytest.mark.parametrize("text, message", [
    ("<PcGts><Page", "not well-formed"),
    ('<html xmlns="http://www.w3.org/1999/xhtml"/>', "not a PAGE-XML file"),
    (f'<PcGts xmlns="{NAMESPACE}"><Metadata/></PcGts>', "without a Page"),
])
def test_broken_or_foreign_xml_is_an_input_error(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message) as error:
        read_page(path)
    assert str(path) in str(error.value)
    with pytest.raises(InputError, match="cannot read"):
        read_page(tmp_path / "missing.xml")


def test_external_entity_is_never_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doctype = f'<!DOCTYPE PcGts [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>\n'
    path = write(tmp_path, page_xml(region("1,1 5,1 5,5"), image="&xxe;", doctype=doctype))
    with pytest.raises(InputError, match="DOCTYPE") as error:
        read_page(path)
    assert "TOP-SECRET" not in str(error.value)
    # a parameter entity pointing outside is refused the same way
    doctype = f'<!DOCTYPE PcGts [<!ENTITY % remote SYSTEM "{secret.as_uri()}"> %remote;]>\n'
    with pytest.raises(InputError, match="DOCTYPE"):
        read_page(write(tmp_path, page_xml("", doctype=doctype)))


def test_entity_bomb_is_refused_quickly(tmp_path):
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    doctype = f"<!DOCTYPE PcGts [{entities}]>\n"
    path = write(tmp_path, page_xml("", image="&lol9;", doctype=doctype))
    start = time.perf_counter()
    with pytest.raises(InputError, match="DOCTYPE"):
        read_page(path)
    assert time.perf_counter() - start < 1.0


def test_undeclared_entity_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not well-formed"):
        read_page(write(tmp_path, page_xml("", image="&undeclared;")))


# ------------------------------------------------------------------------- writing

def sample_page() -> Page:
    return Page(image_filename="scan 1.jpg", width=200, height=100, regions=[
        Region("s1", "MusicRegion", "staff", [(10, 10), (190, 10), (190, 40), (10, 40)]),
        Region("1 bad id", "TextRegion", "lyrics", [(10.4, 45), (190, 45), (190, 60), (-1, 60)],
               score=0.9731),
        Region("dc", "TextRegion", "drop-capital", [(0, 0), (9, 0), (9, 30)]),
        Region("dc", "TextRegion", "running title", [(50, 70), (90, 70), (90, 90)]),
        Region("s2", "TextRegion", "staff", [(10, 62), (190, 62), (190, 68)]),
        Region("x", "WeirdRegion", "other thing", [(100, 80), (120, 80), (120, 95)])],
        lines=[TextLine("l1", "1 bad id", [(12, 46), (188, 46), (188, 58)],
                        baseline=[(12, 56), (188, 56)], text="Kyrie <&>")],
        reading_order=["dc", "s1"])


def schema():
    from lxml import etree  # dev dependency
    return etree.XMLSchema(etree.parse(str(XSD)))


def test_written_page_is_valid_page_2019(tmp_path):
    from lxml import etree
    path = tmp_path / "out" / "page.xml"
    write_page(sample_page(), path)
    document = etree.parse(str(path))
    validator = schema()
    assert validator.validate(document), validator.error_log
    ns = {"pc": NAMESPACE}
    assert document.findtext("pc:Metadata/pc:Creator", namespaces=ns) == "maskdla"
    kinds = [element.tag.split("}")[1] for element in document.find("pc:Page", ns)][1:]
    assert kinds == ["MusicRegion", "TextRegion", "TextRegion", "TextRegion", "MusicRegion",
                     "TextRegion"]
    types = [element.get("type") for element in document.iterfind("pc:Page/pc:TextRegion", ns)]
    assert types == [None, "drop-capital", None, None]  # only the schema's enumeration
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.xml"]  # no temp file left


def test_created_time_stamps_the_metadata(tmp_path):
    from datetime import datetime, timedelta, timezone
    from maskdla.data.pagexml import page_to_xml

    local = datetime(2021, 9, 1, 2, 30, tzinfo=timezone(timedelta(hours=2)))
    write_page(sample_page(), tmp_path / "a.xml", created=local)
    text = (tmp_path / "a.xml").read_text()
    assert "<Created>2021-09-01T00:30:00Z</Created>" in text  # in UTC
    assert "<LastChange>2021-09-01T00:30:00Z</LastChange>" in text
    assert page_to_xml(sample_page(), created=local) == (tmp_path / "a.xml").read_bytes()
    default = page_to_xml(sample_page()).decode()
    year = datetime.now(timezone.utc).year
    assert f"<Created>{year}-" in default or f"<Created>{year + 1}-" in default


def test_written_page_reads_back(tmp_path):
    original = sample_page()
    write_page(original, tmp_path / "page.xml")
    page = read_page(tmp_path / "page.xml")
    assert [r.label for r in page.regions] == [
        "drop-capital", "staff", "lyrics", "running title", "staff", "other thing"]
    assert page.regions[0].id == "dc" and page.reading_order[:2] == ["dc", "s1"]
    assert {r.label: r.score for r in page.regions}["lyrics"] == pytest.approx(0.9731)
    assert page.regions[2].polygon == [(10, 45), (190, 45), (190, 60), (0, 60)]
    assert page.lines[0].text == "Kyrie <&>"
    assert page.lines[0].region_id == page.regions[2].id


@pytest.mark.parametrize("name", ["transkribus_2013.xml", "page_2010.xml", "page_2017.xml",
                                  "page_2019.xml"])
def test_every_fixture_rewrites_to_a_valid_page_2019(tmp_path, name):
    from lxml import etree
    original = read_page(DATA / name)
    write_page(original, tmp_path / name)
    validator = schema()
    assert validator.validate(etree.parse(str(tmp_path / name))), validator.error_log
    again = read_page(tmp_path / name)
    assert [(r.id, r.label, r.polygon) for r in again.regions] == [
        (r.id, r.label, r.polygon) for r in original.regions]
