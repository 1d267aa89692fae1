"""The training Dataset: page images and their regions, already at training resolution.

:class:`Dataset` reads a dataset folder (``DATA/train/*.jpg`` + ``DATA/train/page/*.xml``)
or a COCO JSON file with its image folder, and yields ``(image, target)`` pairs the way
torchvision's Mask R-CNN takes them, but already resized to the size the model's transform
would resize them to (:func:`training_size`), so the model does not resize again. That is
where the speed comes from:

* JPEG pages are decoded at a reduced scale (the decoder's DCT scaling to 1/2, 1/4 or 1/8,
  never below the training size; simplejpeg decodes straight into an array), other formats
  shrink by an integer factor with ``Image.reduce``; one antialiased resampling on uint8
  does the rest;
* each region's polygon is rasterised directly at the training size, inside its bounding
  box only, instead of a full-size mask per region that is then resized;
* optionally (``View(cache=True)``) the resized decoded images stay in memory.

How a Dataset serves its pages (sizes, training view and its augmentations, cache,
decoder, specks) is one parameter object, :class:`View`, whose defaults are the ones
:class:`~maskdla.config.TrainConfig` takes too.

Pages without regions stay in the data set as negatives. ``python -m maskdla.bench loader``
measures the pipeline against the naive one (docs/benchmarks.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import (Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union)

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Sampler

from maskdla.data.archives import data_folder, is_zip
from maskdla.data.augment import AugmentSettings, apply_transforms, build_transforms
from maskdla.data.image import SWAPS_SIDES, check_one_page, orientation_transpose, to_rgb
from maskdla.data.coco import folder_to_coco, load_coco
from maskdla.data.reading import RepairReport, UnknownClasses, map_label
from maskdla.data.resize import training_size
from maskdla.errors import InputError

try:  # libjpeg-turbo straight into numpy; without it PIL decodes (a few ms slower a page)
    import simplejpeg
except ImportError:  # pragma: no cover - a platform with no simplejpeg wheel
    simplejpeg = None

__all__ = ["Dataset", "GroupedBatchSampler", "View", "aspect_ratio_groups", "collate_fn",
           "training_size"]

PathLike = Union[str, "os.PathLike[str]"]
Target = Dict[str, torch.Tensor]
ClassMap = Mapping[str, Optional[str]]


@dataclasses.dataclass(frozen=True)
class View:
    """How a :class:`Dataset` serves its pages: its parameter object, each default here
    (TrainConfig takes its defaults from these).

    Attributes:
        min_size: short side at training size; a tuple is multi-scale training: with
            ``train=True`` each item picks one at random, else the last is used.
        max_size: the long side is never longer than this.
        train: the training view: a random ``min_size`` per item and ``augment`` (both off
            with ``train=False``).
        augment: the augmentations of the training view
            (:data:`maskdla.data.augment.AUGMENTATIONS`: ``AugmentSettings(hflip=True,
            brightness_contrast=0.2)``); all off by default.
        cache: keep resized decoded images in memory (per process: each DataLoader worker
            has its own, so use it with ``persistent_workers=True`` or no workers; one
            entry per image and training size, about 2.8 MB per page at 800 x 1156).
        use_simplejpeg: decode JPEG with simplejpeg where installed (False: through PIL).
        min_region_size: regions whose sqrt(width x height) at the test size (the last
            ``min_size``) is under this many pixels are "specks", too small to learn: they
            are kept out of the targets and marked ``iscrowd`` in :attr:`Dataset.coco`,
            which COCO evaluation ignores instead of counting them as misses (0: none).

    Raises:
        InputError: sizes that are not positive integers, a negative ``min_region_size``.
    """

    min_size: Union[int, Tuple[int, ...]] = 800
    max_size: int = 1333
    train: bool = False
    augment: AugmentSettings = AugmentSettings()
    cache: bool = False
    use_simplejpeg: bool = True
    min_region_size: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.min_size, int):  # a list would make the view unhashable
            object.__setattr__(self, "min_size", tuple(self.min_size))
        if not self.min_sizes or any(not isinstance(s, int) or s < 1
                                     for s in self.min_sizes + (self.max_size,)):
            raise InputError(f"min_size and max_size must be positive integers, got "
                             f"{self.min_size!r} and {self.max_size!r}")
        if self.min_region_size < 0:
            raise InputError(f"min_region_size must be >= 0, got {self.min_region_size}")
        if not isinstance(self.augment, AugmentSettings):
            raise TypeError(f"augment must be AugmentSettings, got {self.augment!r}")

    @property
    def min_sizes(self) -> Tuple[int, ...]:
        """``min_size`` as a tuple."""
        return (self.min_size,) if isinstance(self.min_size, int) else self.min_size


class _Instance:
    """One annotation in original-image pixels: polygons (each [K, 2] float64) or an RLE."""

    __slots__ = ("label", "polygons", "rle", "bbox", "iscrowd")

    def __init__(self, label: int, polygons: List[np.ndarray], rle: Optional[dict],
                 bbox: Tuple[float, float, float, float], iscrowd: int):
        self.label = label
        self.polygons = polygons
        self.rle = rle
        self.bbox = bbox  # x0, y0, x1, y1
        self.iscrowd = iscrowd


def _resolve_classes(coco: Dict[str, Any], classes: Optional[Sequence[str]],
                     class_map: Optional[ClassMap], source: str,
                     fold_subtypes: bool = False) -> Tuple[List[str], Dict[Any, int]]:
    """Class names (no background) and category id -> label (1..C, 0 = dropped).

    Category names go through :func:`~maskdla.data.reading.map_label` (sub-types folded
    when ``fold_subtypes``, then ``class_map``: None or "" drops, ``*`` matches the rest);
    without ``classes`` the order is the file's category order (by id), merged names once.
    """
    mapped: Dict[Any, str] = {}
    for category in sorted(coco["categories"], key=lambda c: c["id"]):
        mapped[category["id"]] = map_label(str(category["name"]), class_map, fold_subtypes)
    used = {mapped[a["category_id"]] for a in coco["annotations"]} - {""}
    if classes is None:
        classes = list(dict.fromkeys(name for name in mapped.values() if name))
    else:
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise InputError(f"classes list a class twice: {' '.join(classes)}")
        missing = sorted(used - set(classes))
        if missing:
            raise UnknownClasses(missing, f"classes {', '.join(missing)} found in {source} but "
                                 "not in the class list; add them or map them (NAME=OTHER, "
                                 "NAME= drops)")
    label_of = {name: index for index, name in enumerate(classes, start=1)}
    return classes, {category_id: label_of.get(name, 0) for category_id, name in mapped.items()}


def _instance(annotation: Dict[str, Any], label: int) -> Optional[_Instance]:
    """Parse a COCO annotation; None when it has no usable geometry."""
    segmentation = annotation.get("segmentation")
    polygons: List[np.ndarray] = []
    rle = None
    if isinstance(segmentation, dict):
        rle = segmentation
    elif isinstance(segmentation, list):
        for flat in segmentation:
            if isinstance(flat, (list, tuple)) and len(flat) >= 6:
                polygons.append(np.asarray(flat, dtype=np.float64)[: len(flat) // 2 * 2]
                                .reshape(-1, 2))
    if polygons:
        points = np.concatenate(polygons)
        x0, y0 = points.min(axis=0)
        x1, y1 = points.max(axis=0)
        bbox = (float(x0), float(y0), float(x1), float(y1))
    elif "bbox" in annotation or rle is not None:
        if "bbox" in annotation:
            x, y, w, h = (float(v) for v in annotation["bbox"])
        else:
            from pycocotools import mask as mask_utils
            x, y, w, h = (float(v) for v in mask_utils.toBbox(_compressed(rle)))
        bbox = (x, y, x + w, y + h)
        if rle is None:  # no segmentation at all: the box is the region
            polygons = [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])]
    else:
        return None
    return _Instance(label, polygons, rle, bbox, int(annotation.get("iscrowd", 0) or 0))


def _rasterise(instance: _Instance, scale_x: float, scale_y: float, height: int, width: int,
               out: np.ndarray) -> int:
    """Fill ``out`` ([height, width] uint8, zeros) with the instance's mask at the scaled size;
    return its pixel count.

    The polygons are drawn at the small size directly, inside their bounding box only. The
    mask is the one that drawing at full size and then resampling (pixel centres) would
    give: drawn at full size, a polygon spanning x0..x1 covers [x0, x1 + 1) (PIL fills
    every pixel it touches), so at the small size it covers [x0 s, (x1 + 1) s); PIL
    fills the pixels floor(a)..floor(b) of a span [a, b], so each axis is mapped affinely
    onto a = x0 s + 1/2, b = (x1 + 1) s - 1/2. That keeps thin regions (a lyrics line a
    dozen pixels high) within a fraction of a pixel of the full-size result.
    """
    if instance.rle is not None:
        return _rasterise_rle(instance.rle, height, width, out)
    # plain floats: numpy's per-call overhead would dominate on these few numbers
    if len(instance.polygons) == 1:
        points = instance.polygons[0]
    else:
        points = np.concatenate(instance.polygons)
    x0, y0 = points.min(axis=0).tolist()
    x1, y1 = points.max(axis=0).tolist()
    start_x, start_y = x0 * scale_x + 0.5, y0 * scale_y + 0.5
    # max(): a sub-pixel region still gets its one pixel
    stop_x = max((x1 + 1) * scale_x - 0.5, start_x)
    stop_y = max((y1 + 1) * scale_y - 0.5, start_y)
    factor_x = (stop_x - start_x) / (x1 - x0) if x1 > x0 else 0.0
    factor_y = (stop_y - start_y) / (y1 - y0) if y1 > y0 else 0.0
    x_low, y_low = max(math.floor(start_x), 0), max(math.floor(start_y), 0)
    x_high = min(math.floor(stop_x) + 1, width)
    y_high = min(math.floor(stop_y) + 1, height)
    if x_high <= x_low or y_high <= y_low:
        return 0
    # polygon -> (polygon - low) * factor + start, as one multiply-add per coordinate
    factor = np.array([factor_x, factor_y])
    offset = np.array([start_x - x0 * factor_x, start_y - y0 * factor_y])
    draw = _draw_into(out)
    for polygon in instance.polygons:
        draw.polygon((polygon * factor + offset).ravel().tolist(), fill=1)
    return int(np.count_nonzero(out[y_low:y_high, x_low:x_high]))


def _draw_into(mask: np.ndarray) -> ImageDraw.ImageDraw:
    """An ImageDraw that draws straight into ``mask`` ([h, w] uint8, C-contiguous).

    ``Image.frombuffer`` shares the array's memory but marks the image read-only, because a
    buffer may be; this one is writable, and drawing into it saves a crop image and two
    copies of it per region (tests/test_dataset.py checks the masks against PIL's own).
    """
    image = Image.frombuffer("L", (mask.shape[1], mask.shape[0]), mask, "raw", "L", 0, 1)
    image.readonly = 0
    return ImageDraw.Draw(image)


def _compressed(rle: dict) -> dict:
    """A COCO RLE in the compressed form pycocotools decodes."""
    from pycocotools import mask as mask_utils

    if isinstance(rle.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(rle, *rle["size"])
    return rle


def _rasterise_rle(rle: dict, height: int, width: int, out: np.ndarray) -> int:
    """COCO RLE (full size) -> mask at [height, width] by nearest resampling: the slow path,
    only for COCO files that store masks instead of polygons."""
    from pycocotools import mask as mask_utils

    full = mask_utils.decode(_compressed(rle))
    out[:] = np.asarray(Image.fromarray(full).resize((width, height), Image.NEAREST))
    return int(np.count_nonzero(out))


def _power_of_two_factor(stored: Tuple[int, int], target: Tuple[int, int]) -> int:
    """The largest of 8, 4, 2 that shrinks ``stored`` (w, h) to no less than ``target``, else
    1 (a page smaller than its training size is upsampled after decoding). These are the
    DCT scales libjpeg-turbo decodes with SIMD code; 3/8, 5/8... are slower than 1/2."""
    shrink = min(stored[0] // max(target[0], 1), stored[1] // max(target[1], 1))
    return next((factor for factor in (8, 4, 2) if shrink >= factor), 1)


def _decode_jpeg_direct(path: Path, stored: Tuple[int, int],
                        target: Tuple[int, int]) -> Optional[torch.Tensor]:
    """JPEG file -> uint8 [3, h, w] decoded at 1/2, 1/4 or 1/8 scale straight into a numpy
    array by simplejpeg (libjpeg-turbo), or None when the PIL path must decide: simplejpeg
    missing, or a file it refuses (it is strict about what PIL tolerates, such as stray
    bytes before a marker). Saves the two copies of PIL's ``np.array(image)``."""
    if simplejpeg is None:
        return None
    factor = _power_of_two_factor(stored, target)
    try:
        array = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB",
                                       min_width=-(-stored[0] // factor),
                                       min_height=-(-stored[1] // factor))
    except ValueError:
        return None
    return torch.from_numpy(array).permute(2, 0, 1)  # a view: [3, h, w], channels last


def _decode_with_pil(image: Image.Image, target: Tuple[int, int],
                     transpose: Optional[Image.Transpose]) -> torch.Tensor:
    """An opened image -> uint8 [3, h, w] of the displayed page, decoding JPEG at a reduced
    DCT scale (``draft``) and shrinking other formats by an integer factor."""
    image.draft("RGB", target)
    image = to_rgb(image)  # decodes; 16-bit grey scaled, not clipped
    factor = min(image.width // target[0], image.height // target[1])
    if factor >= 2:  # box-filter by an integer factor: cheap, and leaves < 2x
        image = image.reduce(factor)
    if transpose is not None:  # coordinates refer to the page as displayed
        image = image.transpose(transpose)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def decode_image(path: Path, width: int, height: int, original: Tuple[int, int], *,
                 use_simplejpeg: bool = True) -> torch.Tensor:
    """Image file -> uint8 [3, height, width], decoding no more pixels than needed.

    JPEG is decoded at 1/2, 1/4 or 1/8 scale where that still covers the target size (the
    decoder's DCT scaling: simplejpeg straight into an array, else PIL ``draft``), other
    formats shrink by an integer factor with ``Image.reduce``; the rest is one antialiased
    bilinear resampling on uint8 (torch's fast kernel; about twice as fast as PIL's on 2
    cores). An EXIF orientation is applied, as the PAGE-XML reader does when it takes the
    page size from the image; 16-bit greyscale is scaled to 8 bits (:func:`to_rgb`); a
    multi-page TIFF is refused (:func:`check_one_page`). ``use_simplejpeg=False`` decodes JPEG through PIL, as where
    simplejpeg is not installed.

    Raises:
        InputError: missing or unreadable file, or its size differs from ``original``
            (the (width, height) its annotations were made for).
    """
    try:
        with Image.open(path) as image:  # reads the header only
            check_one_page(image, path)
            transpose = orientation_transpose(image)
            swapped = transpose in SWAPS_SIDES
            shown = image.size[::-1] if swapped else image.size
            if shown != original:
                raise InputError(f"image is {shown[0]}x{shown[1]} px but its annotations are "
                                 f"for {original[0]}x{original[1]} px", path)
            stored_target = (height, width) if swapped else (width, height)
            pixels = None
            # YCbCr or grey JPEG shown as stored; CMYK (Adobe's inverted kind) goes to PIL
            if (use_simplejpeg and image.format == "JPEG" and image.mode in ("RGB", "L")
                    and transpose is None):
                pixels = _decode_jpeg_direct(path, image.size, stored_target)
            if pixels is None:
                pixels = _decode_with_pil(image, stored_target, transpose)
    except InputError:  # already one line naming the file (a ValueError too)
        raise
    except FileNotFoundError:
        raise InputError("image file not found", path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"cannot read the image ({error})", path) from None
    if tuple(pixels.shape[1:]) != (height, width):
        pixels = torch.nn.functional.interpolate(pixels[None], size=(height, width),
                                                 mode="bilinear", antialias=True,
                                                 align_corners=False)[0]
    return pixels


class Dataset(torch.utils.data.Dataset):
    """Pages and their regions for Mask R-CNN, at training resolution.

    Build it with :meth:`from_folder` or :meth:`from_coco` (or directly from a COCO dict).

    Args:
        coco: COCO instance-segmentation dict (polygon or RLE segmentations) at original
            image resolution; image ids must be integers.
        image_dir: folder that the images' ``file_name`` are relative to.
        classes: class names in label order (label i + 1 = classes[i]); default the
            categories in id order. A class found in the data but not listed is an error.
        class_map: renames categories (``{"paragraph": "text"}``); None or "" drops one;
            the key ``*`` matches every category not named (``{"*": None}`` keeps only
            the named ones).
        fold_subtypes: fold SegmOnto sub-types (``MainZone#1``, ``MainZone:column``) to
            their main type, before ``class_map``.
        view: sizes, training view and augmentations, cache, decoder, specks
            (:class:`View`; default: the test view at 800 / 1333 px).
        source: name of the annotation source for messages (the JSON or the folder).

    Attributes:
        view: the :class:`View` it was made with.
        classes: class names without background.
        coco: COCO ground truth at original resolution (polygons), category ids = labels,
            image ids = ``target["image_id"]``; ready for pycocotools.
        repair_report: what reading the PAGE-XML repaired (:meth:`from_folder`), else None.
        found_classes: instances per class as the data names them (sub-types folded when
            asked), before the class map.
        specks: regions ignored as specks (``min_region_size``).

    Raises:
        InputError: an image file that does not exist, non-integer image ids, bad sizes or
            classes.
    """

    def __init__(self, coco: Dict[str, Any], image_dir: PathLike, *,
                 classes: Optional[Sequence[str]] = None, class_map: Optional[ClassMap] = None,
                 fold_subtypes: bool = False, view: View = View(),
                 source: Optional[PathLike] = None):
        self.image_dir = Path(image_dir)
        source_name = str(source if source is not None else self.image_dir)
        self.view = view
        self.min_sizes: Tuple[int, ...] = view.min_sizes
        self.max_size = view.max_size
        self.train = view.train
        self.use_simplejpeg = view.use_simplejpeg
        self._transforms = build_transforms(view.augment) if view.train else []
        self.repair_report: Optional[RepairReport] = None
        self._cache: Optional[Dict[Tuple[int, int, int], torch.Tensor]] = {} if view.cache else None

        self.classes, label_of = _resolve_classes(coco, classes, class_map, source_name,
                                                  fold_subtypes)
        found = {category["id"]: map_label(str(category["name"]), None, fold_subtypes)
                 for category in coco["categories"]}
        self.found_classes = Counter(found.get(a["category_id"], "") for a in coco["annotations"])
        self._images: List[Dict[str, Any]] = []
        self._paths: List[Path] = []
        index_of: Dict[int, int] = {}
        for image in coco["images"]:
            if isinstance(image["id"], bool) or not isinstance(image["id"], int):
                raise InputError(f"image id {image['id']!r} is not an integer", source_name)
            path = self.image_dir / image["file_name"]
            if not path.is_file():
                raise InputError(f"image file not found (listed in {source_name})", path)
            index_of[image["id"]] = len(self._images)
            self._images.append({"id": image["id"], "file_name": image["file_name"],
                                 "width": int(image["width"]), "height": int(image["height"])})
            self._paths.append(path)
        self._instances: List[List[_Instance]] = [[] for _ in self._images]
        self.specks = 0
        annotations = []
        for annotation in coco["annotations"]:
            label = label_of[annotation["category_id"]]
            instance = _instance(annotation, label) if label else None
            if instance is None or annotation["image_id"] not in index_of:
                continue
            index = index_of[annotation["image_id"]]
            if self._is_speck(instance.bbox, self._images[index], view.min_region_size):
                self.specks += 1
                instance.iscrowd = 1
            else:
                self._instances[index].append(instance)
            x0, y0, x1, y1 = instance.bbox
            kept = {key: annotation[key] for key in ("segmentation", "area") if key in annotation}
            kept.setdefault("area", (x1 - x0) * (y1 - y0))
            annotations.append(dict(kept, id=len(annotations) + 1,
                                    image_id=annotation["image_id"], category_id=label,
                                    bbox=[x0, y0, x1 - x0, y1 - y0], iscrowd=instance.iscrowd))
        self.coco: Dict[str, Any] = {
            "images": [dict(image) for image in self._images], "annotations": annotations,
            "categories": [{"id": i, "name": name} for i, name in enumerate(self.classes, 1)]}

    def _is_speck(self, bbox: Tuple[float, float, float, float], image: Dict[str, Any],
                  min_region_size: float) -> bool:
        """Whether a region (box at original resolution) is under ``min_region_size`` px
        (sqrt(w x h)) at the test size of its page."""
        if min_region_size <= 0:
            return False
        height, _ = training_size(image["height"], image["width"], self.min_sizes[-1],
                                  self.max_size)
        scale = height / image["height"]
        x0, y0, x1, y1 = bbox
        return math.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)) * scale < min_region_size

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_folder(cls, root: PathLike, split: Optional[str] = "train", *,
                    elements: Optional[Sequence[str]] = None,
                    classes: Optional[Sequence[str]] = None,
                    class_map: Optional[ClassMap] = None, fold_subtypes: bool = False,
                    instances: str = "regions", verbosity: int = 1,
                    **kwargs: Any) -> "Dataset":
        """A split of a dataset folder: ``root/split/*.jpg`` with its PAGE-XML or ALTO in
        ``root/split/page/*.xml``, ``root/split/alto/*.xml`` or next to the images
        (``split=None``: ``root`` itself is the split folder). ``root`` may be a ZIP of
        such a folder (:func:`maskdla.data.archives.data_folder`).

        ``elements``, ``class_map`` and ``fold_subtypes`` are the readers' options
        (:func:`~maskdla.data.layout.read_layout`); ``instances`` "lines" takes the text
        lines as instances instead of the regions (a line model; the class options then
        apply to the line types); the class list defaults to the sorted
        class names found. What reading repaired is in :attr:`repair_report`. With
        ``verbosity`` 1 (default), when reading repaired or skipped anything, the first
        region notes and one summary line go to stderr (clean data: nothing); 2 prints
        every note and the summary always; 0 nothing. Other keyword arguments as for
        :class:`Dataset` (``view``: sizes, augmentations, cache; :class:`View`).
        """
        folder = data_folder(root) if split is None else data_folder(root) / split
        if not folder.is_dir() and is_zip(root):
            raise InputError(f"the archive has no {split}/ folder: as data for training and "
                             "evaluation it needs train/ and test/ at its top, each with its "
                             "images and their PAGE or ALTO XML (a flat eScriptorium export "
                             "is training data as it is: maskdla train --data draws its test "
                             "split, --test-fraction; maskdla eval CKPT without --data draws "
                             "the same)", root)
        if not folder.is_dir():
            raise InputError("no such dataset folder (expected DATA/train/*.jpg with its PAGE "
                             "or ALTO XML in DATA/train/page/, DATA/train/alto/ or next to "
                             "the images)", folder)
        coco, report = folder_to_coco(folder, elements=elements, class_map=class_map,
                                      classes=classes, fold_subtypes=fold_subtypes,
                                      instances=instances)
        lines = report.lines(verbosity) if report.notes or verbosity >= 2 else []
        for line in lines[:-1]:
            print(f"maskdla: {line}", file=sys.stderr)
        if lines:
            print(f"maskdla: {folder}: {lines[-1]}", file=sys.stderr)
        dataset = cls(coco, folder, classes=classes, source=folder, **kwargs)
        dataset.repair_report = report
        dataset.found_classes = report.found  # the data's classes before the class map
        return dataset

    @classmethod
    def from_coco(cls, ann_json: PathLike, image_dir: Optional[PathLike] = None,
                  **kwargs: Any) -> "Dataset":
        """A COCO JSON file; image ``file_name`` are relative to ``image_dir`` (default the
        JSON's folder). Keyword arguments as for :class:`Dataset`."""
        coco = load_coco(ann_json)
        image_dir = Path(ann_json).parent if image_dir is None else image_dir
        return cls(coco, image_dir, source=ann_json, **kwargs)

    # ------------------------------------------------------------------ metadata
    def __len__(self) -> int:
        return len(self._images)

    def image_path(self, index: int) -> Path:
        """The image file of item ``index``."""
        return self._paths[index]

    def image_labels(self) -> List[Set[int]]:
        """The set of labels (1..C) present on each page, from the annotations."""
        return [{instance.label for instance in instances} for instances in self._instances]

    def aspect_ratios(self) -> List[float]:
        """Width / height of every image, from the annotations (nothing is decoded)."""
        return [image["width"] / image["height"] for image in self._images]

    # ------------------------------------------------------------------ items
    def _min_size(self) -> int:
        if self.train and len(self.min_sizes) > 1:
            return self.min_sizes[int(torch.randint(len(self.min_sizes), ()).item())]
        return self.min_sizes[-1]

    def _image(self, index: int, height: int, width: int) -> torch.Tensor:
        key = (index, height, width)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        info = self._images[index]
        pixels = decode_image(self._paths[index], width, height, (info["width"], info["height"]),
                              use_simplejpeg=self.use_simplejpeg)
        if self._cache is not None:
            self._cache[key] = pixels
        return pixels

    def _target(self, index: int, height: int, width: int) -> Target:
        info = self._images[index]
        scale_x, scale_y = width / info["width"], height / info["height"]
        kept = []
        boxes = []
        for instance in self._instances[index]:
            x0, y0, x1, y1 = instance.bbox
            box = (min(max(x0 * scale_x, 0.0), width), min(max(y0 * scale_y, 0.0), height),
                   min(max(x1 * scale_x, 0.0), width), min(max(y1 * scale_y, 0.0), height))
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue  # degenerate at this size: no learnable box
            kept.append(instance)
            boxes.append(box)
        masks = np.zeros((len(kept), height, width), dtype=np.uint8)
        areas = [_rasterise(instance, scale_x, scale_y, height, width, mask)
                 for instance, mask in zip(kept, masks)]
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([i.label for i in kept], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            # area of the mask at training size (COCO areas at original size: self.coco)
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.tensor([i.iscrowd for i in kept], dtype=torch.int64),
            "image_id": torch.tensor(info["id"], dtype=torch.int64),
            "orig_size": torch.tensor([info["height"], info["width"]], dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Target]:
        """Item ``index`` at training size (h, w) = :func:`training_size` of the page.

        Returns:
            image: float32 [3, h, w] in [0, 1].
            target: ``boxes`` float32 [N, 4] (x0, y0, x1, y1 in resized pixels),
            ``labels`` int64 [N] in 1..C, ``masks`` uint8 [N, h, w], ``area`` float32 [N]
            (mask pixels), ``iscrowd`` int64 [N], ``image_id`` int64 [], ``orig_size``
            int64 [2] = (H0, W0). N = 0 for a page without regions. Regions smaller than
            one pixel at this size are dropped.
        """
        info = self._images[index]
        height, width = training_size(info["height"], info["width"], self._min_size(),
                                      self.max_size)
        pixels = self._image(index, height, width)
        target = self._target(index, height, width)
        image = pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255)
        # the training view's augmentations (maskdla.data.augment), in the table's order
        return apply_transforms(self._transforms, image, target)


def collate_fn(batch: Sequence[Tuple[torch.Tensor, Target]]
               ) -> Tuple[List[torch.Tensor], List[Target]]:
    """DataLoader collate: a list of (image, target) -> (list of images, list of targets),
    the form torchvision's detection models take (images differ in size)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def aspect_ratio_groups(aspect_ratios: Sequence[float], bins: int = 0) -> List[int]:
    """Group id of each image for :class:`GroupedBatchSampler`.

    Args:
        aspect_ratios: width / height per image (:meth:`Dataset.aspect_ratios`).
        bins: 0 -> two groups, landscape or square (0) and portrait (1); k > 0 -> as
            torchvision's references, 2k quantisation bins between ratios 1/2 and 2
            (2k + 2 groups counting the two open ends).
    """
    if bins <= 0:
        return [0 if ratio >= 1 else 1 for ratio in aspect_ratios]
    edges = 2 ** np.linspace(-1, 1, 2 * bins + 1)
    return [int(group) for group in np.digitize(np.asarray(aspect_ratios), edges)]


class GroupedBatchSampler(Sampler[List[int]]):
    """Batches whose images share an aspect-ratio group, from any index sampler.

    Wraps ``sampler`` (e.g. a RandomSampler or a DistributedSampler: each rank groups its
    own share) and yields lists of ``batch_size`` indices of one group each, in the order
    the groups fill up. Near the end, unfinished groups are completed with repeats of
    their own earlier indices so that every epoch has exactly ``len(self)`` =
    ceil(len(sampler) / batch_size) full batches (indices of groups left over beyond that
    count are not seen that epoch).

    Args:
        sampler: yields dataset indices.
        group_ids: group id of every dataset index (:func:`aspect_ratio_groups`).
        batch_size: indices per batch.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the wrapped sampler (DistributedSampler reshuffles with it)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        buffers: Dict[int, List[int]] = defaultdict(list)
        seen: Dict[int, List[int]] = defaultdict(list)
        produced = 0
        for index in self.sampler:
            group = self.group_ids[index]
            buffers[group].append(index)
            seen[group].append(index)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                produced += 1
        # complete the fullest unfinished groups with their own indices
        for group, buffer in sorted(buffers.items(), key=lambda item: -len(item[1])):
            if produced >= len(self):
                break
            if not buffer:
                continue
            repeats = seen[group] * math.ceil(self.batch_size / len(seen[group]))
            yield buffer + repeats[: self.batch_size - len(buffer)]
            produced += 1
