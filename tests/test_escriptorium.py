"""The eScriptorium bundle: ``predict --zip`` writes flat STEM.xml members for its import,
and an eScriptorium export ZIP is accepted as data (``--data``, ``convert``)."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
import zipfile

import pytest

from maskdla import read_layout
from maskdla.errors import InputError
from maskdla.predict import main as predict_main


@pytest.fixture(scope="module")
def checkpoint_path(tiny_checkpoint):
    return tiny_checkpoint(64, 128)


@pytest.fixture()
def scans(write_scans):
    return write_scans({"a.png": (96, 70), "box/b.jpg": (80, 100)})


def _predict(checkpoint, scans, out, *extra):
    return predict_main([str(checkpoint), str(scans), "--out", str(out), "--recursive",
                         "--score-thresh", "0", "--max-detections", "5", "--workers", "0",
                         *extra])


def _local(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def test_predict_zip_bundles_alto_for_escriptorium(checkpoint_path, scans, tmp_path, capsys):
    bundle = tmp_path / "escriptorium.zip"
    assert _predict(checkpoint_path, scans, tmp_path / "out", "--format", "alto",
                    "--zip", str(bundle)) == 0
    assert "wrote 2 ALTO files to" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp"))
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["a.xml", "b.xml"]
        archive.extractall(tmp_path / "members")
    for stem, image in (("a", "a.png"), ("b", "b.jpg")):
        member = tmp_path / "members" / f"{stem}.xml"
        root = ET.parse(member).getroot()
        names = [element.text for element in root.iter() if _local(element) == "fileName"]
        assert names == [image]
        tags = {element.get("ID"): element.get("LABEL") for element in root.iter()
                if _local(element) == "OtherTag"}
        blocks = [element for element in root.iter() if _local(element) == "TextBlock"
                  or _local(element) == "Illustration" or _local(element) == "GraphicalElement"]
        for block in blocks:  # each block's class is a tag it refers to
            assert any(tags.get(ref) for ref in block.get("TAGREFS", "").split())
        page = read_layout(member)
        assert page.image_filename == image
        assert {region.label for region in page.regions} <= set(tags.values())


def test_predict_zip_page_names_the_image(checkpoint_path, scans, tmp_path):
    bundle = tmp_path / "bundle" / "page.zip"
    assert _predict(checkpoint_path, scans, tmp_path / "out", "--zip", str(bundle)) == 0
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == ["a.xml", "b.xml"]
        (tmp_path / "b.xml").write_bytes(archive.read("b.xml"))
    assert read_layout(tmp_path / "b.xml").image_filename == "b.jpg"


def test_predict_zip_refuses_two_formats_and_one_stem_twice(checkpoint_path, scans,
                                                             tmp_path):
    bundle = tmp_path / "bundle.zip"
    with pytest.raises(InputError, match="--zip bundles one format"):
        _predict(checkpoint_path, scans, tmp_path / "out", "--format", "page,alto",
                 "--zip", str(bundle))
    (scans / "other").mkdir()
    (scans / "other" / "a.jpg").write_bytes((scans / "box" / "b.jpg").read_bytes())
    with pytest.raises(InputError, match="would both be the member a.xml") as refused:
        _predict(checkpoint_path, scans, tmp_path / "out", "--zip", str(bundle))
    assert str(scans / "a.png") in str(refused.value)
    assert str(scans / "other" / "a.jpg") in str(refused.value)
    assert not bundle.exists() and not (tmp_path / "out").exists()


def _zip_folder(folder, archive, prefix=""):
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_a_zip_is_data_for_convert_and_training(tmp_path, monkeypatch):
    from maskdla.convert import main as convert_main
    from maskdla.data.dataset import Dataset
    from maskdla.data.synthetic import generate_corpus

    monkeypatch.setenv("MASKDLA_CACHE", str(tmp_path / "cache"))
    corpus = generate_corpus(tmp_path / "corpus", pages=3, train=2, width=160)
    archive = _zip_folder(corpus, tmp_path / "corpus.zip", prefix="corpus/")
    folder_set = Dataset.from_folder(corpus, "train", verbosity=0)
    zipped_set = Dataset.from_folder(archive, "train", verbosity=0)
    assert len(zipped_set) == len(folder_set) == 2
    assert zipped_set.coco["annotations"] == folder_set.coco["annotations"]
    # a flat export (XML next to its images) converts directly
    flat = _zip_folder(corpus / "test", tmp_path / "export.zip")
    assert convert_main(["to-coco", str(flat), "--out", str(tmp_path / "test.json")]) == 0
    assert (tmp_path / "test.json").is_file()
    with pytest.raises(InputError, match="no train/ folder"):
        Dataset.from_folder(flat, "train")


def test_a_zip_that_leaves_its_folder_is_refused(tmp_path, monkeypatch):
    from maskdla.convert import main as convert_main

    monkeypatch.setenv("MASKDLA_CACHE", str(tmp_path / "cache"))
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as bundle:
        bundle.writestr("../outside.xml", "<alto/>")
    with pytest.raises(InputError, match="unsafe member '../outside.xml'"):
        convert_main(["to-coco", str(tmp_path / "evil.zip"), "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "outside.xml").exists()


def test_a_zip_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    """A run resolves --data once per split: the archive is read for its hash only the first
    time, and again once its contents change (a new folder in the cache)."""
    import hashlib

    from maskdla.data import archives

    monkeypatch.setenv("MASKDLA_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("DATA/train/a.xml", "<alto/>")
    made = []
    monkeypatch.setattr(archives.hashlib, "sha256",
                        lambda: made.append(1) or hashlib.new("sha256"))
    first = [archives.data_folder(archive) for _ in range(4)]
    assert len(set(first)) == 1 and first[0].name == "DATA" and len(made) == 1
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("DATA/train/b.xml", "<alto/>")
    os.utime(archive, ns=(0, archive.stat().st_mtime_ns + 10**9))  # coarse clocks
    changed = archives.data_folder(archive)
    assert changed != first[0] and (changed / "train" / "b.xml").is_file() and len(made) == 2


def test_a_flat_export_is_training_data_with_a_drawn_test_split(tmp_path, monkeypatch):
    """An eScriptorium export (the XML beside its images, no train/ and test/) as --data:
    --test-fraction of its pages, drawn by --seed, are the test split, the same draw for
    every reader of the run's data; a folder of one page cannot be split."""
    from maskdla.config import TrainConfig
    from maskdla.data.sources import run_data, run_dataset
    from maskdla.data.synthetic import generate_corpus

    monkeypatch.setenv("MASKDLA_CACHE", str(tmp_path / "cache"))
    corpus = generate_corpus(tmp_path / "corpus", pages=6, train=6, width=160)
    archive = _zip_folder(corpus / "train", tmp_path / "export.zip")
    config = TrainConfig(data=str(archive), test_fraction=0.34, seed=3, min_size=[128],
                         max_size=200)
    data = run_data(config)
    train_names = {image["file_name"] for image in data.train.coco["images"]}
    test_names = {image["file_name"] for image in data.test.coco["images"]}
    assert (len(train_names), len(test_names)) == (4, 2) and not train_names & test_names
    assert data.train.train and not data.test.train and data.val is None
    assert data.test.classes == data.train.classes
    again = run_dataset(config, "test", classes=data.train.classes)  # eval CKPT redraws it
    assert {image["file_name"] for image in again.coco["images"]} == test_names
    other_seed = run_dataset(TrainConfig(**{**config.to_dict(), "seed": 4}), "test")
    assert len(other_seed) == 2
    with pytest.raises(InputError, match="no 'val'"):
        run_dataset(config, "val")
    single = tmp_path / "single"
    (single / "page").mkdir(parents=True)
    image = sorted((corpus / "train").glob("*.jpg"))[0]
    (single / image.name).write_bytes(image.read_bytes())
    page = corpus / "train" / "page" / f"{image.stem}.xml"
    (single / "page" / page.name).write_bytes(page.read_bytes())
    with pytest.raises(InputError, match="too few to draw a test split"):
        run_data(TrainConfig(data=str(single), min_size=[128], max_size=200))
