"""Layout metrics (maskdla.evaluation.layout): region matching with merges and splits,
pixel metrics and reading order on hand-built pages whose answers are worked out here, the
pixel metrics against numpy on a real page, and the eval CLI's layout block."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskdla.data.alto import read_alto, write_alto
from maskdla.data.page import Page, Region
from maskdla.data.pagexml import write_page
from maskdla.evaluation.coco import coco_metrics
from maskdla.evaluation.layout import (PageRegions, format_layout_tables, kendall_tau,
                                       layout_columns, layout_metrics, match_regions,
                                       page_counts)
from maskdla.evaluation.layout_inputs import (predictions_from_results, results_layout_metrics,
                                              truth_from_coco)

REPO = Path(__file__).resolve().parents[1]
H = W = 100


def _box(x0, y0, x1, y1):
    """Compressed RLE of the pixels x0 <= x < x1, y0 <= y < y1 of a 100 x 100 page."""
    pixels = np.zeros((H, W, 1), dtype=np.uint8, order="F")
    pixels[y0:y1, x0:x1] = 1
    return mask_utils.encode(pixels)[0]


def _page(*regions, ordered=True):
    """PageRegions of (label, (x0, y0, x1, y1)) pairs."""
    return PageRegions(H, W, labels=[label for label, _ in regions],
                       masks=[_box(*box) for _, box in regions], ordered=ordered)


def _one(truth, predicted, classes=("text",), **options):
    return layout_metrics({1: truth}, {1: predicted}, list(classes), **options)


# ------------------------------------------------------------------ regions

def test_exact_match():
    layout = _one(_page(("text", (10, 10, 60, 30))), _page(("text", (10, 10, 60, 30))))
    assert layout["region_precision"] == layout["region_recall"] == layout["region_f1"] == 100
    assert layout["merges"] == layout["splits"] == 0
    assert layout["per_class"]["text"]["pixel_iou"] == 100
    assert layout["pixel_miou"] == layout["pixel_mf1"] == 100


def test_split():
    # truth 60 x 20 = 1200 px; two halves of 28 x 20 = 560 px with a 4 px gap:
    # IoU 560 / 1200 = 0.47 each, no match; each half lies wholly inside the truth -> split
    layout = _one(_page(("text", (0, 0, 60, 20))),
                  _page(("text", (0, 0, 28, 20)), ("text", (32, 0, 60, 20))))
    c = layout["per_class"]["text"]
    assert (c["truth"], c["predicted"], c["matched"], c["splits"], c["merges"]) == (1, 2, 0, 1, 0)
    assert layout["region_f1"] == 0
    # pixels: tp 1120, fp 0, fn 80
    assert c["pixel_iou"] == pytest.approx(100 * 1120 / 1200)
    assert c["pixel_precision"] == 100
    assert c["pixel_recall"] == pytest.approx(100 * 1120 / 1200)
    assert c["pixel_f1"] == pytest.approx(100 * 2 * 1120 / (2 * 1120 + 80))


def test_merge():
    # two truth lines of 50 x 20 = 1000 px, 10 px apart; one prediction of 50 x 50 = 2500 px
    # over both: IoU 1000 / 2500 = 0.4 each, no match; it holds all of each -> one merge
    layout = _one(_page(("text", (0, 0, 50, 20)), ("text", (0, 30, 50, 50))),
                  _page(("text", (0, 0, 50, 50))))
    c = layout["per_class"]["text"]
    assert (c["truth"], c["predicted"], c["matched"], c["merges"], c["splits"]) == (2, 1, 0, 1, 0)
    assert layout["region_recall"] == 0 and layout["region_precision"] == 0
    assert c["pixel_iou"] == pytest.approx(100 * 2000 / 2500)


def test_half_covered_regions_are_no_merge():
    # the prediction holds 40 % of the second truth: below cover 0.5, no merge
    layout = _one(_page(("text", (0, 0, 50, 20)), ("text", (0, 30, 50, 50))),
                  _page(("text", (0, 0, 50, 38))))
    assert layout["merges"] == 0
    layout = _one(_page(("text", (0, 0, 50, 20)), ("text", (0, 30, 50, 50))),
                  _page(("text", (0, 0, 50, 38))), cover=0.4)
    assert layout["merges"] == 1


def test_missed_region():
    layout = _one(_page(("text", (0, 0, 50, 20)), ("text", (0, 50, 50, 70))),
                  _page(("text", (0, 0, 50, 20))))
    assert layout["region_precision"] == 100
    assert layout["region_recall"] == 50
    assert layout["region_f1"] == pytest.approx(100 * 2 * 1 / (2 + 1))


def test_false_positive():
    layout = _one(_page(("text", (0, 0, 50, 20))),
                  _page(("text", (0, 0, 50, 20)), ("text", (60, 60, 90, 90))))
    assert layout["region_precision"] == 50
    assert layout["region_recall"] == 100
    assert layout["region_f1"] == pytest.approx(200 / 3)
    # pixels: tp 1000, fp 900
    assert layout["per_class"]["text"]["pixel_precision"] == pytest.approx(100 * 1000 / 1900)


def test_a_prediction_of_another_class_does_not_match():
    layout = _one(_page(("text", (0, 0, 50, 20))), _page(("figure", (0, 0, 50, 20))),
                  classes=("text", "figure"))
    assert layout["region_f1"] == 0
    assert layout["per_class"]["text"]["region_recall"] == 0
    assert layout["per_class"]["figure"]["region_precision"] == 0
    assert layout["per_class"]["figure"]["region_recall"] is None  # no truth of that class
    assert layout["per_class"]["text"]["pixel_iou"] == layout["pixel_miou"] == 0


def test_greedy_matching_takes_the_highest_iou_first():
    iou = np.array([[0.6, 0.9],
                    [0.0, 0.7]])
    # greedy: (0, 1) at 0.9 first; truth 1 then has no free prediction above 0.5
    assert match_regions(iou, 0.5) == [(0, 1)]
    assert match_regions(iou, 0.95) == []
    assert match_regions(np.array([[0.5]]), 0.5) == [(0, 0)]  # >= match_iou


def test_match_iou_changes_what_matches():
    # IoU of the two boxes: 40 x 20 / (50 x 20) = 0.8
    truth, predicted = _page(("text", (0, 0, 50, 20))), _page(("text", (0, 0, 40, 20)))
    assert _one(truth, predicted)["region_f1"] == 100
    assert _one(truth, predicted, match_iou=0.85)["region_f1"] == 0


def test_counts_sum_over_pages_and_pixels_over_classes():
    truth = {1: _page(("text", (0, 0, 50, 20))), 2: _page(("figure", (0, 0, 10, 10)))}
    predicted = {1: _page(("text", (0, 0, 50, 20)))}  # page 2: nothing predicted
    layout = layout_metrics(truth, predicted, ["text", "figure"])
    assert (layout["region_precision"], layout["region_recall"]) == (100, 50)
    assert layout["per_class"]["figure"]["pixel_iou"] == 0
    assert layout["pixel_miou"] == 50  # (100 + 0) / 2
    assert [page["image_id"] for page in layout["pages"]] == [2, 1]  # worst first
    assert layout["pages"][0]["region_f1"] == 0


def test_overlapping_regions_of_a_class_count_their_pixels_once():
    # two overlapping truth regions of one class: the class map is their union (1500 px)
    layout = _one(_page(("text", (0, 0, 50, 20)), ("text", (0, 10, 50, 30))),
                  _page(("text", (0, 0, 50, 30))))
    assert layout["per_class"]["text"]["pixel_iou"] == 100


def test_a_page_without_regions_scores_full_marks():
    layout = _one(_page(), _page())
    assert layout["pages"][0]["region_f1"] == 100
    assert layout["region_f1"] is None and layout["pixel_miou"] is None


# ------------------------------------------------------------------ reading order

LINES = [("text", (0, 10 * k, 50, 10 * k + 8)) for k in range(4)]


def test_reversed_reading_order_is_minus_one():
    layout = _one(_page(*LINES), _page(*LINES[::-1]))
    assert layout["region_f1"] == 100
    assert layout["reading_order_tau"] == -1
    assert layout["pages"][0]["reading_order_tau"] == -1


def test_same_order_is_one_and_one_swap_is_hand_computed():
    assert _one(_page(*LINES), _page(*LINES))["reading_order_tau"] == 1
    swapped = [LINES[0], LINES[2], LINES[1], LINES[3]]
    # 6 pairs, 1 discordant: (5 - 1) / 6
    assert _one(_page(*LINES), _page(*swapped))["reading_order_tau"] == pytest.approx(4 / 6)


def test_reading_order_uses_matched_regions_only_and_needs_two():
    # only lines 0 and 3 are predicted (in reverse): tau of 2 matches = -1
    assert _one(_page(*LINES), _page(LINES[3], LINES[0]))["reading_order_tau"] == -1
    one_match = _one(_page(*LINES), _page(LINES[2]))
    assert one_match["reading_order_tau"] is None and one_match["reading_order_pages"] == 0
    unordered = _one(_page(*LINES, ordered=False), _page(*LINES[::-1]))
    assert unordered["reading_order_tau"] is None


def test_kendall_tau_by_hand():
    assert kendall_tau([0, 1, 2], [0, 1, 2]) == 1
    assert kendall_tau([0, 1, 2], [2, 1, 0]) == -1
    assert kendall_tau([0, 1, 2, 3], [1, 0, 3, 2]) == pytest.approx((4 - 2) / 6)
    assert kendall_tau([0], [0]) is None


def test_results_are_ordered_top_to_bottom_and_thresholded():
    gt = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
          "categories": [{"id": 3, "name": "text"}], "annotations": []}

    def result(score, box):
        rle = _box(*box)
        return {"image_id": 1, "category_id": 3, "score": score,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}

    results = [result(0.9, (0, 50, 50, 60)), result(0.8, (0, 0, 50, 10)),
               result(0.2, (0, 80, 50, 90))]
    pages = predictions_from_results(results, gt, score_thresh=0.5)
    assert [mask_utils.toBbox(m)[1] for m in pages[1].masks] == [0, 50]


def test_tables_and_report_columns():
    layout = _one(_page(*LINES), _page(*LINES[:3]))
    text = format_layout_tables(layout, worst=1)
    assert "| text | 4 | 3 | 3 | 100.00 | 75.00 | 85.71 |" in text
    assert "Kendall's tau 1.000" in text and "Worst 1 pages" in text
    assert layout_columns({"layout": layout}) == {"Region F1": "85.71", "Pixel mIoU": "75.00"}
    assert layout_columns({"bbox": {}, "segm": {}}) == {}


def test_page_sizes_must_agree():
    with pytest.raises(ValueError, match="sizes differ"):
        page_counts(_page(), PageRegions(50, 50), ["text"])


# ------------------------------------------------------------------ a real page

def _shared_folder():
    for root in (REPO.parent / "shared", REPO.parents[1] / "shared"):
        if (root / "realdata" / "htromance").is_dir():
            return root / "realdata" / "htromance"
    return None


def read_alto_blocks(path):
    """(width, height, [(label, polygon [(x, y)...])]) of an ALTO file's regions."""
    page = read_alto(path)
    return page.width, page.height, [(region.label, region.polygon) for region in page.regions]


def _real_page():
    folder = _shared_folder()
    if folder is None:
        pytest.skip("../shared/realdata/htromance is not there")
    return folder / "test" / "htrlat__bnf-lat-12449__btv1b100342534-f196.xml"


def _polygon_mask(polygon, height, width):
    flat = [c for point in polygon for c in point]
    return mask_utils.merge(mask_utils.frPyObjects([flat], height, width))


def test_pixel_metrics_equal_numpy_on_a_real_page():
    width, height, blocks = read_alto_blocks(_real_page())
    assert len(blocks) >= 10
    classes = sorted({label for label, _ in blocks})
    truth = PageRegions(height, width, labels=[label for label, _ in blocks],
                        masks=[_polygon_mask(polygon, height, width) for _, polygon in blocks])
    # the prediction: every region shifted 9 px right and 5 px down, the third one missing,
    # the fifth one relabelled as the first class
    shifted = [(label if k != 4 else classes[0], [(x + 9, y + 5) for x, y in polygon])
               for k, (label, polygon) in enumerate(blocks) if k != 2]
    predicted = PageRegions(height, width, labels=[label for label, _ in shifted],
                            masks=[_polygon_mask(p, height, width) for _, p in shifted])
    layout = layout_metrics({1: truth}, {1: predicted}, classes)

    def class_map(regions, name):
        planes = [mask_utils.decode(m).astype(bool) for label, m in
                  zip(regions.labels, regions.masks) if label == name]
        return np.any(planes, axis=0) if planes else np.zeros((height, width), bool)

    ious = []
    for name in classes:
        t, p = class_map(truth, name), class_map(predicted, name)
        tp, fp, fn = (t & p).sum(), (~t & p).sum(), (t & ~p).sum()
        figures = layout["per_class"][name]
        assert figures["pixel_iou"] == pytest.approx(100 * tp / (tp + fp + fn), abs=1e-9)
        assert figures["pixel_precision"] == pytest.approx(100 * tp / (tp + fp), abs=1e-9)
        assert figures["pixel_recall"] == pytest.approx(100 * tp / (tp + fn), abs=1e-9)
        assert figures["pixel_f1"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn), abs=1e-9)
        ious.append(100 * tp / (tp + fp + fn))
    assert layout["pixel_miou"] == pytest.approx(np.mean(ious), abs=1e-9)
    assert layout["per_class"][classes[0]]["truth"] == sum(
        label == classes[0] for label, _ in blocks)


# ------------------------------------------------------------------ the command line

def _cli(*args, cwd=REPO):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "maskdla.eval", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def boxes_gt(tmp_path):
    """A COCO ground truth of two 96 x 128 pages (with their images) and its file."""
    images = [{"id": i, "file_name": f"p{i}.png", "height": 128, "width": 96} for i in (1, 2)]
    boxes = [(1, 1, (4, 8, 88, 40)), (1, 2, (4, 52, 88, 20)), (2, 1, (2, 2, 90, 60))]
    annotations = [{"id": k, "image_id": image_id, "category_id": category, "iscrowd": 0,
                    "bbox": [x, y, w, h], "area": float(w * h),
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
                   for k, (image_id, category, (x, y, w, h)) in enumerate(boxes, 1)]
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "staff"}, {"id": 2, "name": "lyrics"}]}
    for image in images:
        Image.new("RGB", (96, 128), (250, 245, 230)).save(tmp_path / image["file_name"])
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return gt, path


#: prediction formats --predictions reads: (output folder, writer(page, path))
PREDICTION_WRITERS = {"page": ("page", write_page), "alto": ("alto", write_alto)}


@pytest.mark.parametrize("prediction_format", sorted(PREDICTION_WRITERS))
def test_cli_scores_page_predictions_and_draws_the_worst(boxes_gt, tmp_path, prediction_format):
    gt, gt_path = boxes_gt
    subfolder, writer = PREDICTION_WRITERS[prediction_format]
    # page 1 predicted exactly; page 2's region predicted as two halves (a split)
    pages = {1: [("staff", (4, 8, 88, 40)), ("lyrics", (4, 52, 88, 20))],
             2: [("staff", (2, 2, 44, 60)), ("staff", (48, 2, 44, 60))]}
    folder = tmp_path / "pred" / subfolder
    folder.mkdir(parents=True)
    for image_id, regions in pages.items():
        page = Page(image_filename=f"p{image_id}.png", width=96, height=128)
        page.regions = [Region(id=f"r{k}", kind="TextRegion", label=label, score=0.9,
                               polygon=[(x, y), (x + w, y), (x + w, y + h), (x, y + h)])
                        for k, (label, (x, y, w, h)) in enumerate(regions)]
        writer(page, folder / f"p{image_id}.xml")
    out = tmp_path / "metrics.json"
    process = _cli("--predictions", tmp_path / "pred", "--ann", gt_path, "--out", out,
                   "--worst", 1)
    assert process.returncode == 0, process.stderr
    assert "| Segmentation |" in process.stdout and "Worst 2 pages" in process.stdout
    layout = json.loads(out.read_text())["layout"]
    assert layout["per_class"]["staff"]["splits"] == 1
    assert layout["region_recall"] == pytest.approx(100 * 2 / 3)
    assert layout["region_precision"] == pytest.approx(100 * 2 / 4)
    assert layout["pages"][0]["name"] == "p2.png"
    drawn = list((tmp_path / "worst").iterdir())
    assert [p.name for p in drawn] == ["001_p2.jpg"]
    assert Image.open(drawn[0]).size == (2 * 96, 128)


def test_cli_writes_the_layout_of_a_results_file(boxes_gt, tmp_path):
    gt, gt_path = boxes_gt
    results = []
    for annotation in gt["annotations"]:
        rle = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], 128, 96))
        results.append({"image_id": annotation["image_id"], "score": 0.7,
                        "category_id": annotation["category_id"], "bbox": annotation["bbox"],
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    process = _cli("--predictions", results_path, "--ann", gt_path, "--out", out,
                   "--match-iou", "0.7")
    assert process.returncode == 0, process.stderr
    written = json.loads(out.read_text())
    expected = {**coco_metrics(gt, results),
                "layout": results_layout_metrics(gt, results, match_iou=0.7)}
    assert written == json.loads(json.dumps(expected))
    assert written["layout"]["region_f1"] == 100 and written["layout"]["reading_order_tau"] == 1
    no_layout = _cli("--predictions", results_path, "--ann", gt_path, "--out", out,
                     "--no-layout")
    assert no_layout.returncode == 0 and "layout" not in json.loads(out.read_text())


def test_cli_rejects_a_page_prediction_of_an_unknown_image(boxes_gt, tmp_path):
    _, gt_path = boxes_gt
    page = Page(image_filename="other.png", width=96, height=128)
    write_page(page, tmp_path / "other.xml")
    process = _cli("--predictions", tmp_path / "other.xml", "--ann", gt_path)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "other.xml" in process.stderr and "not an image of the ground truth" in process.stderr


def test_cli_rejects_a_page_prediction_of_an_unknown_class(boxes_gt, tmp_path):
    _, gt_path = boxes_gt
    page = Page(image_filename="p1.png", width=96, height=128)
    page.regions = [Region(id="r1", kind="TextRegion", label="marginalia",
                           polygon=[(1, 1), (40, 1), (40, 30), (1, 30)])]
    write_page(page, tmp_path / "p1.xml")
    process = _cli("--predictions", tmp_path / "p1.xml", "--ann", gt_path)
    assert process.returncode == 2 and process.stderr.count("\n") == 1
    assert "p1.xml" in process.stderr and "marginalia" in process.stderr


def test_cli_rejects_a_worst_folder_that_is_a_file(boxes_gt, tmp_path):
    _, gt_path = boxes_gt
    blocker = tmp_path / "taken"
    blocker.write_text("")
    process = _cli("--predictions", tmp_path / "x.json", "--ann", gt_path, "--worst", 2,
                   "--worst-dir", blocker)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert "taken" in process.stderr and "not a folder" in process.stderr


def test_cli_rejects_a_bad_match_iou(boxes_gt, tmp_path):
    _, gt_path = boxes_gt
    process = _cli("--predictions", tmp_path / "x.json", "--ann", gt_path, "--match-iou", "1.5")
    assert process.returncode == 2 and "--match-iou" in process.stderr


def test_truth_keeps_annotation_order(boxes_gt):
    gt, _ = boxes_gt
    truth = truth_from_coco(gt)
    assert truth[1].labels == ["staff", "lyrics"] and truth[1].name == "p1.png"


def test_report_shows_region_f1_and_pixel_miou_beside_ap(tmp_path):
    from maskdla.report import load_run, quality_table

    figures = {"AP": 50.0, "AP50": 80.0, "AP75": 40.0, "APs": -1.0, "APm": 30.0, "APl": 55.0,
               "AR": 60.0, "per_class": {}}
    layout = _one(_page(*LINES), _page(*LINES[:3]))
    runs = []
    for name, backbone, metrics in (
            ("a", "resnet50", {"bbox": figures, "segm": figures, "layout": layout}),
            ("b", "vovnet39", {"bbox": figures, "segm": figures})):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"backbone": backbone}))
        (folder / "metrics.json").write_text(json.dumps(metrics))
        runs.append(load_run(folder))
    table = quality_table(runs).to_markdown()
    assert "| AP | AP50 | AP75 | APm | APl | Region F1 | Pixel mIoU |" in table
    assert "| resnet50 | Segmentation | 50.00 | 80.00 | 40.00 | 30.00 | 55.00 | 85.71 | 75.00 |" in table
    assert "| resnet50 | Bounding Box | 50.00 | 80.00 | 40.00 | 30.00 | 55.00 | n/a | n/a |" in table
    assert "| vovnet39 | Segmentation | 50.00 | 80.00 | 40.00 | 30.00 | 55.00 | n/a | n/a |" in table
