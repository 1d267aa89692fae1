"""The augmentation registry (maskdla/data/augment.py): the table drives the train flags,
TrainConfig's fields and checks, and the training view's transforms, which draw the same
random numbers as the Dataset's augmentation did before them."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from maskdla.config import TrainConfig
from maskdla.data.augment import (AUGMENTATIONS, AugmentSettings, apply_transforms,
                                  build_transforms, settings_of)
from maskdla.data.dataset import View
from maskdla.errors import InputError
from maskdla.train_cli import build_parser, config_from_argv


def _old_augment(image, target, hflip, brightness_contrast):
    """The Dataset's ``_augment`` before the table, as it was."""
    if hflip and torch.rand(()) < 0.5:
        width = image.shape[-1]
        image = image.flip(-1)
        target["masks"] = target["masks"].flip(-1)
        boxes = target["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
        target["boxes"] = boxes
    if brightness_contrast > 0:
        strength = brightness_contrast
        brightness, contrast = (1 + (torch.rand(2) * 2 - 1) * strength).tolist()
        mean = image.mean()
        image = ((image - mean) * contrast + mean).mul_(brightness).clamp_(0, 1)
    return image, target


def _item():
    """A 3 x 5 x 8 page with two regions: a box and its mask each."""
    image = torch.rand(3, 5, 8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, 5, 8, dtype=torch.uint8)
    masks[0, 1:3, 0:2] = 1  # columns 0..1
    masks[1, 0:5, 3:7] = 1  # columns 3..6
    target = {"boxes": torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 7.0, 5.0]]),
              "masks": masks, "labels": torch.tensor([1, 2]), "area": torch.tensor([4.0, 20.0]),
              "image_id": torch.tensor(3)}
    return image, target


def test_every_row_is_a_train_flag_and_a_config_field_with_the_rows_default():
    parser = build_parser()
    flags = {option: action for action in parser._actions for option in action.option_strings}
    fields = {item.name: item for item in dataclasses.fields(TrainConfig)}
    settings = AugmentSettings()
    for row in AUGMENTATIONS.values():
        assert row.flag in flags, row.flag
        assert flags[row.flag].dest == row.name and flags[row.flag].default == row.default
        assert row.name in fields and fields[row.name].default == row.default
        assert getattr(settings, row.name) == row.default
    assert [item.name for item in dataclasses.fields(AugmentSettings)] == list(AUGMENTATIONS)
    assert build_transforms(settings) == [] and build_transforms(TrainConfig()) == []


def test_hflip_is_reachable_from_the_command_line_and_a_replayed_config(tmp_path):
    assert config_from_argv([]).hflip is False
    config = config_from_argv(["--hflip", "--brightness-contrast", "0.2"])
    assert config.hflip is True and config.brightness_contrast == 0.2
    assert settings_of(config) == AugmentSettings(hflip=True, brightness_contrast=0.2)
    config.save(tmp_path / "config.json")
    replayed = config_from_argv(["--config", str(tmp_path / "config.json")])
    assert replayed.hflip is True and replayed.brightness_contrast == 0.2
    # an older run's config.json has no hflip: it loads, off
    values = config.to_dict()
    del values["hflip"]
    assert TrainConfig.from_dict(values).hflip is False


def test_hflip_flips_the_page_its_boxes_and_masks_together():
    (flip,) = build_transforms(AugmentSettings(hflip=True))
    flipped = 0
    for seed in range(8):
        image, target = _item()
        torch.manual_seed(seed)
        expected = bool(torch.rand(()) < 0.5)
        torch.manual_seed(seed)
        out, result = apply_transforms([flip], image.clone(), dict(target))
        assert type(out) is torch.Tensor and type(result["boxes"]) is torch.Tensor
        assert type(result["masks"]) is torch.Tensor
        if not expected:
            assert torch.equal(out, image) and torch.equal(result["boxes"], target["boxes"])
            continue
        flipped += 1
        assert torch.equal(out, image.flip(-1))
        assert torch.equal(result["masks"], target["masks"].flip(-1))
        assert result["boxes"].tolist() == [[6.0, 1.0, 8.0, 3.0], [1.0, 0.0, 5.0, 5.0]]
        for box, mask in zip(result["boxes"], result["masks"]):  # box = mask's columns
            columns = torch.nonzero(mask.any(0)).flatten()
            assert (box[0], box[2]) == (columns.min(), columns.max() + 1)
        assert result["labels"] is target["labels"] and result["area"] is target["area"]
    assert 0 < flipped < 8


@pytest.mark.parametrize("hflip", [False, True])
def test_the_transforms_draw_what_the_old_augmentation_drew(hflip):
    transforms = build_transforms(AugmentSettings(hflip=hflip, brightness_contrast=0.3))
    for seed in range(6):
        image, target = _item()
        torch.manual_seed(seed)
        old_image, old_target = _old_augment(image.clone(), dict(target), hflip, 0.3)
        old_next = torch.rand(())
        torch.manual_seed(seed)
        new_image, new_target = apply_transforms(transforms, image.clone(), dict(target))
        assert torch.equal(new_image, old_image)
        assert torch.equal(new_target["boxes"], old_target["boxes"])
        assert torch.equal(new_target["masks"], old_target["masks"])
        assert torch.equal(torch.rand(()), old_next)  # the same numbers drawn, no more


def test_brightness_contrast_factors_are_the_old_formulas():
    (jitter,) = build_transforms(AugmentSettings(brightness_contrast=0.2))
    torch.manual_seed(0)
    params = jitter.make_params([])
    torch.manual_seed(0)
    brightness, contrast = (1 + (torch.rand(2) * 2 - 1) * 0.2).tolist()
    assert params == {"brightness": brightness, "contrast": contrast}
    assert 0.8 <= brightness <= 1.2 and 0.8 <= contrast <= 1.2


@pytest.mark.parametrize("values, flag", [
    ({"brightness_contrast": 1.0}, "--brightness-contrast"),
    ({"brightness_contrast": -0.1}, "--brightness-contrast"),
    ({"brightness_contrast": float("nan")}, "--brightness-contrast"),
    ({"brightness_contrast": True}, "--brightness-contrast"),
    ({"hflip": "yes"}, "--hflip"),
    ({"hflip": 1}, "--hflip"),
])
def test_bad_values_are_an_input_error_naming_the_flag(values, flag):
    with pytest.raises(InputError, match=f"^{flag} must be"):
        TrainConfig.from_dict(values)
    name = flag[2:].replace("-", "_")
    with pytest.raises(InputError, match=f"^{name} must be"):
        AugmentSettings(**values)


def test_bad_flag_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        config_from_argv(["--brightness-contrast", "1.5"])
    assert exit_info.value.code == 2
    assert "--brightness-contrast: expected a number in [0, 1)" in capsys.readouterr().err


def test_the_test_view_never_augments(tmp_path):
    from PIL import Image

    from maskdla.data.dataset import Dataset

    Image.new("RGB", (80, 40), "white").save(tmp_path / "page.png")
    coco = {"images": [{"id": 1, "file_name": "page.png", "width": 80, "height": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 40]}],
            "categories": [{"id": 1, "name": "text"}]}
    augment = AugmentSettings(hflip=True, brightness_contrast=0.5)
    test = Dataset(coco, tmp_path, view=View(min_size=40, max_size=80, augment=augment))
    train = Dataset(coco, tmp_path, view=View(min_size=40, max_size=80, augment=augment,
                                              train=True))
    torch.manual_seed(0)
    assert all(test[0][1]["boxes"].tolist() == [[0.0, 0.0, 20.0, 40.0]] for _ in range(6))
    assert {tuple(train[0][1]["boxes"][0].tolist()) for _ in range(12)} == {
        (0.0, 0.0, 20.0, 40.0), (60.0, 0.0, 80.0, 40.0)}
