"""Evaluation: COCO metrics identical to pycocotools, conversions to original pixels, the
model path on a tiny Mask R-CNN, and the CLI's answers to bad input."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskdla.checkpoint import save_checkpoint
from maskdla.evaluation.coco import STAT_INDEX, coco_metrics, format_table, validate_results
from maskdla.evaluation.layout_inputs import results_layout_metrics
from maskdla.evaluation.results import (box_mask_to_rle, detections_to_coco_results,
                                  paste_box_masks, scale_boxes)
from maskdla.data.dataset import Dataset, View
from maskdla.data.synthetic import CLASSES, generate_corpus
from maskdla.errors import InputError
from maskdla.eval import evaluate, predict_coco_results
from maskdla.evaluation.evaluators import EvalSettings
from maskdla.inference import raw_detections
from maskdla.model import build_model

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = [{"id": 1, "name": "staff"}, {"id": 2, "name": "lyrics"},
              {"id": 7, "name": "drop-capital"}]  # drop-capital has no instance


def _box_annotation(annotation_id, image_id, category_id, x, y, w, h):
    return {"id": annotation_id, "image_id": image_id, "category_id": category_id,
            "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


@pytest.fixture()
def ground_truth():
    """3 images of 128 x 96 px (the last without regions), medium and large regions only."""
    images = [{"id": i, "file_name": f"{i}.png", "height": 128, "width": 96} for i in (1, 2, 3)]
    boxes = [(1, 1, 4, 8, 88, 40), (1, 2, 4, 52, 88, 20), (1, 1, 4, 76, 80, 44),
             (2, 1, 2, 2, 90, 110), (2, 2, 10, 80, 50, 30), (2, 2, 62, 82, 30, 36)]
    annotations = [_box_annotation(i + 1, *box) for i, box in enumerate(boxes)]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def _polygon_rle(polygon, height=128, width=96):
    return mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))


def _noisy_results(gt, seed=0):
    """Shifted copies of the ground truth plus false positives; RLE masks and boxes."""
    rng = np.random.default_rng(seed)
    results = []
    for annotation in gt["annotations"] * 2:
        x, y, w, h = (np.array(annotation["bbox"]) + rng.normal(0, 4, 4)).tolist()
        x, y, w, h = max(x, 0), max(y, 0), max(w, 2), max(h, 2)
        rle = _polygon_rle([x, y, x + w, y, x + 0.8 * w, y + h, x, y + h])
        results.append({"image_id": annotation["image_id"], "score": float(rng.random()),
                        "category_id": int(rng.choice([1, 2, 7])) if rng.random() < 0.3
                        else annotation["category_id"], "bbox": [x, y, w, h],
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return results


def _pycocotools_stats(gt_path, results_path, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------ scoring


def test_metrics_equal_pycocotools_run_directly(ground_truth, tmp_path):
    results = _noisy_results(ground_truth)
    gt_path = _write(tmp_path / "gt.json", ground_truth)
    # the official per-task results formats, scored by pycocotools as its users do
    official = {"bbox": [{k: r[k] for k in ("image_id", "category_id", "score", "bbox")}
                         for r in results],
                "segm": [{k: r[k] for k in ("image_id", "category_id", "score", "segmentation")}
                         for r in results]}
    metrics = coco_metrics(ground_truth, results)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type, task_results in official.items():
        reference = _pycocotools_stats(gt_path, _write(tmp_path / f"{iou_type}.json",
                                                       task_results), iou_type)
        for name, index in STAT_INDEX.items():
            expected = reference.stats[index]
            expected = -1.0 if expected == -1 else expected * 100
            assert metrics[iou_type][name] == pytest.approx(expected, abs=1e-9), (iou_type, name)
        assert 0 < metrics[iou_type]["AP"] < 100
        precision = reference.eval["precision"][:, :, :, 0, -1]
        for k, category in enumerate(CATEGORIES):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            expected = valid.mean() * 100 if valid.size else -1.0
            assert metrics[iou_type]["per_class"][category["name"]] == pytest.approx(
                expected, abs=1e-9)
    # APl is defined (large regions), APs is not (no region under 32 x 32 px)
    assert metrics["bbox"]["APs"] == -1 and metrics["bbox"]["APl"] != -1
    # the class without instances reports pycocotools' -1, not a number
    assert metrics["segm"]["per_class"]["drop-capital"] == -1


def test_scoring_leaves_inputs_untouched(ground_truth):
    results = _noisy_results(ground_truth)
    gt_before, results_before = json.dumps(ground_truth), json.dumps(results)
    coco_metrics(ground_truth, results)
    assert json.dumps(ground_truth) == gt_before and json.dumps(results) == results_before


def test_perfect_predictions_score_100(ground_truth):
    results = []
    for annotation in ground_truth["annotations"]:
        rle = _polygon_rle(annotation["segmentation"][0])
        results.append({"image_id": annotation["image_id"], "score": 1.0,
                        "category_id": annotation["category_id"], "bbox": annotation["bbox"],
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    metrics = coco_metrics(ground_truth, results)
    for figures in metrics.values():
        for name in ("AP", "AP50", "AP75", "APm", "APl", "AR"):
            assert figures[name] == pytest.approx(100.0)
        assert figures["APs"] == -1
        assert figures["per_class"] == {"staff": pytest.approx(100.0),
                                        "lyrics": pytest.approx(100.0), "drop-capital": -1}


def test_no_predictions_score_0(ground_truth):
    metrics = coco_metrics(ground_truth, [])
    for figures in metrics.values():
        assert figures["AP"] == 0 and figures["AR"] == 0 and figures["APm"] == 0
        assert figures["per_class"] == {"staff": 0, "lyrics": 0, "drop-capital": -1}


def test_verbose_shows_pycocotools_output(ground_truth, capsys):
    coco_metrics(ground_truth, [], iou_types=["bbox"])
    assert capsys.readouterr().out == ""
    coco_metrics(ground_truth, [], iou_types=["bbox"], verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_box_only_results_score_bbox_only(ground_truth):
    results = [{k: r[k] for k in ("image_id", "category_id", "score", "bbox")}
               for r in _noisy_results(ground_truth)]
    assert set(coco_metrics(ground_truth, results)) == {"bbox"}


def test_polygon_results_are_scored_like_rle(ground_truth):
    polygons = [dict(r, segmentation=[a["segmentation"][0]])
                for r, a in zip(_noisy_results(ground_truth), ground_truth["annotations"])]
    as_rle = []
    for result in polygons:
        rle = _polygon_rle(result["segmentation"][0])
        as_rle.append(dict(result, segmentation={"size": rle["size"],
                                                 "counts": rle["counts"].decode()}))
    assert (coco_metrics(ground_truth, polygons)["segm"]
            == coco_metrics(ground_truth, as_rle)["segm"])


def test_table_has_study_rows_and_aps_only_with_small_objects(ground_truth):
    table = format_table(coco_metrics(ground_truth, _noisy_results(ground_truth)))
    lines = table.splitlines()
    assert lines[0] == "| task | AP | AP50 | AP75 | APm | APl |"
    assert lines[2].startswith("| Bounding Box | ") and lines[3].startswith("| Segmentation | ")
    assert all(len(cell.strip().split(".")[1]) == 2 for cell in lines[2].split("|")[2:-1])
    ground_truth["annotations"].append(_box_annotation(99, 3, 1, 5, 5, 20, 20))
    table = format_table(coco_metrics(ground_truth, _noisy_results(ground_truth)))
    assert table.splitlines()[0] == "| task | AP | AP50 | AP75 | APs | APm | APl |"


@pytest.mark.parametrize("change, message", [
    ({"image_id": 42}, "image_id 42"),
    ({"category_id": 5}, "category_id 5"),
    ({"score": "high"}, "score"),
    ({"segmentation": {"size": [10, 10], "counts": "abc"}}, "size [128, 96]"),
])
def test_bad_results_are_input_errors(ground_truth, change, message):
    results = _noisy_results(ground_truth)
    results[3] = dict(results[3], **change)
    with pytest.raises(InputError, match=re.escape(message)):
        validate_results(results, ground_truth, "results.json")


# ------------------------------------------------------------------ conversions


def test_box_rle_equals_pycocotools_encode():
    rng = np.random.default_rng(1)
    height, width = 37, 29
    cases = [(0, 0, np.ones((height, width), bool)),  # runs join across columns
             (0, 0, rng.random((height, width)) > 0.5),
             (30, 20, np.ones((7, 9), bool)),  # touches bottom-right corner
             (0, 5, np.ones((height, 3), bool)),  # full columns
             (4, 4, np.zeros((3, 3), bool)), (10, 10, np.zeros((0, 4), bool))]
    cases += [(int(rng.integers(0, height - 8)), int(rng.integers(0, width - 8)),
               rng.random((8, 8)) > 0.3) for _ in range(50)]
    for top, left, mask in cases:
        full = np.zeros((height, width), np.uint8, order="F")
        full[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        expected = mask_utils.encode(full)
        rle = box_mask_to_rle((top, left, mask), (height, width))
        assert rle == {"size": [height, width], "counts": expected["counts"].decode()}


def test_paste_equals_torchvision_paste_thresholded():
    generator = torch.Generator().manual_seed(0)
    height, width = 70, 50
    masks = torch.rand(20, 1, 28, 28, generator=generator)
    corners = torch.rand(20, 2, 2, generator=generator) * torch.tensor([width, height])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])
    expected = paste_masks_in_image(masks, boxes, (height, width))[:, 0] > 0.5
    for (top, left, mask), reference in zip(paste_box_masks(masks, boxes, (height, width)),
                                            expected):
        full = np.zeros((height, width), bool)
        full[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        np.testing.assert_array_equal(full, reference.numpy())


def test_detections_become_results_in_original_pixels():
    detections = {"boxes": torch.tensor([[8.0, 8.0, 24.0, 32.0], [0.0, 0.0, 48.0, 64.0]]),
                  "labels": torch.tensor([1, 3]), "scores": torch.tensor([0.9, 0.4]),
                  "masks": torch.ones(2, 1, 28, 28)}
    results = detections_to_coco_results(detections, 5, (64, 48), (128, 96), [10, 20, 30])
    assert [r["category_id"] for r in results] == [10, 30]
    assert [r["image_id"] for r in results] == [5, 5]
    assert results[0]["score"] == pytest.approx(0.9)
    assert results[0]["bbox"] == pytest.approx([16, 16, 32, 48])
    assert results[1]["bbox"] == pytest.approx([0, 0, 96, 128])
    assert results[1]["segmentation"]["size"] == [128, 96]
    # an all-ones mask fills its box at the original size (the whole image here) but for
    # the border torchvision's one-pixel zero padding blurs below 0.5
    assert 0.98 * 128 * 96 < mask_utils.area(results[1]["segmentation"]) <= 128 * 96
    box = mask_utils.toBbox(results[0]["segmentation"])
    assert box == pytest.approx([16, 16, 32, 48], abs=2)
    assert scale_boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), (10, 20), (20, 20)).tolist() == [
        [1.0, 4.0, 3.0, 8.0]]


# ------------------------------------------------------------------ the model path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_corpus(tmp_path_factory.mktemp("eval") / "corpus", pages=3, train=1,
                           width=64)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("vovnet19slim", len(CLASSES) + 1, min_size=64, max_size=128,
                       box_detections_per_img=8, rpn_pre_nms_top_n_test=100,
                       rpn_post_nms_top_n_test=50).eval()


def test_detect_matches_the_models_own_forward(corpus, tiny_model):
    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    images = [dataset[0][0], dataset[1][0]]
    with torch.inference_mode():
        expected = tiny_model(images)
        detections, sizes = raw_detections(tiny_model, images)
    assert sizes == [tuple(image.shape[-2:]) for image in images]
    for reference, found, size in zip(expected, detections, sizes):
        torch.testing.assert_close(found["boxes"], reference["boxes"])
        assert torch.equal(found["labels"], reference["labels"])
        for (top, left, mask), pasted in zip(paste_box_masks(found["masks"], found["boxes"], size),
                                             reference["masks"][:, 0] > 0.5):
            full = np.zeros(size, bool)
            full[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
            np.testing.assert_array_equal(full, pasted.numpy())
    # autocast for backbone and RPN only: the heads still give float32 boxes and masks
    with torch.inference_mode():
        detections, _ = raw_detections(tiny_model, images, amp=True)
    assert detections[0]["boxes"].dtype == detections[0]["masks"].dtype == torch.float32


def test_evaluate_scores_in_original_pixels(corpus, tiny_model):
    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    tiny_model.train()
    timings = {}
    results = predict_coco_results(tiny_model, dataset, EvalSettings(batch_size=2), timings=timings)
    assert tiny_model.training  # mode restored
    sizes = {image["id"]: (image["height"], image["width"]) for image in dataset.coco["images"]}
    assert {r["image_id"] for r in results} <= set(sizes) and results
    for result in results:
        height, width = sizes[result["image_id"]]
        x, y, w, h = result["bbox"]
        assert 0 <= x and x + w <= width + 1e-3 and 0 <= y and y + h <= height + 1e-3
        assert result["segmentation"]["size"] == [height, width]
    # the original pages are larger than what the model saw
    assert max(r["bbox"][1] + r["bbox"][3] for r in results) > 64
    assert timings["images"] == 2 and timings["inference"] > 0
    metrics = evaluate(tiny_model, dataset, EvalSettings(batch_size=1))
    assert metrics == coco_metrics(dataset.coco, results)
    assert set(metrics["segm"]["per_class"]) == set(CLASSES)
    # the layout block is opt-in and scores the same detections (an untrained model's
    # scores are low: take all of them)
    with_layout = evaluate(tiny_model, dataset, EvalSettings(batch_size=1, score_thresh=0.0),
                           layout=True, timings=timings)
    assert with_layout["layout"] == results_layout_metrics(dataset.coco, results,
                                                           score_thresh=0.0)
    assert with_layout["layout"]["per_class"]["staff"]["predicted"] > 0
    assert timings["layout"] > 0


def test_evaluate_refuses_a_model_of_another_class_count(corpus):
    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    model = build_model("vovnet19slim", 3, min_size=64, max_size=128)
    with pytest.raises(InputError, match="2 classes but the data has 3"):
        evaluate(model, dataset)


# ------------------------------------------------------------------ command line


def _cli(*args, cwd=None, **environment):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **environment)
    return subprocess.run([sys.executable, "-m", "maskdla.eval", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def _assert_clean_error(process, *words):
    assert process.returncode == 2, process.stderr
    assert "Traceback" not in process.stderr
    assert process.stderr.startswith("maskdla: error: ") and process.stderr.count("\n") == 1
    for word in words:
        assert str(word) in process.stderr


def test_cli_scores_a_results_file(ground_truth, tmp_path):
    results = _noisy_results(ground_truth)
    gt_path = _write(tmp_path / "gt.json", ground_truth)
    results_path = _write(tmp_path / "results.json", results)
    out = tmp_path / "out" / "metrics.json"
    process = _cli("--predictions", results_path, "--ann", gt_path, "--out", out)
    assert process.returncode == 0, process.stderr
    assert "| Bounding Box |" in process.stdout and "| Segmentation |" in process.stdout
    written = json.loads(out.read_text())
    expected = {**coco_metrics(ground_truth, results),
                "layout": results_layout_metrics(ground_truth, results)}
    assert written == json.loads(json.dumps(expected))
    assert set(written["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR", "per_class"}
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_cli_rejects_results_for_unknown_images(ground_truth, tmp_path):
    results = _noisy_results(ground_truth)
    results[0]["image_id"] = 77
    results_path = _write(tmp_path / "results.json", results)
    out = tmp_path / "metrics.json"
    process = _cli("--predictions", results_path, "--ann", _write(tmp_path / "gt.json",
                                                                  ground_truth), "--out", out)
    _assert_clean_error(process, results_path, "image_id 77")
    assert not out.exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("vovnet19slim", len(CLASSES) + 1, min_size=64, max_size=128)
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pth"
    config = {"backbone": "vovnet19slim", "norm": None, "min_size": [64], "max_size": 128,
              "classes": list(CLASSES), "data": None}
    save_checkpoint({"model": model.state_dict(), "config": config, "classes": list(CLASSES)},
                    path)
    return path


@pytest.mark.slow
def test_cli_evaluates_a_checkpoint(checkpoint, corpus, tmp_path):
    out = tmp_path / "metrics.json"
    results = tmp_path / "results.json"
    process = _cli(checkpoint, "--data", corpus, "--split", "train", "--out", out,
                   "--save-results", results, "--device", "cpu", "--workers", "1",
                   "--worst", "1", "--score-thresh", "0")
    assert process.returncode == 0, process.stderr
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"bbox", "segm", "layout"}
    assert len(list((tmp_path / "worst").glob("001_*.jpg"))) == 1
    assert "Regions (one-to-one at IoU >= 0.5)" in process.stdout
    # the saved results score to the same figures through --predictions
    dataset = Dataset.from_folder(corpus, split="train", classes=list(CLASSES))
    saved = json.loads(results.read_text())
    expected = {**coco_metrics(dataset.coco, saved),
                "layout": results_layout_metrics(dataset.coco, saved, score_thresh=0.0)}
    assert metrics == json.loads(json.dumps(expected))


def test_cli_box_score_thresh_keeps_the_detections_above_it(checkpoint, corpus, tmp_path):
    from maskdla.eval import main

    def saved_results(*extra):
        path = tmp_path / f"results{len(extra)}.json"
        assert main([str(checkpoint), "--data", str(corpus), "--split", "train", "--device",
                     "cpu", "--workers", "0", "--no-layout", "--save-results", str(path),
                     *extra]) == 0
        return json.loads(path.read_text())

    default = saved_results()
    scores = sorted({result["score"] for result in default})
    assert len(scores) >= 4 and scores[0] > 0.05  # the model's own threshold held
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    higher = saved_results("--box-score-thresh", f"{threshold:.9f}")
    # greedy NMS is decided by higher-scoring boxes only: the kept set is the default's top
    key = lambda result: (-result["score"], result["bbox"])
    assert sorted(higher, key=key) == sorted([r for r in default if r["score"] > threshold],
                                             key=key)
    assert len(higher) < len(default)


def test_cli_rejects_box_score_thresh_without_a_model(ground_truth, tmp_path):
    results = tmp_path / "results.json"
    results.write_text("[]")
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(ground_truth))
    process = _cli("--predictions", results, "--ann", ann, "--box-score-thresh", "0.01")
    assert process.returncode == 2 and "--box-score-thresh" in process.stderr


@pytest.mark.slow
def test_cli_rejects_a_truncated_checkpoint(checkpoint, corpus, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(checkpoint.read_bytes()[:5000])
    _assert_clean_error(_cli(broken, "--data", corpus), broken)


@pytest.mark.slow
def test_cli_rejects_a_checkpoint_of_another_class_count(corpus, tmp_path):
    model = build_model("vovnet19slim", 3, min_size=64, max_size=128)
    path = tmp_path / "two_classes.pth"
    config = {"backbone": "vovnet19slim", "norm": None, "min_size": [64], "max_size": 128}
    save_checkpoint({"model": model.state_dict(), "config": config,
                     "classes": list(CLASSES)}, path)
    _assert_clean_error(_cli(path, "--data", corpus), path, "shape")


@pytest.mark.slow
def test_cli_rejects_missing_and_corrupt_images(checkpoint, corpus, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES))
    ann = _write(tmp_path / "gt.json", dataset.coco)
    first = dataset.coco["images"][0]["file_name"]
    _assert_clean_error(_cli(checkpoint, "--ann", ann, "--images", images), first)
    for image in dataset.coco["images"]:
        (images / image["file_name"]).write_bytes((corpus / "test" / image["file_name"])
                                                  .read_bytes()[:200])
    # decoded in a worker process: still one line
    _assert_clean_error(_cli(checkpoint, "--ann", ann, "--images", images, "--workers", "1"),
                        first)


def _seeded_tiny_model():
    """The same untrained model in every process: seed 0, few detections."""
    torch.manual_seed(0)
    return build_model("vovnet19slim", len(CLASSES) + 1, min_size=64, max_size=128,
                       box_detections_per_img=8, rpn_pre_nms_top_n_test=100,
                       rpn_post_nms_top_n_test=50)


def _evaluate_on_rank(rank, world_size, store, corpus, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                         world_size=world_size)
    model = _seeded_tiny_model()
    dataset = Dataset.from_folder(corpus, split=None, classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    timings = {}
    results = predict_coco_results(model, dataset, EvalSettings(batch_size=1), timings=timings)
    metrics = evaluate(model, dataset, EvalSettings(batch_size=1))
    Path(f"{out}.{rank}").write_text(json.dumps({"results": results, "metrics": metrics,
                                                 "images": timings["images"]}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_distributed_ranks_share_the_images_and_agree(corpus, tmp_path):
    # all three pages: rank 0 runs two, rank 1 one
    pages = tmp_path / "pages"
    (pages / "page").mkdir(parents=True)
    for split in ("train", "test"):
        for path in (corpus / split).glob("*.jpg"):
            (pages / path.name).write_bytes(path.read_bytes())
            xml = corpus / split / "page" / f"{path.stem}.xml"
            (pages / "page" / xml.name).write_bytes(xml.read_bytes())
    out = tmp_path / "rank"
    torch.multiprocessing.spawn(_evaluate_on_rank, args=(2, tmp_path / "store", pages, out),
                                nprocs=2)
    ranks = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert [rank["images"] for rank in ranks] == [2, 1]
    assert ranks[0]["results"] == ranks[1]["results"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    model = _seeded_tiny_model()
    dataset = Dataset.from_folder(pages, split=None, classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    alone = json.loads(json.dumps(predict_coco_results(model, dataset, EvalSettings(batch_size=1))))
    assert len({r["image_id"] for r in alone}) == 3
    _assert_same_detections(ranks[0]["results"], alone)


def _assert_same_detections(results, expected):
    """Same detections up to float noise: two processes and one may sum in another order
    (rounding both sides to 5 decimals failed on a score of 0.260265)."""
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        assert (got["image_id"], got["category_id"]) == (want["image_id"], want["category_id"])
        assert got["score"] == pytest.approx(want["score"], abs=1e-4)
        assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3)
        assert mask_utils.iou([got["segmentation"]], [want["segmentation"]], [0])[0, 0] >= 0.99


@pytest.mark.slow
def test_cli_defaults_to_the_runs_synthetic_corpus(tmp_path):
    torch.manual_seed(0)
    model = build_model("vovnet19slim", len(CLASSES) + 1, min_size=64, max_size=128)
    path = tmp_path / "synthetic.pth"
    config = {"backbone": "vovnet19slim", "norm": None, "min_size": [64], "max_size": 128,
              "data": None, "synthetic_pages": 2, "synthetic_train": 1, "synthetic_width": 64}
    save_checkpoint({"model": model.state_dict(), "config": config, "classes": list(CLASSES)},
                    path)
    out = tmp_path / "metrics.json"
    process = _cli(path, "--out", out, "--workers", "0", MASKDLA_CACHE=str(tmp_path / "cache"))
    assert process.returncode == 0, process.stderr
    assert set(json.loads(out.read_text())) == {"bbox", "segm", "layout"}
    assert list((tmp_path / "cache").glob("synthetic-*-p2-t1-s0-w64/test/*.jpg"))


# ------------------------------------------------------------------ RPN proposal recall


def test_best_proposal_iou_per_budget():
    from maskdla.evaluation.proposals import best_proposal_iou

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 5.0],      # half of box 0
                              [20.0, 20.0, 30.0, 30.0],   # box 1
                              [0.0, 0.0, 10.0, 10.0]])    # box 0
    best = best_proposal_iou(boxes, proposals, budgets=(1, 2, 3, 10))
    torch.testing.assert_close(best, torch.tensor([[0.5, 0.0], [0.5, 1.0], [1.0, 1.0],
                                                   [1.0, 1.0]]))
    assert best_proposal_iou(boxes, proposals[:0], budgets=(1, 2)).tolist() == [[0, 0], [0, 0]]


def test_recall_table_counts_regions_per_class():
    from maskdla.evaluation.proposals import recall_table

    square = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    images = [  # class a: one region found at 0.5 only, one at top-1; b: missed; c: none
        (torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]]),
         torch.tensor([1, 2]), torch.tensor([[0.0, 0.0, 10.0, 6.5]])),
        (square.clone(), torch.tensor([1]), torch.cat([square, square + 50])),
    ]
    table = recall_table(images, ["a", "b", "c"], budgets=(1, 2), ious=(0.5, 0.7))
    a, b, c = (table["per_class"][name] for name in "abc")
    assert a == {"regions": 2, "median_side": 10.0,
                 "recall": {"50@1": 1.0, "50@2": 1.0, "70@1": 0.5, "70@2": 0.5}}
    assert b["regions"] == 1 and b["median_side"] == 20.0
    assert set(b["recall"].values()) == {0.0}
    assert c == {"regions": 0, "median_side": None,
                 "recall": {"50@1": None, "50@2": None, "70@1": None, "70@2": None}}
    assert table["all"]["regions"] == 3
    assert table["all"]["recall"]["50@2"] == pytest.approx(2 / 3)


class _TruthAsProposals(torch.nn.Module):
    """An RPN stand-in that proposes each page's ground-truth boxes, in the dataset's order."""

    def __init__(self, dataset):
        super().__init__()
        self.boxes = [dataset[index][1]["boxes"] for index in range(len(dataset))]

    def forward(self, image_list, features):
        taken, self.boxes = self.boxes[:len(image_list.tensors)], self.boxes[len(image_list.tensors):]
        return taken, {}


def test_proposal_recall_of_a_model(corpus, tiny_model):
    from maskdla.evaluation.proposals import proposal_recall

    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    expected = {name: sum(annotation["category_id"] == category["id"]
                          for annotation in dataset.coco["annotations"])
                for category in dataset.coco["categories"] for name in [category["name"]]}
    tiny_model.train()
    table = proposal_recall(tiny_model, dataset, device="cpu")
    assert tiny_model.training  # mode restored
    assert {name: row["regions"] for name, row in table["per_class"].items()} == {
        name: expected[name] for name in CLASSES}
    for row in [*table["per_class"].values(), table["all"]]:
        values = row["recall"]
        if row["regions"]:
            assert values["50@100"] <= values["50@300"] <= values["50@1000"] <= 1
            assert values["70@1000"] <= values["50@1000"]
    # proposals that are the ground truth itself: every region is proposed
    rpn = tiny_model.rpn
    try:
        tiny_model.rpn = _TruthAsProposals(dataset)
        perfect = proposal_recall(tiny_model, dataset, device="cpu", batch_size=2)
    finally:
        tiny_model.rpn = rpn
    assert set(perfect["all"]["recall"].values()) == {1.0}
    assert perfect["all"]["regions"] == sum(expected.values()) > 0


def test_cli_proposal_recall(checkpoint, corpus, tmp_path):
    from maskdla.eval import main

    out = tmp_path / "metrics.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main([str(checkpoint), "--data", str(corpus), "--split", "train", "--device",
                     "cpu", "--workers", "0", "--no-layout", "--proposal-recall",
                     "--out", str(out)]) == 0
    proposals = json.loads(out.read_text())["proposals"]
    assert list(proposals["per_class"]) == list(CLASSES)
    assert "RPN proposal recall" in stdout.getvalue()
    for name in CLASSES:
        assert re.search(rf"^{re.escape(name)}\s+{proposals['per_class'][name]['regions']}\s",
                         stdout.getvalue(), re.M)


def test_cli_rejects_proposal_recall_without_a_model(ground_truth, tmp_path):
    results = tmp_path / "results.json"
    results.write_text("[]")
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(ground_truth))
    process = _cli("--predictions", results, "--ann", ann, "--proposal-recall")
    assert process.returncode == 2 and "--proposal-recall" in process.stderr


def test_ground_truth_of_other_classes_names_the_checkpoint_and_split(corpus, tmp_path,
                                                                      capsys):
    """It pointed to --classes and --class-map, which eval does not have."""
    from maskdla.cli import run_main
    from maskdla.eval import main

    known = [name for name in CLASSES if name != "lyrics"]
    model = build_model("vovnet19slim", len(known) + 1, min_size=64, max_size=128)
    path = tmp_path / "no_lyrics.pth"
    config = {"backbone": "vovnet19slim", "norm": None, "min_size": [64], "max_size": 128}
    save_checkpoint({"model": model.state_dict(), "config": config, "classes": known}, path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, [str(path), "--data", str(corpus), "--split", "test", "--device", "cpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"maskdla: error: {corpus / 'test'}: the ground truth (split test) has "
                     f"classes the model was not trained on: lyrics; the checkpoint {path} "
                     f"knows {', '.join(known)} (after its run's class map, if any); evaluate "
                     "on data of those classes")
    assert "--class" not in error


def test_evaluation_shows_a_progress_bar_on_stderr(corpus, tiny_model, capsys, monkeypatch):
    """Minutes without a sign of life on a large test set: a bar like predict's, on a
    terminal; none where stderr is no terminal (a log, a pipeline reading the error line)."""
    dataset = Dataset.from_folder(corpus, split="test", classes=list(CLASSES),
                                  view=View(min_size=64, max_size=128))
    capsys.readouterr()
    not_a_terminal = predict_coco_results(tiny_model, dataset, EvalSettings(batch_size=1))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    shown = predict_coco_results(tiny_model, dataset, EvalSettings(batch_size=1))
    captured = capsys.readouterr()
    # the bar starts at 0/2; leave=False clears it at the end, so the last count may not show
    assert "evaluate" in captured.err and "0/2" in captured.err and not captured.out
    quiet = predict_coco_results(tiny_model, dataset, EvalSettings(batch_size=1, progress=False))
    assert capsys.readouterr().err == "" and quiet == shown == not_a_terminal
    evaluate(tiny_model, dataset, EvalSettings(batch_size=1))
    assert "evaluate" in capsys.readouterr().err
