"""COCO conversion (maskdla.data.coco) and the ``python -m maskdla.convert`` CLI."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from maskdla.cli import run_main
from maskdla.convert import main
from maskdla.data.coco import coco_to_pages, folder_to_coco, load_coco, pages_to_coco
from maskdla.data.page import Page, Region
from maskdla.data.pagexml import read_page, write_page
from maskdla.errors import InputError

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"


def dataset_folder(root: Path) -> Path:
    """DATA/train with two images and their Transkribus-style page/*.xml."""
    train = root / "train"
    (train / "page").mkdir(parents=True)
    for stem in ("vorau_0001", "vorau_0002"):
        Image.new("RGB", (200, 300), "white").save(train / f"{stem}.jpg")
        text = (DATA / "transkribus_2013.xml").read_text().replace("vorau_0001", stem)
        (train / "page" / f"{stem}.xml").write_text(text)
    return train


def test_pages_to_coco_geometry_and_category_order():
    page = Page("a.jpg", 100, 50, regions=[
        Region("r1", "TextRegion", "lyrics", [(10, 10), (30, 10), (30, 20), (10, 20)]),
        Region("r2", "MusicRegion", "staff", [(0, 0), (40, 0), (0, 30)], score=0.5)])
    coco = pages_to_coco([(page, "imgs/a.jpg")])
    assert coco["categories"] == [{"id": 1, "name": "lyrics"}, {"id": 2, "name": "staff"}]
    assert coco["images"] == [{"id": 1, "file_name": "imgs/a.jpg", "width": 100, "height": 50}]
    first, second = coco["annotations"]
    assert first["segmentation"] == [[10, 10, 30, 10, 30, 20, 10, 20]]
    assert first["area"] == 200 and first["bbox"] == [10, 10, 20, 10] and first["iscrowd"] == 0
    assert second["area"] == 600 and second["category_id"] == 2 and second["score"] == 0.5
    ordered = pages_to_coco([(page, "a.jpg")], classes=["staff", "drop-capital", "lyrics"])
    assert [c["name"] for c in ordered["categories"]] == ["staff", "drop-capital", "lyrics"]
    assert [a["category_id"] for a in ordered["annotations"]] == [3, 1]
    with pytest.raises(InputError, match="lyrics"):
        pages_to_coco([(page, "a.jpg")], classes=["staff"])
    with pytest.raises(InputError, match="twice"):
        pages_to_coco([(page, "a.jpg")], classes=["staff", "lyrics", "staff"])


def test_folder_to_coco_uses_file_names_relative_to_the_folder(tmp_path):
    train = dataset_folder(tmp_path)
    coco, report = folder_to_coco(train, class_map={"drop capital": "drop-capital"})
    assert [image["file_name"] for image in coco["images"]] == ["vorau_0001.jpg", "vorau_0002.jpg"]
    assert [c["name"] for c in coco["categories"]] == ["drop-capital", "lyrics", "staff"]
    assert len(coco["annotations"]) == 6 and report.pages == 2 and report.skipped == 0


def test_page_to_coco_to_page_round_trip(tmp_path):
    train = dataset_folder(tmp_path)
    coco, _ = folder_to_coco(train)
    pages = coco_to_pages(json.loads(json.dumps(coco)))
    originals = [read_page(path) for path in sorted((train / "page").glob("*.xml"))]
    assert len(pages) == 2
    for page, original in zip(pages, originals):
        assert (page.image_filename, page.width, page.height) == (
            original.image_filename, original.width, original.height)
        assert [(r.id, r.kind, r.label, r.polygon) for r in page.regions] == [
            (r.id, r.kind, r.label, r.polygon) for r in original.regions]
        write_page(page, tmp_path / "again.xml")
        again = read_page(tmp_path / "again.xml")
        assert [(r.label, r.polygon) for r in again.regions] == [
            (r.label, r.polygon) for r in original.regions]


def test_coco_without_polygons_falls_back_to_bbox():
    coco = {"images": [{"id": 7, "file_name": "x/p.png", "width": 10, "height": 10}],
            "categories": [{"id": 3, "name": "staff"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4],
                             "segmentation": {"counts": "abc", "size": [10, 10]}}]}
    (page,) = coco_to_pages(coco)
    assert page.image_filename == "p.png"
    assert page.regions[0].polygon == [(1, 2), (4, 2), (4, 6), (1, 6)]
    assert page.regions[0].label == "staff" and page.regions[0].kind == "TextRegion"


@pytest.mark.parametrize("text, message", [
    ("{broken", "not valid JSON"),
    ("[]", "top level"),
    ('{"images": [], "annotations": []}', "categories"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "lacks file_name"),
    ('{"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}], "categories": '
     '[{"id": 1, "name": "a"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 9, '
     '"bbox": [0, 0, 1, 1]}]}', "unknown category 9"),
    ('{"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}], "categories": '
     '[{"id": 1, "name": "a"}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}',
     "no usable polygon"),
])
def test_load_coco_rejects_broken_files(tmp_path, text, message):
    path = tmp_path / "ann.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as error:
        load_coco(path)
    assert error.value.path == str(path)


# ---------------------------------------------------------------------------- CLI

def convert(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m maskdla.convert ARGS`` in a subprocess (the real entry point)."""
    environment = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "maskdla.convert", *map(str, args)], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=300)


def convert_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same through :func:`run_main` in this process (no interpreter start-up)."""
    with pytest.raises(SystemExit) as exit_:
        run_main(main, [str(arg) for arg in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, exit_.value.code, captured.out, captured.err)


def test_cli_page2coco_then_coco2page(tmp_path):
    train = dataset_folder(tmp_path / "data")
    out = tmp_path / "data" / "ann.json"
    result = convert("page2coco", train, "--out", out, "--class-map", "drop capital=drop-capital",
                     "--classes", "staff", "lyrics", "drop-capital", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 pages, 6 regions (drop-capital 2, lyrics 2, staff 2)" in result.stdout
    assert "1=staff, 2=lyrics, 3=drop-capital" in result.stdout
    coco = load_coco(out)
    assert [image["file_name"] for image in coco["images"]] == [
        "train/vorau_0001.jpg", "train/vorau_0002.jpg"]  # relative to the JSON

    result = convert("coco2page", out, "--out", tmp_path / "back", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (tmp_path / "back" / "page").iterdir())
    assert written == ["vorau_0001.xml", "vorau_0002.xml"]
    page = read_page(tmp_path / "back" / "page" / "vorau_0001.xml")
    assert [r.label for r in page.regions] == ["staff", "lyrics", "drop-capital"]


def test_cli_prints_sorted_category_ids_and_repairs(tmp_path, capsys):
    folder = tmp_path / "pages"
    folder.mkdir()
    shutil.copy(DATA / "page_2019.xml", folder)
    text = (DATA / "page_2017.xml").read_text().replace('"10,10 40,10 40,40 10,40"',
                                                        '"10,10 40,40 40,10 10,40"')
    (folder / "bowtie.xml").write_text(text)
    result = convert_in_process(capsys, "page2coco", folder, "--out", tmp_path / "ann.json")
    assert result.returncode == 0, result.stderr
    assert "sorted names" in result.stdout
    assert "1=MusicRegion, 2=TableRegion, 3=drop-capital, 4=staff, 5=table cell" in result.stdout
    assert "repaired 1," in result.stdout
    (note,) = result.stderr.splitlines()  # one short line, no Python warning
    assert note.startswith("maskdla: ") and "bowtie.xml: region" in note
    assert note.endswith("self-intersection repaired")


@pytest.mark.parametrize("case", ["broken_xml", "xxe", "missing_input", "bad_class_map",
                                  "unknown_class"])
def test_cli_page2coco_bad_input_exits_2_without_output(tmp_path, capsys, case):
    good = tmp_path / "good.xml"
    shutil.copy(DATA / "page_2017.xml", good)
    bad = tmp_path / "bad.xml"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    extra = []
    if case == "broken_xml":
        bad.write_text("<PcGts><Page")
    elif case == "xxe":
        bad.write_text(f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "{secret.as_uri()}">]>'
                       f'<PcGts xmlns="{NAMESPACE}"><Page imageFilename="&e;"/></PcGts>')
    elif case == "missing_input":
        pass  # bad.xml does not exist
    elif case == "bad_class_map":
        shutil.copy(good, bad)
        extra = ["--class-map", "nonsense"]
    elif case == "unknown_class":
        shutil.copy(good, bad)
        extra = ["--classes", "staff"]
    out = tmp_path / "out" / "ann.json"
    arguments = ("page2coco", good, bad, "--out", out, *extra)
    if case == "xxe":  # through the real entry point once
        result = convert(*arguments, cwd=tmp_path)
    else:
        result = convert_in_process(capsys, *arguments)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "TOP-SECRET" not in result.stderr
    assert result.stderr.startswith("maskdla: error:") and len(result.stderr.splitlines()) == 1
    if case in ("broken_xml", "xxe", "missing_input"):
        assert "bad.xml" in result.stderr
    if case == "bad_class_map":
        assert "nonsense" in result.stderr
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_cli_coco2page_bad_json_exits_2_without_output(tmp_path):
    annotations = tmp_path / "broken.json"
    annotations.write_text('{"images": [')
    result = convert("coco2page", annotations, "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "broken.json" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_in_the_way_or_on_a_read_only_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """A file where --out's folder goes, or a disk that refuses even to unlink a missing
    temporary file (EROFS), used to end in a traceback from the cleanup."""
    import errno

    train = dataset_folder(tmp_path / "data")
    taken = tmp_path / "taken.txt"
    taken.write_text("a file")
    for argv, target in ((["to-page", str(train / "page"), "--out", str(taken)],
                          taken / "page" / "vorau_0001.xml"),
                         (["to-coco", str(train), "--out", str(taken / "train.json")],
                          taken / "train.json")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, argv)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == (
            f"maskdla: error: {target}: cannot create its folder: {taken} is a file, not a "
            "folder")
    assert taken.read_text() == "a file"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    import builtins

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *args, **kwargs: (
        read_only() if "x" in mode else real_open(file, mode, *args, **kwargs)))
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, ["to-coco", str(train), "--out", str(tmp_path / "train.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdla: error: {tmp_path / 'train.json'}: cannot write: {os.strerror(errno.EROFS)}")


def test_class_options_that_match_nothing_are_one_warning(tmp_path, capsys):
    train = dataset_folder(tmp_path / "data")
    result = convert_in_process(capsys, "to-coco", train, "--out", tmp_path / "train.json",
                                "--class-map", "nosuch=x", "Lyrics=text",
                                "--classes", "staff", "lyrics", "drop capital", "neume")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"maskdla: warning: {train}: --class-map nosuch, Lyrics: no class of the data has this "
        "name (its classes: drop capital, lyrics, staff); --classes neume: no page has this "
        "class\n")
    result = convert_in_process(capsys, "to-coco", train, "--out", tmp_path / "again.json",
                                "--class-map", "lyrics=text")
    assert result.returncode == 0 and result.stderr == ""
