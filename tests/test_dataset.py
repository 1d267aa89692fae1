"""The training Dataset: targets at training size, masks against full-size rasterisation,
negatives, COCO vs folder input, augmentations, the grouped batch sampler, bad images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from maskdla.data.coco import folder_to_coco
from maskdla.data.augment import AugmentSettings
from maskdla.data.dataset import (Dataset, GroupedBatchSampler, View, aspect_ratio_groups,
                                  collate_fn, training_size)
from maskdla.data.synthetic import generate_corpus
from maskdla.errors import InputError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Two train and one test page, 1000 px wide: lyrics lines are ~10 px high at the
    400 px training size used below, about as thin as the study's at 800 px."""
    return generate_corpus(tmp_path_factory.mktemp("ds") / "data", pages=3, train=2, seed=4,
                           width=1000)


def _coco_file(folder: Path, coco: dict) -> Path:
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


def _blank_page(folder: Path, name: str, size=(300, 200)) -> None:
    Image.new("RGB", size, (220, 200, 170)).save(folder / name, quality=90)


def test_training_size_is_a_fixed_point():
    for height, width in ((3900, 2700), (2700, 3900), (1444, 1000), (801, 800), (100, 5000)):
        size = training_size(height, width, 800, 1333)
        assert training_size(*size, 800, 1333) == size
    assert training_size(3900, 2700, 800, 1333) == (1156, 800)
    assert training_size(1000, 4000, 800, 1333) == (333, 1333)


def test_item_shapes_and_types(corpus):
    dataset = Dataset.from_folder(corpus, "train", view=View(min_size=400, max_size=1333))
    assert len(dataset) == 2
    assert dataset.classes == ["drop-capital", "lyrics", "staff"]
    assert dataset.aspect_ratios() == [1000 / 1444] * 2
    image, target = dataset[0]
    height, width = training_size(1444, 1000, 400, 1333)
    assert image.shape == (3, height, width) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.is_contiguous()
    count = len(target["labels"])
    assert 14 <= count <= 28
    assert target["boxes"].shape == (count, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].dtype == torch.int64
    assert set(target["labels"].tolist()) <= {1, 2, 3}
    assert target["masks"].shape == (count, height, width) and target["masks"].dtype == torch.uint8
    assert target["area"].shape == (count,) and target["iscrowd"].tolist() == [0] * count
    assert target["image_id"].ndim == 0 and target["image_id"].dtype == torch.int64
    assert target["orig_size"].tolist() == [1444, 1000]
    assert {a["image_id"] for a in dataset.coco["annotations"]} == \
        {image["id"] for image in dataset.coco["images"]}
    # every box holds its mask, and the area is the mask's
    for box, mask, area in zip(target["boxes"], target["masks"], target["area"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert float(area) == len(xs) > 0
        assert box[0] - 1 <= xs.min() and xs.max() <= box[2] + 1
        assert box[1] - 1 <= ys.min() and ys.max() <= box[3] + 1


def test_masks_agree_with_full_size_rasterisation(corpus):
    """IoU > 0.95 per instance against the polygon drawn at full size, then resized
    (nearest, pixel centres)."""
    dataset = Dataset.from_folder(corpus, "train", view=View(min_size=400))
    checked = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = image.shape[1:]
        info = dataset.coco["images"][index]
        annotations = [a for a in dataset.coco["annotations"] if a["image_id"] == info["id"]]
        assert len(annotations) == len(target["masks"])
        for annotation, mask in zip(annotations, target["masks"].numpy().astype(bool)):
            full = Image.new("L", (info["width"], info["height"]), 0)
            for polygon in annotation["segmentation"]:
                ImageDraw.Draw(full).polygon(polygon, fill=255)
            reference = np.asarray(full.resize((width, height), Image.NEAREST)) > 0
            iou = (mask & reference).sum() / (mask | reference).sum()
            assert iou > 0.95, (index, annotation["id"], iou)
            checked += 1
    assert checked >= 28


def test_from_coco_and_from_folder_give_the_same_targets(corpus, tmp_path):
    split = corpus / "train"
    coco, _ = folder_to_coco(split)
    ann = _coco_file(tmp_path, coco)
    from_folder = Dataset.from_folder(corpus, "train", view=View(min_size=300))
    from_coco = Dataset.from_coco(ann, split, view=View(min_size=300))
    assert from_coco.classes == from_folder.classes
    assert len(from_coco) == len(from_folder)
    for index in range(len(from_folder)):
        image_a, target_a = from_folder[index]
        image_b, target_b = from_coco[index]
        assert torch.equal(image_a, image_b)
        assert target_a.keys() == target_b.keys()
        for key in target_a:
            assert torch.equal(target_a[key], target_b[key]), key


def test_classes_order_and_class_map(corpus, tmp_path):
    split = corpus / "train"
    ann = _coco_file(tmp_path, folder_to_coco(split)[0])
    ordered = Dataset.from_coco(ann, split, classes=["staff", "lyrics", "drop-capital"],
                                view=View(min_size=200))
    _, target = ordered[0]
    by_name = Dataset.from_coco(ann, split, view=View(min_size=200))
    _, reference = by_name[0]
    remap = {1: 3, 2: 2, 3: 1}  # sorted names -> the given order
    assert target["labels"].tolist() == [remap[label] for label in reference["labels"].tolist()]
    assert ordered.coco["categories"][0] == {"id": 1, "name": "staff"}
    merged = Dataset.from_coco(ann, split, class_map={"drop-capital": "lyrics", "staff": None},
                               view=View(min_size=200))
    assert merged.classes == ["lyrics"]
    _, target = merged[0]
    assert set(target["labels"].tolist()) == {1}
    assert len(target["labels"]) == len(reference["labels"]) - (reference["labels"] == 3).sum()
    with pytest.raises(InputError, match="staff"):
        Dataset.from_coco(ann, split, classes=["lyrics", "drop-capital"])


def test_pages_without_regions_are_negatives(tmp_path):
    _blank_page(tmp_path, "empty.jpg")
    _blank_page(tmp_path, "full.jpg")
    coco = {"images": [{"id": 7, "file_name": "empty.jpg", "width": 300, "height": 200},
                       {"id": 8, "file_name": "full.jpg", "width": 300, "height": 200}],
            "annotations": [{"id": 1, "image_id": 8, "category_id": 1, "iscrowd": 0,
                             "segmentation": [[10, 10, 200, 10, 200, 100, 10, 100]]},
                            # less than a pixel at the training size: dropped
                            {"id": 2, "image_id": 8, "category_id": 1, "iscrowd": 0,
                             "segmentation": [[250, 150, 251, 150, 251, 190, 250, 190]]}],
            "categories": [{"id": 1, "name": "text"}]}
    dataset = Dataset(coco, tmp_path, view=View(min_size=100, max_size=1000))
    assert len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (3, 100, 150)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 100, 150)
    assert target["labels"].shape == (0,) and int(target["image_id"]) == 7
    _, target = dataset[1]
    assert target["labels"].tolist() == [1]
    assert target["boxes"].tolist() == [[5.0, 5.0, 100.0, 50.0]]
    images, targets = collate_fn([dataset[0], dataset[1]])
    assert len(images) == len(targets) == 2


def test_multi_scale_flip_and_brightness(corpus):
    dataset = Dataset.from_folder(corpus, "train", view=View(
        min_size=(200, 300), max_size=1333, train=True,
        augment=AugmentSettings(hflip=True, brightness_contrast=0.3)))
    plain = Dataset.from_folder(corpus, "train", view=View(min_size=300))
    assert plain.min_sizes == (300,)
    torch.manual_seed(0)
    sizes = set()
    flipped = 0
    for _ in range(12):
        image, target = dataset[0]
        sizes.add(image.shape[-1])
        assert 0 <= image.min() and image.max() <= 1
        for box, mask in zip(target["boxes"], target["masks"]):
            xs = torch.nonzero(mask.any(0)).flatten()
            assert box[0] - 1 <= xs.min() and xs.max() <= box[2] + 1
        if image.shape[-1] == 300:
            _, reference = plain[0]
            flipped += torch.equal(target["masks"], reference["masks"].flip(-1))
    assert sizes == {200, 300}
    assert flipped > 0
    _, target = plain[0]  # train=False: the first region (a staff or capital) is left
    assert target["boxes"][0, 0] < 60


def test_cache_returns_the_same_items(corpus):
    dataset = Dataset.from_folder(corpus, "test", view=View(min_size=200, cache=True))
    first = dataset[0]
    assert len(dataset._cache) == 1
    second = dataset[0]
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1]["masks"], second[1]["masks"])


def test_loader_with_workers(corpus):
    dataset = Dataset.from_folder(corpus, "train", view=View(min_size=128))
    sampler = GroupedBatchSampler(RandomSampler(dataset),
                                  aspect_ratio_groups(dataset.aspect_ratios()), 2)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=1)
    batches = list(loader)
    assert len(batches) == 1
    images, targets = batches[0]
    assert len(images) == 2 and {int(t["image_id"]) for t in targets} == {1, 2}


def test_aspect_ratio_groups():
    assert aspect_ratio_groups([0.69, 1.0, 1.44, 0.5]) == [1, 0, 0, 1]
    groups = aspect_ratio_groups([0.3, 0.69, 1.0, 1.44, 3.0], bins=1)
    assert groups == sorted(groups) and groups[0] == 0 and groups[-1] == 3


def test_grouped_sampler_with_distributed_sampler():
    ratios = [0.7 if i % 3 else 1.4 for i in range(23)]
    groups = aspect_ratio_groups(ratios)
    epochs = []
    for epoch in range(2):
        seen = set()
        orders = []
        for rank in range(2):
            sampler = GroupedBatchSampler(
                DistributedSampler(range(23), num_replicas=2, rank=rank, shuffle=True, seed=1),
                groups, batch_size=3)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler) == 4  # ceil(12 / 3)
            for batch in batches:
                assert len(batch) == 3
                assert len({groups[i] for i in batch}) == 1
            seen |= {i for batch in batches for i in batch}
            orders.append(batches)
        assert len(seen) >= 20  # the ranks share the data; a few leftovers may wait
        epochs.append(orders)
    assert epochs[0] != epochs[1]  # set_epoch reaches the DistributedSampler


def test_missing_and_unreadable_images(corpus, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(corpus / "train", copy / "train")
    ann = _coco_file(tmp_path, folder_to_coco(copy / "train")[0])
    (copy / "train" / "synth-0002.jpg").unlink()
    with pytest.raises(InputError, match="synth-0002.jpg.*not found"):
        Dataset.from_folder(copy, "train")
    with pytest.raises(InputError, match="synth-0002.jpg.*not found"):
        Dataset.from_coco(ann, copy / "train")
    (copy / "train" / "synth-0002.jpg").write_bytes(b"not a jpeg")
    dataset = Dataset.from_coco(ann, copy / "train", view=View(min_size=100))
    dataset[0]
    with pytest.raises(InputError, match="synth-0002.jpg: cannot read the image"):
        dataset[1]
    with pytest.raises(InputError, match="no such dataset folder"):
        Dataset.from_folder(copy, "test")


def test_exif_orientation_is_applied(tmp_path):
    """Stored 200 wide x 300 high, shown rotated (EXIF 6): annotations are 300x200."""
    stored = Image.new("RGB", (200, 300), (255, 255, 255))
    ImageDraw.Draw(stored).rectangle([0, 0, 199, 49], fill=(0, 0, 0))  # stored top band
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    coco = {"images": [{"id": 1, "file_name": "rotated.jpg", "width": 300, "height": 200}],
            "annotations": [], "categories": [{"id": 1, "name": "text"}]}
    image, _ = Dataset(coco, tmp_path, view=View(min_size=100))[0]
    assert image.shape == (3, 100, 150)
    # orientation 6 turns the stored top band into the right edge
    assert image[:, :, -10:].mean() < 0.1 and image[:, :, :100].mean() > 0.9


def _noisy_page(size=(540, 780), mode="RGB") -> Image.Image:
    """A page with detail at every scale, so a decoder that skips work shows."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (size[1] // 20, size[0] // 20, 3), dtype=np.uint8)
    page = Image.fromarray(pixels).resize(size, Image.BICUBIC)
    ImageDraw.Draw(page).line([(0, 0), size], fill=(0, 0, 0), width=3)
    return page.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_decoders_agree(tmp_path, monkeypatch, mode):
    """simplejpeg (straight into an array) and PIL's draft pick the same DCT scale and give
    the same pixels, for colour and grey JPEG, at 1/1 (up- and unscaled), 1/2 and 1/4 scale."""
    from maskdla.data import dataset as dataset_module

    path = tmp_path / "page.jpg"
    _noisy_page(mode=mode).save(path, quality=90)
    used = []
    direct = dataset_module._decode_jpeg_direct
    monkeypatch.setattr(dataset_module, "_decode_jpeg_direct",
                        lambda *args: used.append(1) or direct(*args))
    for width, height in [(800, 1156), (540, 780), (300, 433), (200, 289), (100, 144)]:
        fast = dataset_module.decode_image(path, width, height, (540, 780))
        with monkeypatch.context() as patch:
            patch.setattr(dataset_module, "simplejpeg", None)
            slow = dataset_module.decode_image(path, width, height, (540, 780))
        assert fast.shape == slow.shape == (3, height, width) and fast.dtype == torch.uint8
        assert (fast.int() - slow.int()).abs().max() <= 2, (width, height)
    assert len(used) == 10  # the fast path was tried every time


def test_power_of_two_dct_factor():
    from maskdla.data.dataset import _power_of_two_factor

    assert _power_of_two_factor((2700, 3900), (800, 1156)) == 2
    assert _power_of_two_factor((2700, 3900), (675, 975)) == 4
    assert _power_of_two_factor((2700, 3900), (300, 433)) == 8  # never below 1/8
    assert _power_of_two_factor((2700, 3900), (2700, 3900)) == 1
    assert _power_of_two_factor((1000, 3900), (800, 1156)) == 1  # the narrower side decides
    assert _power_of_two_factor((540, 780), (800, 1156)) == 1  # upsampled after decoding


def test_jpeg_that_simplejpeg_refuses_goes_to_pil(tmp_path):
    """Stray bytes before a marker: libjpeg warns, simplejpeg (strict) refuses, PIL decodes;
    a truncated file is an error either way; CMYK goes to PIL, which knows Adobe's kind."""
    from maskdla.data import dataset as dataset_module

    page = _noisy_page()
    clean = tmp_path / "clean.jpg"
    page.save(clean, quality=90)
    data = clean.read_bytes()
    scan = data.index(b"\xff\xda")  # start of scan: junk before it is a recoverable error
    stray = tmp_path / "stray.jpg"
    stray.write_bytes(data[:scan] + b"\x00\x00" + data[scan:])
    assert dataset_module._decode_jpeg_direct(stray, (540, 780), (270, 390)) is None
    decoded = dataset_module.decode_image(stray, 270, 390, (540, 780))
    expected = dataset_module.decode_image(clean, 270, 390, (540, 780))
    assert (decoded.int() - expected.int()).abs().max() <= 2

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="truncated.jpg: cannot read the image"):
        dataset_module.decode_image(truncated, 270, 390, (540, 780))

    cmyk = tmp_path / "cmyk.jpg"
    page.convert("CMYK").save(cmyk, quality=95)
    decoded = dataset_module.decode_image(cmyk, 270, 390, (540, 780))
    assert (decoded.float() - expected.float()).abs().mean() < 8


def test_image_size_must_match_its_annotations(tmp_path):
    _blank_page(tmp_path, "page.jpg", size=(300, 200))
    coco = {"images": [{"id": 1, "file_name": "page.jpg", "width": 200, "height": 300}],
            "annotations": [], "categories": [{"id": 1, "name": "text"}]}
    with pytest.raises(InputError, match="page.jpg: image is 300x200 px"):
        Dataset(coco, tmp_path, view=View(min_size=100))[0]


def test_rle_and_box_only_annotations(tmp_path):
    """COCO files may store masks as RLE or give only a bbox; both become instances."""
    from pycocotools import mask as mask_utils

    _blank_page(tmp_path, "page.jpg", size=(300, 200))
    full = np.zeros((200, 300), dtype=np.uint8, order="F")
    full[20:120, 30:230] = 1
    rle = mask_utils.encode(full)
    rle["counts"] = rle["counts"].decode("ascii")
    square = [[30, 20, 229, 20, 229, 119, 30, 119]]
    coco = {"images": [{"id": 1, "file_name": "page.jpg", "width": 300, "height": 200}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle},
                {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": square},
                {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0,
                 "bbox": [30, 20, 199, 99]}],
            "categories": [{"id": 1, "name": "text"}]}
    _, target = Dataset(coco, tmp_path, view=View(min_size=100, max_size=1000))[0]
    masks = target["masks"].bool()
    assert masks.shape == (3, 100, 150)
    for other in (1, 2):
        iou = (masks[0] & masks[other]).sum() / (masks[0] | masks[other]).sum()
        assert iou > 0.95
    assert torch.allclose(target["boxes"][0], target["boxes"][1], atol=0.6)


def _grey_ramp(size=(300, 200)) -> np.ndarray:
    """A 16-bit greyscale page: dark text band on the left, paper (~90 % white) elsewhere."""
    samples = np.full((size[1], size[0]), 59000, np.uint16)
    samples[:, : size[0] // 3] = 6000
    return samples


@pytest.mark.parametrize("name, mode", [("page.png", "I;16"), ("page.tif", "I;16"),
                                        ("page.tif", "I;16B"), ("page.tif", "I")])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, name, mode):
    """PIL's I;16 -> RGB conversion clips every sample above 255: a white page. The
    Dataset (and prediction, the same decoder) scale 16 bits to 8."""
    samples = _grey_ramp()
    if mode == "I;16B":  # big-endian samples, as many scanners write TIFF
        image = Image.frombytes(mode, (300, 200), samples.astype(">u2").tobytes())
    else:
        image = Image.fromarray(samples if mode == "I;16" else samples.astype(np.int32))
    image.save(tmp_path / name)
    with Image.open(tmp_path / name) as opened:
        assert opened.mode == mode
    coco = {"images": [{"id": 1, "file_name": name, "width": 300, "height": 200}],
            "annotations": [], "categories": [{"id": 1, "name": "text"}]}
    pixels, _ = Dataset(coco, tmp_path, view=View(min_size=100))[0]
    assert pixels.shape == (3, 100, 150)
    assert abs(pixels[:, :, 60:].mean().item() - 59000 / 65535) < 0.02  # paper, not white
    assert abs(pixels[:, :, :40].mean().item() - 6000 / 65535) < 0.02  # text stays dark


def test_multi_page_tiff_is_refused_not_read_as_its_first_page(tmp_path):
    pages = [Image.new("L", (300, 200), shade) for shade in (40, 120, 200)]
    pages[0].save(tmp_path / "book.tif", save_all=True, append_images=pages[1:])
    coco = {"images": [{"id": 1, "file_name": "book.tif", "width": 300, "height": 200}],
            "annotations": [], "categories": [{"id": 1, "name": "text"}]}
    with pytest.raises(InputError, match=r"book.tif: a multi-page TIFF \(3 pages\).*split"):
        Dataset(coco, tmp_path, view=View(min_size=100))[0]
    pages[0].save(tmp_path / "one.tif")  # one page: read as always
    coco["images"][0]["file_name"] = "one.tif"
    assert Dataset(coco, tmp_path, view=View(min_size=100))[0][0].shape == (3, 100, 150)


@pytest.mark.parametrize("full_scale", [1.0, 255.0, 65535.0])
def test_float_greyscale_tiff_is_scaled_from_its_full_scale(tmp_path, full_scale):
    """A mode F (32-bit float) TIFF went through PIL's conversion, which clips at 255: a
    [0, 1] page decoded all black, a 16-bit one all white."""
    from maskdla.data.image import read_displayed_rgb

    samples = _grey_ramp().astype(np.float32) / 65535 * full_scale
    samples[0, 0] = np.nan  # a broken sample counts as black, and leaves the scale alone
    Image.fromarray(samples).save(tmp_path / "page.tif")
    with Image.open(tmp_path / "page.tif") as opened:
        assert opened.mode == "F"
    coco = {"images": [{"id": 1, "file_name": "page.tif", "width": 300, "height": 200}],
            "annotations": [], "categories": [{"id": 1, "name": "text"}]}
    pixels, _ = Dataset(coco, tmp_path, view=View(min_size=100))[0]
    assert abs(pixels[:, :, 60:].mean().item() - 59000 / 65535) < 0.02  # paper
    assert abs(pixels[:, :, :40].mean().item() - 6000 / 65535) < 0.02  # text
    shown = np.asarray(read_displayed_rgb(tmp_path / "page.tif"))  # overlays, evaluation
    assert shown.shape == (200, 300, 3) and shown[0, 0, 0] == 0
    assert abs(int(shown[100, 200, 0]) - round(59000 / 257)) <= 1
