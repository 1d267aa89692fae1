"""Where a run's data comes from, decided once for training, evaluation and benchmarks.

A run's :class:`~maskdla.config.TrainConfig` names its data in one of three ways, first
match wins: ``train_ann``/``test_ann`` (COCO JSON files with ``train_images``/
``test_images``), ``data`` (a dataset folder: DATA/train, DATA/test, and DATA/val when
there is one; a flat folder without them, such as an eScriptorium export, whose
``test_fraction`` of pages drawn by ``seed`` is the test split; or a ZIP of either), or
neither: the embedded synthetic corpus (``synthetic_pages``, ``synthetic_train``,
``synthetic_width``, seed 0), generated once and cached. A validation
split is DATA/val, or ``val_fraction`` of the train pages drawn by ``seed``.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional, Sequence

from maskdla.data.archives import data_folder
from maskdla.data.augment import AugmentSettings, settings_of
from maskdla.data.dataset import Dataset, View
from maskdla.data.reading import unused_class_options
from maskdla.data.synthetic import default_corpus
from maskdla.errors import InputError

if TYPE_CHECKING:  # data comes before the config in the package's flow
    from maskdla.config import TrainConfig


class RunData(NamedTuple):
    """A run's splits: ``train`` (training view), ``val`` (None without one), ``test``."""

    train: Dataset
    val: Optional[Dataset]
    test: Dataset


def _view(config: "TrainConfig", train: bool) -> View:
    """The training view (the config's augmentations, every ``min_size``) or the test view
    (the last ``min_size``, no augmentation)."""
    return View(max_size=config.max_size, train=train,
                min_size=tuple(config.min_size) if train else config.min_size[-1],
                cache=train and config.cache_images, min_region_size=config.min_region_size,
                augment=settings_of(config) if train else AugmentSettings())


def run_dataset(config: "TrainConfig", split: str, *, train: bool = False,
                classes: Optional[Sequence[str]] = None) -> Dataset:
    """Split ``split`` ("train" or "test", or any folder split) of the run's data.

    ``train=True`` gives the training view (augmentation, every ``min_size``); otherwise
    images come at the test size (the last ``min_size``). ``classes`` fixes the label
    order (a checkpoint's); default the config's, else the data's sorted class names.
    """
    options = dict(view=_view(config, train), class_map=config.class_map,
                   fold_subtypes=config.fold_subtypes,
                   classes=list(classes) if classes is not None else config.classes)
    if config.train_ann or config.test_ann:
        given = getattr(config, f"{split}_ann", None)
        annotations = given or config.test_ann
        images = getattr(config, f"{split}_images") if given else config.test_images
        dataset = Dataset.from_coco(annotations, images, **options)
    elif is_flat(_root(config)):
        dataset = flat_split(config, _root(config), split, options)
    else:
        dataset = Dataset.from_folder(_root(config), split, instances=config.task, **options)
    report_specks(dataset, config.min_region_size, split)
    return dataset


def is_flat(root: Path) -> bool:
    """A data folder with neither train/ nor test/ (its pages at its top, or in its page/
    or alto/ folder, as an eScriptorium or Transkribus export has them)."""
    return root.is_dir() and not (root / "train").is_dir() and not (root / "test").is_dir()


def flat_split(config: "TrainConfig", root: Path, split: str,
               options: Dict[str, Any]) -> Dataset:
    """``split`` ("train" or "test") of a flat data folder: ``config.test_fraction`` of its
    pages (at least one, never all), drawn by ``config.seed``, are the test split and the
    rest the train split, the same draw for training and for a later evaluation.

    Raises:
        InputError: another split name, or a folder of one page.
    """
    if split not in ("train", "test"):
        raise InputError(f"a data folder without train/ and test/ has only the train and "
                         f"test splits the run draws (--test-fraction), no {split!r}", root)
    # read at the test view, its repair notes printed once (for the train split)
    read = dict(options, view=_view(config, False))
    whole = Dataset.from_folder(root, None, instances=config.task,
                                verbosity=1 if split == "train" else 0, **read)
    ids = sorted(image["id"] for image in whole.coco["images"])
    count = min(max(1, round(config.test_fraction * len(ids))), len(ids) - 1)
    if count < 1:
        raise InputError(f"{len(ids)} page(s) without train/ and test/ folders: too few to "
                         "draw a test split from (--test-fraction)", root)
    test_ids = set(random.Random(config.seed).sample(ids, count))
    chosen = test_ids if split == "test" else set(ids) - test_ids
    # the classes are mapped already: the subset takes only the split's view
    return _subset(whole, chosen, _view(config, options["view"].train))


def report_specks(dataset: Dataset, min_region_size: float, split: str) -> None:
    """One stderr line when regions of ``split`` were ignored as specks."""
    if dataset.specks:
        print(f"maskdla: {split}: {dataset.specks} regions under {min_region_size:g} px at the "
              "test size ignored as specks (no training target; COCO ignore in evaluation)",
              file=sys.stderr)


def _root(config: "TrainConfig") -> Path:
    if config.data:  # a folder, or a ZIP of one (extracted once into the cache)
        return data_folder(config.data)
    return Path(default_corpus(pages=config.synthetic_pages, train=config.synthetic_train,
                               width=config.synthetic_width))


def run_data(config: "TrainConfig") -> RunData:
    """The run's splits; val and test use the train set's class order. InputError when
    the training split has no class left to learn; a warning on stderr when a
    ``class_map`` key or a listed class matches nothing in it."""
    train_set = run_dataset(config, "train", train=True)
    if not train_set.classes:
        source = config.train_ann or _root(config) / "train"
        why = ("--class-map drops every class of the data" if config.class_map else
               f"its pages have no {'text lines' if config.task == 'lines' else 'regions'}")
        raise InputError(f"no class is left to train: {why}; a model needs at least one "
                         "class besides the background", source)
    kept = {train_set.classes[a["category_id"] - 1] for a in train_set.coco["annotations"]}
    unused = unused_class_options(train_set.found_classes, kept, config.class_map,
                                  config.classes)
    if unused:
        print(f"maskdla: warning: {config.train_ann or _root(config) / 'train'}: {unused}",
              file=sys.stderr)
    test_set = run_dataset(config, "test", classes=train_set.classes)
    folder = _root(config) / "val" if not (config.train_ann or config.test_ann) else None
    if folder is not None and folder.is_dir():
        if config.val_fraction:
            raise InputError("--val-fraction: the data has a val/ split already; drop the "
                             "flag or the folder", folder)
        return RunData(train_set, run_dataset(config, "val", classes=train_set.classes),
                       test_set)
    if not config.val_fraction:
        return RunData(train_set, None, test_set)
    return RunData(*split_off(train_set, config), test_set)


def split_off(train_set: Dataset, config: "TrainConfig") -> tuple:
    """(train, val): ``config.val_fraction`` of the train pages (at least one, never all),
    drawn by ``config.seed``, become the validation split at the test view."""
    ids = sorted(image["id"] for image in train_set.coco["images"])
    count = min(max(1, round(config.val_fraction * len(ids))), len(ids) - 1)
    if count < 1:
        raise InputError(f"--val-fraction {config.val_fraction:g}: the train split has "
                         f"{len(ids)} page(s), too few to split")
    val_ids = set(random.Random(config.seed).sample(ids, count))
    return (_subset(train_set, set(ids) - val_ids, _view(config, True)),
            _subset(train_set, val_ids, _view(config, False)))


def _subset(dataset: Dataset, ids: set, view: View) -> Dataset:
    coco = {"images": [image for image in dataset.coco["images"] if image["id"] in ids],
            "annotations": [annotation for annotation in dataset.coco["annotations"]
                            if annotation["image_id"] in ids],
            "categories": dataset.coco["categories"]}
    return Dataset(coco, dataset.image_dir, classes=dataset.classes, view=view)
