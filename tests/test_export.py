"""Export (ONNX, TorchScript) and the onnxruntime engine against eager PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from shapely.geometry import Polygon

from maskdla.bench.predict import CLASSES
from maskdla.errors import InputError
from maskdla.export import main as export_main
from maskdla.predict import Predictor, main as predict_main
from maskdla.prediction import PostProcess


@pytest.fixture(scope="module")
def checkpoint_path(tiny_checkpoint):
    return tiny_checkpoint(96, 160)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Three page-like images: light paper, dark bands (staves, lyrics) and a blob."""
    folder = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(3)
    for number, (height, width) in enumerate(((150, 100), (140, 100), (100, 150))):
        pixels = np.full((height, width, 3), 225, np.uint8)
        for top in range(10, height - 20, 25):
            pixels[top:top + 10, 15:width - 10] = 60
        pixels[8:30, 3:14] = 30
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"p{number}.png")
    return folder


@pytest.fixture(scope="module")
def onnx_path(checkpoint_path, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    assert export_main([str(checkpoint_path), "--format", "onnx", "--out", str(path),
                        "--score-thresh", "0.0", "--max-detections", "20"]) == 0
    return path


def _box_iou_and_masks(page_a, page_b):
    assert len(page_a.regions) == len(page_b.regions)
    for a, b in zip(page_a.regions, page_b.regions):
        assert a.label == b.label
        polygon_a, polygon_b = Polygon(a.polygon), Polygon(b.polygon)
        assert np.abs(np.subtract(polygon_a.bounds, polygon_b.bounds)).max() <= 1
        union = polygon_a.union(polygon_b).area
        assert polygon_a.intersection(polygon_b).area / union >= 0.99


def test_onnxruntime_engine_gives_the_pages_of_eager_pytorch(checkpoint_path, onnx_path, scans):
    options = dict(device="cpu", postprocess=PostProcess(score_thresh=0.05, tolerance=0.0),
                   max_detections=20)
    eager = Predictor(checkpoint_path, **options)
    exported = Predictor(onnx_path, engine="onnxruntime", **options)
    assert exported.classes == eager.classes and exported.model is None
    regions = 0
    for path in sorted(scans.iterdir()):
        page_eager, page_onnx = eager.predict(path), exported.predict(path)
        _box_iou_and_masks(page_eager, page_onnx)
        regions += len(page_eager.regions)
        # the raw detections too: boxes within 1 px, mask probabilities alike
        tensor, _, _ = eager.load(path)
        raw_eager, raw_onnx = eager.detect([tensor])[0], exported.detect([tensor])[0]
        assert raw_eager["boxes"].shape == raw_onnx["boxes"].shape
        assert torch.equal(raw_eager["labels"], raw_onnx["labels"])
        assert (raw_eager["boxes"] - raw_onnx["boxes"]).abs().max() <= 1
        assert (raw_eager["masks"] - raw_onnx["masks"]).abs().max() < 1e-3
    assert regions > 0  # the comparison compared something


def test_onnxruntime_engine_in_the_command_and_its_limits(onnx_path, scans, tmp_path):
    out = tmp_path / "out"
    assert predict_main([str(onnx_path), str(scans), "--out", str(out), "--engine",
                         "onnxruntime", "--score-thresh", "0.1", "--workers", "0"]) == 0
    assert len(list((out / "page").glob("*.xml"))) == 3
    assert json.loads((out / "manifest.json").read_text())["engine"] == "onnxruntime"
    with pytest.raises(InputError, match="exported with"):
        Predictor(onnx_path, engine="onnxruntime", device="cpu", max_detections=50)
    with pytest.raises(InputError, match="not a model exported|cannot load"):
        Predictor(scans / "p0.png", engine="onnxruntime", device="cpu")


def test_torchscript_export_keeps_boxes_labels_scores_and_masks(checkpoint_path, scans,
                                                                tmp_path):
    path = tmp_path / "tiny.pt"
    assert export_main([str(checkpoint_path), "--format", "torchscript", "--out", str(path),
                        "--score-thresh", "0.0", "--max-detections", "20"]) == 0
    extra = {"maskdla.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["maskdla.json"])["classes"] == list(CLASSES)
    eager = Predictor(checkpoint_path, device="cpu", postprocess=PostProcess(score_thresh=0.0),
                      max_detections=20)
    tensor, _, _ = eager.load(scans / "p2.png")
    with torch.no_grad():
        boxes, labels, scores, masks = scripted(tensor)
    expected = eager.detect([tensor])[0]
    assert boxes.shape == expected["boxes"].shape and masks.shape[1:] == (1, 28, 28)
    assert torch.allclose(boxes, expected["boxes"], atol=1e-3)
    assert torch.equal(labels, expected["labels"])
    assert torch.allclose(masks, expected["masks"], atol=1e-4)
