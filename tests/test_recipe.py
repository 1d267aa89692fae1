"""The training-recipe levers: class-balanced (repeat-factor) sampling and specks."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from maskdla.config import TrainConfig
from maskdla.data.dataset import Dataset, View
from maskdla.data.samplers import EpochBatches, RepeatFactorSampler, repeat_factors
from maskdla.errors import InputError
from maskdla.evaluation.coco import coco_metrics


def test_repeat_factors_follow_lvis():
    # class 2 on 2 of 10 pages: r = sqrt(0.5 / 0.2); class 1 everywhere: r = 1
    labels = [{1}] * 8 + [{1, 2}] * 2 + [set()]
    factors = repeat_factors(labels, 0.5)
    assert factors[:8] == [1.0] * 8
    assert factors[8] == factors[9] == pytest.approx(math.sqrt(0.5 / (2 / 11)))
    assert factors[10] == 1.0  # a page without regions
    with pytest.raises(ValueError):
        repeat_factors(labels, 0.0)


def test_repeat_factor_sampler_keeps_the_epoch_and_favours_rare_pages():
    labels = [{1}] * 8 + [{1, 2}] * 2
    sampler = RepeatFactorSampler(labels, 1.0, seed=3)
    seen = Counter()
    for epoch in range(400):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 10  # the schedule's iterations do not change
        seen.update(drawn)
    sampler.set_epoch(5)
    assert list(sampler) == list(sampler)  # reproducible by seed and epoch
    rare, common = seen[8] + seen[9], sum(seen[i] for i in range(8))
    # expected share of a rare page: r / sum(r) with r = sqrt(5) against 1
    expected = 2 * math.sqrt(5) / (8 + 2 * math.sqrt(5))
    assert rare / (rare + common) == pytest.approx(expected, abs=0.02)


def test_repeat_factor_sampler_splits_ranks():
    labels = [{1}] * 6 + [{2}]
    shares = [RepeatFactorSampler(labels, 0.5, seed=0, rank=rank, world_size=2)
              for rank in range(2)]
    for share in shares:
        share.set_epoch(1)
    drawn = [list(share) for share in shares]
    assert [len(d) for d in drawn] == [4, 4]
    whole = RepeatFactorSampler(labels, 0.5, seed=0)
    whole.total = 8
    whole.set_epoch(1)
    order = list(whole)
    assert drawn[0] == order[0::2] and drawn[1] == order[1::2]


def _page(folder: Path) -> dict:
    Image.new("RGB", (400, 200), "white").save(folder / "page.jpg")
    square = lambda x, y, side: [[x, y, x + side, y, x + side, y + side, x, y + side]]
    return {"images": [{"id": 1, "file_name": "page.jpg", "width": 400, "height": 200}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 6400,
                 "bbox": [10, 10, 80, 80], "segmentation": square(10, 10, 80)},
                # 6 px at the original size, 3 px at the 100 px test size: a speck
                {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 36,
                 "bbox": [300, 100, 6, 6], "segmentation": square(300, 100, 6)}],
            "categories": [{"id": 1, "name": "text"}]}


def test_specks_leave_the_targets_and_are_ignored_by_the_scorer(tmp_path):
    coco = _page(tmp_path)
    plain = Dataset(coco, tmp_path, view=View(min_size=(50, 100), max_size=1000, train=True))
    assert plain.specks == 0 and len(plain[0][1]["boxes"]) == 2
    dataset = Dataset(coco, tmp_path, view=View(min_size=(50, 100), max_size=1000, train=True,
                                                min_region_size=4))
    assert dataset.specks == 1
    assert len(dataset[0][1]["boxes"]) == 1 and dataset.image_labels() == [{1}]
    assert [a["iscrowd"] for a in dataset.coco["annotations"]] == [0, 1]
    # a detection of the big region only: a miss of the speck without the threshold,
    # nothing missed with it
    found = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 80, 80], "score": 0.9}]
    missed = coco_metrics(plain.coco, found, iou_types=["bbox"])["bbox"]
    ignored = coco_metrics(dataset.coco, found, iou_types=["bbox"])["bbox"]
    assert missed["AR"] == pytest.approx(50.0, abs=0.5)
    assert ignored["AP"] == pytest.approx(100.0) and ignored["AR"] == pytest.approx(100.0)


def test_epoch_batches_take_the_repeat_threshold(tmp_path):
    dataset = Dataset(_page(tmp_path), tmp_path, view=View(min_size=100, max_size=1000))
    batches = EpochBatches(dataset, 1, seed=0, repeat_threshold=0.5)
    assert isinstance(batches.batches.sampler, RepeatFactorSampler)
    assert list(batches) == [[0]]


@pytest.mark.parametrize("field, value", [("repeat_threshold", 1.5), ("repeat_threshold", -0.1),
                                          ("min_region_size", -1.0)])
def test_recipe_settings_are_validated(field, value):
    with pytest.raises(InputError, match=field.replace("_", "-")):
        TrainConfig(**{field: value}).validate()
