"""The synthetic corpus: determinism, PAGE-XML read-back, regions matching the drawing,
the cache and the CLI."""
from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from maskdla.cli import run_main
from maskdla.data.pagexml import read_page
from maskdla.data.synthetic import (CLASSES, default_corpus, generate_corpus, render_page)
from maskdla.errors import InputError
from maskdla.synth import main as synth_main

WIDTH = 200


def _files(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return generate_corpus(tmp_path_factory.mktemp("synthetic") / "data", pages=4, train=3,
                           seed=0, width=WIDTH)


def test_layout_and_splits(corpus):
    assert _files(corpus) == ["synthetic.json",
                              "test/page/synth-0004.xml", "test/synth-0004.jpg",
                              "train/page/synth-0001.xml", "train/page/synth-0002.xml",
                              "train/page/synth-0003.xml", "train/synth-0001.jpg",
                              "train/synth-0002.jpg", "train/synth-0003.jpg"]
    with Image.open(corpus / "train" / "synth-0001.jpg") as image:
        assert image.size == (WIDTH, round(WIDTH * 3900 / 2700))
        assert image.format == "JPEG"


def test_same_seed_gives_identical_files(corpus, tmp_path):
    again = generate_corpus(tmp_path / "again", pages=4, train=3, seed=0, width=WIDTH)
    names = _files(corpus)
    assert _files(again) == names
    match, mismatch, errors = filecmp.cmpfiles(corpus, again, names, shallow=False)
    assert mismatch == [] and errors == []


def test_other_seed_gives_other_pages(corpus, tmp_path):
    other = generate_corpus(tmp_path / "other", pages=4, train=3, seed=1, width=WIDTH)
    for name in ("train/synth-0001.jpg", "train/page/synth-0001.xml"):
        assert (other / name).read_bytes() != (corpus / name).read_bytes()


def test_pages_read_back_with_the_promised_classes(corpus):
    for xml in sorted(corpus.glob("*/page/*.xml")):
        page = read_page(xml)
        labels = [region.label for region in page.regions]
        assert set(labels) <= set(CLASSES)
        assert 14 <= len(labels) <= 28
        assert labels.count("staff") == labels.count("lyrics") >= 7
        assert labels.count("drop-capital") <= 2
        kinds = {region.label: region.kind for region in page.regions}
        assert kinds["staff"] == "MusicRegion" and kinds["lyrics"] == "TextRegion"
        text = xml.read_text()
        assert "structure {type:lyrics;}" in text
        assert text.count('type="drop-capital"') == labels.count("drop-capital")
        assert (page.width, page.height) == (WIDTH, round(WIDTH * 3900 / 2700))


def test_region_counts_follow_rows_and_capitals():
    for rows, capitals in ((7, 0), (12, 1), (13, 2)):
        _, page = render_page(5, width=300, rows=rows, capitals=capitals)
        labels = [region.label for region in page.regions]
        assert labels.count("staff") == labels.count("lyrics") == rows
        assert labels.count("drop-capital") == capitals


def test_polygons_cover_the_drawn_content():
    """Ink (staff lines, neumes, script, capitals: far from the parchment colour) lies inside
    the regions, and every region holds ink of its own kind."""
    seen = set()
    for seed in range(6):
        image, page = render_page(seed, width=600)
        pixels = np.asarray(image).astype(int)
        red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        dark = (red + green + blue) < 330
        reddish = (red - green > 70) & (red - blue > 70)
        ink = dark | reddish
        union = Image.new("L", image.size, 0)
        for region in page.regions:
            ImageDraw.Draw(union).polygon(region.polygon, fill=1)
            mask = Image.new("L", image.size, 0)
            ImageDraw.Draw(mask).polygon(region.polygon, fill=1)
            inside = np.asarray(mask).astype(bool)
            share = (reddish if region.label == "staff" else dark)[inside].mean()
            assert share > 0.02, (seed, region.id, region.label, share)
            seen.add(region.label)
        outside = ink & ~np.asarray(union).astype(bool)
        assert outside.sum() < 0.02 * ink.sum(), (seed, outside.sum(), ink.sum())
    assert seen == set(CLASSES)


def test_default_corpus_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKDLA_CACHE", str(tmp_path / "cache"))
    calls = []
    folder = default_corpus(pages=2, train=1, width=128,
                            progress=lambda done, total: calls.append(done))
    assert calls == [1, 2]
    assert folder.parent == tmp_path / "cache"
    assert (folder / "train" / "page" / "synth-0001.xml").is_file()
    assert (folder / "test" / "synth-0002.jpg").is_file()
    again = default_corpus(pages=2, train=1, width=128,
                           progress=lambda done, total: calls.append(done))
    assert again == folder and calls == [1, 2]  # reused, not regenerated
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no leftovers


def test_refuses_a_non_empty_folder_and_bad_parameters(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        generate_corpus(tmp_path / "full", pages=1, train=1, width=128)
    assert _files(tmp_path / "full") == ["keep.txt"]
    with pytest.raises(InputError, match="--train"):
        generate_corpus(tmp_path / "new", pages=2, train=3, width=128)
    assert not (tmp_path / "new").exists()


def test_interrupted_generation_leaves_nothing(tmp_path):
    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_corpus(tmp_path / "data", pages=3, train=2, width=128, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path, capsys):
    assert synth_main(["--out", str(tmp_path / "d"), "--pages", "2", "--train", "1",
                       "--width", "128", "--seed", "3", "--quiet"]) == 0
    assert "wrote 2 pages (1 train, 1 test)" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "train" / "page").glob("*.xml"))) == 1
    with pytest.raises(SystemExit) as exit_info:
        run_main(synth_main, ["--out", str(tmp_path / "e"), "--pages", "2", "--train", "5"])
    assert exit_info.value.code == 2
    assert "maskdla: error:" in capsys.readouterr().err
