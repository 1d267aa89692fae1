"""Prediction: detections -> PAGE-XML, the Predictor, the CLI and overlays."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from shapely.geometry import Polygon

from maskdla.bench.predict import CLASSES, synthetic_detections
from maskdla.data.pagexml import page_to_xml, read_page, write_page
from maskdla.errors import InputError
from maskdla.prediction.overlay import STUDY_COLOURS, class_colours, draw_overlay
from maskdla.predict import (Predictor, detections_to_page, find_images, main,
                             page_to_coco_results)
from maskdla.prediction import PostProcess

XSD = Path(__file__).parent / "data" / "pagecontent-2019-07-15.xsd"
REPO = Path(__file__).resolve().parents[1]
SIZE = (1300, 900)


@pytest.fixture(scope="module")
def page():
    detections = synthetic_detections(25, *SIZE, seed=1)
    return detections_to_page(detections["boxes"], detections["labels"], detections["scores"],
                              detections["masks"], CLASSES, SIZE, "folio 12r.jpg")


def test_detections_become_regions_in_reading_order(page):
    assert (page.height, page.width, page.image_filename) == (*SIZE, "folio 12r.jpg")
    assert len(page.regions) == 25
    assert page.reading_order == [f"r{i}" for i in range(1, 26)]
    assert [region.id for region in page.regions] == page.reading_order
    assert {region.label for region in page.regions} == set(CLASSES)
    # the synthetic page's first row: drop capital, its staff, then the lyrics below
    assert [region.label for region in page.regions[:3]] == ["drop-capital", "staff", "lyrics"]
    for region in page.regions:
        polygon = Polygon(region.polygon)
        assert polygon.is_valid and len(region.polygon) >= 3
        assert region.polygon[0] != region.polygon[-1]  # open ring, as PAGE wants
        assert 0.6 <= region.score <= 1


def test_score_threshold_and_empty_pages():
    detections = synthetic_detections(10, *SIZE, seed=2)
    threshold = float(detections["scores"].median())
    page = detections_to_page(detections["boxes"], detections["labels"], detections["scores"],
                              detections["masks"], CLASSES, SIZE,
                              postprocess=PostProcess(score_thresh=threshold))
    assert page.regions and all(region.score >= threshold for region in page.regions)
    assert len(page.regions) < 10
    empty = detections_to_page(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                               torch.zeros(0), torch.zeros(0, 1, 28, 28), CLASSES, SIZE)
    assert empty.regions == [] and b"<Page" in page_to_xml(empty)


def test_overlapping_detections_are_merged_unless_exempt():
    masks = torch.ones(3, 1, 28, 28)
    boxes = torch.tensor([[100.0, 100, 500, 300], [120, 110, 480, 290], [90, 90, 200, 310]])
    labels = torch.tensor([2, 3, 1])
    scores = torch.tensor([0.7, 0.9, 0.8])
    page = detections_to_page(boxes, labels, scores, masks, CLASSES, SIZE,
                              postprocess=PostProcess(no_merge_classes=["drop-capital"]))
    assert sorted(r.label for r in page.regions) == ["drop-capital", "staff"]
    assert sorted(r.score for r in page.regions) == pytest.approx([0.8, 0.9])
    merged = detections_to_page(boxes, labels, scores, masks, CLASSES, SIZE,
                                postprocess=PostProcess(overlap_thresh=0.1))
    assert [r.label for r in merged.regions] == ["staff"]
    assert merged.regions[0].score == pytest.approx(0.9)


@pytest.mark.skipif(not XSD.is_file(), reason="PAGE 2019 schema not in tests/data")
def test_written_page_is_valid_against_the_page_2019_schema(page, tmp_path):
    etree = pytest.importorskip("lxml.etree")
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    path = tmp_path / "page" / "folio.xml"
    write_page(page, path)
    document = etree.parse(str(path))
    assert schema.validate(document), schema.error_log
    root = document.getroot()
    namespace = {"pc": root.nsmap[None]}
    music = root.findall(".//pc:MusicRegion", namespace)
    text = root.findall(".//pc:TextRegion", namespace)
    assert len(music) + len(text) == 25
    assert all("structure {type:staff;}" in element.get("custom") for element in music)
    assert {element.get("type") for element in text} >= {"drop-capital"}
    assert all("score {value:" in element.get("custom") for element in music + text)


def test_written_page_reads_back_the_same(page, tmp_path):
    path = tmp_path / "page" / "folio.xml"
    write_page(page, path)
    back = read_page(path)
    assert back.image_filename == page.image_filename
    assert (back.width, back.height) == (page.width, page.height)
    assert [r.id for r in back.regions] == [r.id for r in page.regions]
    assert back.reading_order == page.reading_order
    for written, read in zip(page.regions, back.regions):
        assert read.label == written.label
        assert read.score == pytest.approx(written.score, abs=1e-3)
        assert read.polygon == written.polygon  # already whole pixels


def test_coco_results_of_a_page(page):
    results = page_to_coco_results(page, 7, CLASSES)
    assert len(results) == len(page.regions)
    for result, region in zip(results, page.regions):
        assert result["image_id"] == 7 and result["file_name"] == "folio 12r.jpg"
        assert CLASSES[result["category_id"] - 1] == region.label
        polygon = Polygon(region.polygon)
        x, y, w, h = result["bbox"]
        assert [x, y, x + w, y + h] == pytest.approx(list(polygon.bounds))
        rle = dict(result["segmentation"], counts=result["segmentation"]["counts"].encode())
        assert result["segmentation"]["size"] == list(SIZE)
        assert float(mask_utils.area(rle)) == pytest.approx(polygon.area, rel=0.03)
    json.dumps(results)


def test_overlay_colours_and_drawing(page):
    colours = class_colours(["text", "staff", "lyrics", "drop-capital", "other"])
    assert colours["staff"] == STUDY_COLOURS["staff"]
    assert colours["drop-capital"] == STUDY_COLOURS["drop-capital"]
    assert len(set(colours.values())) == 5
    image = Image.new("L", (SIZE[1] // 2, SIZE[0] // 2), 255)  # a thumbnail
    overlay = draw_overlay(image, page, CLASSES)
    assert overlay.size == image.size and overlay.mode == "RGB"
    staff = next(region for region in page.regions if region.label == "staff")
    x, y = Polygon(staff.polygon).representative_point().coords[0]
    red, green, blue = overlay.getpixel((int(x / 2), int(y / 2)))
    assert red > green and red > blue  # translucent red over white


def test_find_images(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("b.JPG", "a.png", "notes.txt", "c.tiff"):
        (folder / name).write_bytes(b"x")
    single = tmp_path / "d.jpeg"
    single.write_bytes(b"x")
    assert [image.path.name for image in find_images([folder, single])] == [
        "a.png", "b.JPG", "c.tiff", "d.jpeg"]
    with pytest.raises(InputError, match="no such file"):
        find_images([tmp_path / "missing.jpg"])
    with pytest.raises(InputError, match="not an image"):
        find_images([folder / "notes.txt"])
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="same output name"):
        find_images([folder, tmp_path / "a.jpg"])


# ---------------------------------------------------------------- with a tiny model


@pytest.fixture(scope="module")
def checkpoint_path(tiny_checkpoint):
    return tiny_checkpoint(64, 128)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((160, 110, 3)) * 255).astype(np.uint8)).save(folder / "p1.png")
    Image.fromarray((rng.random((90, 140, 3)) * 255).astype(np.uint8)).save(folder / "p2.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_predictor_takes_paths_pil_images_and_tensors(checkpoint_path, images):
    predictor = Predictor(checkpoint_path, device="cpu", postprocess=PostProcess(score_thresh=0.0),
                          max_detections=10)
    from_path = predictor.predict(images / "p1.png")
    assert (from_path.height, from_path.width, from_path.image_filename) == (160, 110, "p1.png")
    assert from_path.regions  # untrained, but score 0 keeps every detection
    for region in from_path.regions:
        assert region.label in CLASSES
        xmin, ymin, xmax, ymax = Polygon(region.polygon).bounds
        assert xmin >= 0 and ymin >= 0 and xmax <= 110 and ymax <= 160
    with Image.open(images / "p2.jpg") as opened:
        from_pil, from_tensor = predictor.predict_batch(
            [opened, torch.from_numpy(np.array(opened)).permute(2, 0, 1)])
    assert (from_pil.height, from_pil.width) == (from_tensor.height, from_tensor.width) == (90, 140)
    with pytest.raises(InputError, match="broken.png"):
        predictor.predict(images / "broken.png")
    with pytest.raises(InputError, match="unknown class"):
        Predictor(checkpoint_path, device="cpu",
                  postprocess=PostProcess(no_merge_classes=["initial"]))


def test_cli_writes_pages_and_reports_the_unreadable_image(checkpoint_path, images, tmp_path,
                                                         capsys):
    out = tmp_path / "out"
    code = main([str(checkpoint_path), str(images), "--out", str(out), "--score-thresh", "0",
                 "--overlay", "--coco", str(tmp_path / "preds.json"), "--batch-size", "2",
                 "--no-merge-classes", "drop-capital", "--largest-component-only",
                 "--max-detections", "10"])
    assert code == 1
    error = capsys.readouterr().err
    assert "broken.png" in error and "Traceback" not in error
    assert sorted(p.name for p in (out / "page").iterdir()) == ["p1.xml", "p2.xml"]
    assert sorted(p.name for p in (out / "overlay").iterdir()) == ["p1.jpg", "p2.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to repair or skip in what we wrote
        page = read_page(out / "page" / "p2.xml")
    assert page.image_filename == "p2.jpg" and (page.width, page.height) == (140, 90)
    results = json.loads((tmp_path / "preds.json").read_text())
    names = {result["file_name"]: result["image_id"] for result in results}
    assert set(names) == {"p1.png", "p2.jpg"}
    assert not [name for name in os.listdir(out / "page") if name.startswith(".")]


def test_cli_exit_codes(checkpoint_path, images, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "p1.png").write_bytes((images / "p1.png").read_bytes())
    assert main([str(checkpoint_path), str(good), "--out", str(tmp_path / "o"),
                 "--max-detections", "5"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main([str(checkpoint_path), str(good), "--out", str(tmp_path / "o"),
              "--score-thresh", "1.5"])
    assert exit_info.value.code == 2
    with pytest.raises(InputError, match="checkpoint"):
        main([str(images / "broken.png"), str(good), "--out", str(tmp_path / "o")])


@pytest.mark.slow
def test_cli_process_exit_code_and_one_line_errors(checkpoint_path, images, tmp_path):
    command = [sys.executable, "-m", "maskdla.predict", str(checkpoint_path), str(images),
               "--out", str(tmp_path / "out"), "--score-thresh", "0", "--max-detections", "5"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 1, run.stderr
    assert "broken.png" in run.stderr and "Traceback" not in run.stderr
    assert len(list((tmp_path / "out" / "page").glob("*.xml"))) == 2
    bad = subprocess.run(command[:3] + [str(tmp_path / "nothing")] + command[4:],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("maskdla: error:")


# ---------------------------------------------------------------- autocast and EXIF


def test_amp_runs_the_backbone_in_half_and_the_heads_in_float32(checkpoint_path, images):
    """Predictor(amp=True) on the CPU: bfloat16 for the backbone, float32 RoI heads."""
    predictor = Predictor(checkpoint_path, device="cpu", postprocess=PostProcess(score_thresh=0.0),
                          max_detections=5, amp=True)
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            value = output if isinstance(output, torch.Tensor) else next(iter(output.values()))
            seen[name] = value.dtype
        return record

    handles = [predictor.model.backbone.register_forward_hook(hook("backbone")),
               predictor.model.roi_heads.box_head.register_forward_hook(hook("box_head")),
               predictor.model.roi_heads.mask_head.register_forward_hook(hook("mask_head"))]
    try:
        tensor, _, _ = predictor.load(images / "p1.png")
        predictor.detect([tensor])
        # also under an autocast of the caller's, the heads stay float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            predictor.detect([tensor])
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"backbone": torch.bfloat16, "box_head": torch.float32,
                    "mask_head": torch.float32}


def _rotated_jpeg(path, orientation):
    """A 120 x 70 px (stored) JPEG whose EXIF says how to show it; top-left quarter dark."""
    pixels = np.full((70, 120, 3), 230, np.uint8)
    pixels[:35, :60] = 20
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_rotated_scans_are_predicted_as_displayed(checkpoint_path, tmp_path, orientation):
    from maskdla.data.image import displayed_size

    path = tmp_path / "rotated.jpg"
    _rotated_jpeg(path, orientation)
    assert displayed_size(path) == (70, 120)
    predictor = Predictor(checkpoint_path, device="cpu", postprocess=PostProcess(score_thresh=0.0),
                          max_detections=5)
    tensor, original, _ = predictor.load(path)
    assert original == (120, 70) and tensor.shape[1] > tensor.shape[2]  # portrait, as shown
    with Image.open(path) as opened:
        shown = ImageOps.exif_transpose(opened)
        expected, _, _ = predictor.load(torch.from_numpy(np.array(shown)).permute(2, 0, 1))
        from_pil, _, _ = predictor.load(opened)
    assert (tensor - expected).abs().mean() < 0.02  # the same page, not a rotated one
    assert (from_pil - expected).abs().mean() < 0.02
    for mirrored in (expected.flip(-1), expected.flip(-2)):  # any other way round differs
        assert (tensor - mirrored).abs().mean() > 0.2
    out = tmp_path / "out"
    assert main([str(checkpoint_path), str(path), "--out", str(out), "--workers", "0",
                 "--max-detections", "5"]) == 0
    page = read_page(out / "page" / "rotated.xml")
    assert (page.width, page.height) == (70, 120)


@pytest.mark.parametrize("orientation", [7, 8])
def test_overlay_is_drawn_on_the_page_as_displayed(checkpoint_path, tmp_path, orientation):
    """The PAGE file says 70 x 120 (the page as displayed): so must the overlay. (7 and 8
    turn the dark quarter to the bottom, clear of the legend.)"""
    path = tmp_path / "rotated.jpg"
    _rotated_jpeg(path, orientation)
    out = tmp_path / "out"
    assert main([str(checkpoint_path), str(path), "--out", str(out), "--workers", "0",
                 "--max-detections", "5", "--overlay"]) == 0
    with Image.open(out / "overlay" / "rotated.jpg") as overlay, Image.open(path) as scan:
        shown = np.array(ImageOps.exif_transpose(scan)).astype(float)
        assert overlay.size == (70, 120)
        # the dark quarter where the displayed page has it (under translucent regions)
        drawn = np.array(overlay.convert("RGB")).astype(float)
        dark = shown.mean(axis=2) < 100
        assert drawn[dark].mean() < drawn[~dark].mean() - 60


def test_16_bit_greyscale_scans_are_predicted_and_drawn_as_grey(checkpoint_path, tmp_path):
    """PIL's I;16 -> RGB conversion clips: every 16-bit scan would be a white page."""
    samples = np.full((120, 90), 50000, np.uint16)
    samples[:, :30] = 5000
    path = tmp_path / "grey16.png"
    Image.fromarray(samples).save(path)
    predictor = Predictor(checkpoint_path, device="cpu", max_detections=5)
    for loaded in (predictor.load(path)[0], predictor.load(Image.open(path))[0]):
        assert abs(loaded[:, :, -20:].mean().item() - 50000 / 65535) < 0.02
        assert loaded[:, :, :10].mean().item() < 0.1
    from maskdla.data.page import Page
    from maskdla.prediction.overlay import save_overlay

    save_overlay(path, Page("grey16.png", 90, 120), [], tmp_path / "overlay.png")
    with Image.open(tmp_path / "overlay.png") as overlay:
        drawn = np.array(overlay.convert("L")).astype(float)
    assert drawn[:, :10].mean() < 40 and abs(drawn[:, -20:].mean() - 50000 / 257) < 3


# ---------------------------------------------------------------- bad checkpoints


def test_a_checkpoint_with_non_finite_weights_is_refused_and_leaves_no_output(
        checkpoint_path, images, tmp_path, capsys):
    """A diverged model predicts 0 regions on every page, exit 0: refuse it at load."""
    from maskdla.cli import run_main

    checkpoint = torch.load(checkpoint_path, weights_only=True)
    names = [key for key, value in checkpoint["model"].items() if value.is_floating_point()]
    checkpoint["model"][names[0]][0] = float("nan")
    checkpoint["model"][names[-1]][...] = float("inf")
    diverged = tmp_path / "diverged.pth"
    torch.save(checkpoint, diverged)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(diverged), str(images / "p1.png"), "--out", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"maskdla: error: {diverged}: 2 of the model's {len(checkpoint['model'])} "
                     f"tensors hold NaN or infinite values (e.g. {names[0]}): the run that "
                     "saved it diverged; use an earlier checkpoint")
    assert not out.exists()  # no empty output folder for a run that never started


def _read_only_folder(path: Path, monkeypatch) -> Path:
    """A folder files cannot be created in: chmod 0o500 where that binds (not as root),
    else creating a file in it raises EROFS, as on a read-only disk."""
    import errno

    path.mkdir()
    path.chmod(0o500)
    if os.access(path, os.W_OK):  # root writes anyway: simulate the read-only disk
        import builtins
        import io

        real_open = builtins.open

        def refusing_open(file, mode="r", *args, **kwargs):
            if set(mode) & set("wxa+") and Path(os.fspath(file)).parent == path:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
        monkeypatch.setattr(io, "open", refusing_open)  # pathlib's
    return path


def test_predict_into_a_read_only_folder_is_one_line(checkpoint_path, images, tmp_path,
                                                      monkeypatch, capsys):
    from maskdla.cli import run_main

    out = _read_only_folder(tmp_path / "readonly", monkeypatch)
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, [str(checkpoint_path), str(images / "p1.png"), "--out", str(out),
                            "--workers", "0"])
    finally:
        out.chmod(0o700)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"maskdla: error: {out}: --out: cannot write in this folder")
    assert "\n" not in error and not list(out.iterdir())


def test_a_one_pixel_image_is_a_page_without_regions(checkpoint_path, tmp_path, capsys):
    """A page one pixel high or wide has no room for a polygon: clipping to it raised
    shapely's GEOSException ("Clipping rectangle must be non-empty")."""
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, size in (("dot.png", (1, 1)), ("line.png", (40, 1)), ("column.png", (1, 40))):
        Image.new("RGB", size, (200, 190, 170)).save(scans / name)
    out = tmp_path / "out"
    assert main([str(checkpoint_path), str(scans), "--out", str(out), "--workers", "0",
                 "--score-thresh", "0", "--max-detections", "10"]) == 0
    assert "GEOS" not in capsys.readouterr().err
    page = read_page(out / "page" / "line.xml")
    assert (page.width, page.height, page.regions) == (40, 1, [])
