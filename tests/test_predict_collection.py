"""Prediction over collections: recursive inputs, mirrored output, resuming, failures,
manifest and the writers table."""
from __future__ import annotations

import json

import pytest
import torch

from maskdla.data.formats import FORMATS, parse_formats
from maskdla.data.pagexml import read_page
from maskdla.errors import InputError
from maskdla.predict import main
from maskdla.prediction.collection import PageImages, collate_pages, find_images


@pytest.fixture(scope="module")
def checkpoint_path(tiny_checkpoint):
    return tiny_checkpoint(64, 128)


@pytest.fixture()
def tree(write_scans):
    """scans/a.png, scans/box1/b.jpg, scans/box1/folder/c.png, scans/box2/broken.jpg"""
    root = write_scans({"a.png": (96, 70), "box1/b.jpg": (80, 100),
                        "box1/folder/c.png": (120, 90)})
    (root / "box2").mkdir()
    (root / "box2" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "d.png").write_bytes((root / "a.png").read_bytes())
    return root


def test_find_images_recursive_mirrors_the_tree(tree, tmp_path):
    flat = find_images([tree])
    assert [image.relative.as_posix() for image in flat] == ["a.png"]
    deep = find_images([tree], recursive=True)
    assert [image.relative.as_posix() for image in deep] == [
        "a.png", "box1/b.jpg", "box1/folder/c.png", "box2/broken.jpg"]
    out = tmp_path / "out"
    assert deep[2].output(out, "page") == out / "box1" / "folder" / "page" / "c.xml"
    # an output folder inside the input tree is not searched
    (tree / "out" / "overlay").mkdir(parents=True)
    (tree / "out" / "overlay" / "a.jpg").write_bytes(b"x")
    assert len(find_images([tree], recursive=True, exclude=tree / "out")) == 4
    # the output folder may be the input folder: its output folders are left out alone
    (tree / "box1" / "overlay").mkdir()
    (tree / "box1" / "overlay" / "b.jpg").write_bytes(b"x")
    assert len(find_images([tree], recursive=True, exclude=tree)) == 4
    assert [image.relative.as_posix() for image in find_images([tree], exclude=tree)] == ["a.png"]
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.png").write_bytes((tree / "a.png").read_bytes())
    with pytest.raises(InputError, match="same output name"):
        find_images([tmp_path / "x", tmp_path / "y"])


def test_decoding_in_workers_reports_broken_images_as_records(tree):
    paths = [image.path for image in find_images([tree], recursive=True)]
    loader = torch.utils.data.DataLoader(PageImages(paths, 64, 128), batch_size=3,
                                         num_workers=2, collate_fn=collate_pages)
    pages = [page for batch in loader for page in batch]
    assert [page.index for page in pages] == [0, 1, 2, 3]
    assert pages[3].image is None and "broken.jpg" in pages[3].error
    assert [tuple(page.image.shape[1:]) for page in pages[:3]] == [(88, 64), (64, 80),
                                                                    (85, 64)]
    assert pages[1].original == (80, 100)


def test_formats_table():
    assert parse_formats("page") == ("page",)
    assert set(FORMATS) >= {"page", "alto"}
    with pytest.raises(InputError, match="unknown format"):
        parse_formats("page,hocr")


def test_collection_run_resume_failures_and_manifest(checkpoint_path, tree, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = [str(checkpoint_path), str(tree), "--out", str(out), "--recursive",
                 "--score-thresh", "0", "--max-detections", "5", "--workers", "2",
                 "--coco", str(tmp_path / "preds.json")]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.xml"))
    assert written == ["box1/folder/page/c.xml", "box1/page/b.xml", "page/a.xml"]
    assert not [path for path in out.rglob(".*")]  # no temporary files left
    failures = (out / "failures.txt").read_text().splitlines()
    assert len(failures) == 1 and "broken.jpg" in failures[0]
    lines = error.replace("\r", "\n").splitlines()
    assert len([line for line in lines if "broken.jpg" in line]) == 1
    assert "Traceback" not in error
    summary = error.strip().splitlines()[-1]
    assert "4 pages" in summary and "3 predicted" in summary and "1 failed" in summary
    assert "pages/s" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoint"] == str(checkpoint_path.resolve())
    assert manifest["settings"]["workers"] == 2 and manifest["formats"] == ["page"]
    statuses = {page["file"].rsplit("/", 1)[-1]: page for page in manifest["pages"]}
    assert statuses["broken.jpg"]["status"] == "failed"
    page_c = read_page(out / "box1" / "folder" / "page" / "c.xml")
    assert statuses["c.png"]["regions"] == len(page_c.regions)
    assert statuses["c.png"]["seconds"] > 0
    coco = json.loads((tmp_path / "preds.json").read_text())

    # resume: the finished pages are not predicted again, the broken one is retried
    stamp = (out / "page" / "a.xml").stat().st_mtime_ns
    (out / "box1" / "page" / "b.xml").unlink()  # as if interrupted before b was written
    assert main(arguments + ["--skip-existing"]) == 1
    assert (out / "page" / "a.xml").stat().st_mtime_ns == stamp
    assert (out / "box1" / "page" / "b.xml").is_file()
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 predicted" in summary and "2 skipped" in summary and "1 failed" in summary
    resumed = json.loads((out / "manifest.json").read_text())
    by_name = {page["file"].rsplit("/", 1)[-1]: page for page in resumed["pages"]}
    assert by_name["c.png"]["status"] == "skipped"
    assert by_name["c.png"]["regions"] == statuses["c.png"]["regions"]
    again = json.loads((tmp_path / "preds.json").read_text())
    for name in ("a.png", "c.png"):  # skipped pages' results are read back from their PAGE
        before = [result for result in coco if result["file_name"] == name]
        after = [result for result in again if result["file_name"] == name]
        assert before and [r["bbox"] for r in after] == [r["bbox"] for r in before]
        assert [r["segmentation"] for r in after] == [r["segmentation"] for r in before]

    # nothing left to fail: failures.txt of the earlier run goes
    (tree / "box2" / "broken.jpg").unlink()
    (tree / "box2").rmdir()
    assert main(arguments + ["--skip-existing"]) == 0
    assert not (out / "failures.txt").exists()


def test_alto_output_beside_page_and_resuming_from_alto_alone(checkpoint_path, tree, tmp_path):
    from maskdla.data.alto import read_alto

    out = tmp_path / "out"
    (tree / "box2" / "broken.jpg").unlink()
    arguments = [str(checkpoint_path), str(tree), "--out", str(out), "--recursive",
                 "--score-thresh", "0", "--max-detections", "5", "--workers", "0"]
    assert main(arguments + ["--format", "page,alto"]) == 0
    for relative in ("a", "box1/b", "box1/folder/c"):
        folder, stem = (out / relative).parent, (out / relative).name
        page = read_page(folder / "page" / f"{stem}.xml")
        alto = read_alto(folder / "alto" / f"{stem}.xml")
        assert (alto.width, alto.height) == (page.width, page.height)
        assert [region.label for region in alto.regions] == [r.label for r in page.regions]
        assert [region.polygon for region in alto.regions] == [r.polygon for r in page.regions]
    # ALTO alone: a resumed run reads the finished pages' COCO results back from ALTO
    alto_only = tmp_path / "alto_only"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    command = arguments[:2] + ["--out", str(alto_only)] + arguments[4:] + ["--format", "alto"]
    assert main(command + ["--coco", str(first)]) == 0
    assert not list(alto_only.rglob("page"))
    assert main(command + ["--coco", str(second), "--skip-existing"]) == 0
    before, after = json.loads(first.read_text()), json.loads(second.read_text())
    assert len(after) == len(before) > 0
    assert [r["category_id"] for r in after] == [r["category_id"] for r in before]


def test_predicting_into_the_input_folder_writes_page_beside_the_images(checkpoint_path,
                                                                         tree, capsys):
    """--out the input folder itself (the layout Transkribus imports): page/ beside the
    images, and a second run with --overlay finds the same images, not its own output."""
    (tree / "box2" / "broken.jpg").unlink()
    arguments = [str(checkpoint_path), str(tree), "--out", str(tree), "--recursive",
                 "--score-thresh", "0", "--max-detections", "5", "--workers", "0"]
    assert main(arguments + ["--overlay"]) == 0
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("page/*.xml")) == [
        "box1/folder/page/c.xml", "box1/page/b.xml", "page/a.xml"]
    assert read_page(tree / "box1" / "page" / "b.xml").image_filename == "b.jpg"
    assert (tree / "box1" / "overlay" / "b.jpg").is_file()
    capsys.readouterr()
    assert main(arguments + ["--overlay", "--skip-existing"]) == 0
    assert "3 pages" in capsys.readouterr().err


def test_a_second_resume_keeps_the_figures_and_stale_temporaries_go(checkpoint_path, tree,
                                                                    tmp_path, capsys):
    """The manifest of a second --skip-existing run kept null regions and seconds for the
    pages skipped twice; a kill -9 mid-write left .NAME.<hex>.tmp files no run removed."""
    import os
    import time

    out = tmp_path / "out"
    arguments = [str(checkpoint_path), str(tree / "a.png"), str(tree / "box1"), "--out",
                 str(out), "--score-thresh", "0", "--max-detections", "5", "--workers", "0"]
    assert main(arguments) == 0
    first = {page["file"]: page for page in json.loads((out / "manifest.json").read_text())["pages"]}
    for _ in range(2):
        assert main(arguments + ["--skip-existing"]) == 0
        pages = json.loads((out / "manifest.json").read_text())["pages"]
        assert {page["status"] for page in pages} == {"skipped"}
        for page in pages:
            assert page["regions"] == first[page["file"]]["regions"] is not None
            assert page["seconds"] == first[page["file"]]["seconds"] is not None

    stale = out / "page" / f".a.xml.{'0123456789abcdef' * 2}.tmp"
    fresh = out / "page" / f".b.xml.{'fedcba9876543210' * 2}.tmp"  # another run's, writing
    mine = out / "page" / ".notes.tmp"  # not maskdla's naming: never touched
    for path in (stale, fresh, mine):
        path.write_text("<?xml half a page")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(mine, (an_hour_ago, an_hour_ago))
    capsys.readouterr()
    assert main(arguments + ["--skip-existing"]) == 0
    assert not stale.exists() and fresh.exists() and mine.exists()
    assert f"maskdla: {out}: removed 1 temporary file an interrupted run left" in \
        capsys.readouterr().err
