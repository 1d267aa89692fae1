"""Where a run's data comes from, decided once for training, evaluation and benchmarks.

A run's config (a TrainConfig as a plain dict) names its data in one of three ways, first
match wins: ``train_ann``/``test_ann`` (COCO JSON files with ``train_images``/
``test_images``), ``data`` (a dataset folder: DATA/train, DATA/test), or neither: the
embedded synthetic corpus (``synthetic_pages``, ``synthetic_train``, ``synthetic_width``,
seed 0), generated once and cached.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

from maskdla.data.dataset import Dataset
from maskdla.data.synthetic import default_corpus

#: run config key -> ``default_corpus`` argument
SYNTHETIC_CONFIG_KEYS = {"synthetic_pages": "pages", "synthetic_train": "train",
                         "synthetic_width": "width"}


def run_dataset(config: Mapping[str, Any], split: str, *, train: bool = False,
                classes: Optional[Sequence[str]] = None) -> Dataset:
    """Split ``split`` ("train" or "test", or any folder split) of the run's data.

    ``train=True`` gives the training view (augmentation, every ``min_size``); otherwise
    images come at the test size (the last ``min_size``). ``classes`` fixes the label
    order (a checkpoint's); default the data's sorted class names.
    """
    min_sizes = list(config.get("min_size") or [800])
    options = dict(classes=list(classes) if classes is not None else config.get("classes"),
                   class_map=config.get("class_map"), max_size=int(config.get("max_size") or 1333),
                   min_size=tuple(min_sizes) if train else min_sizes[-1], train=train,
                   cache=bool(train and config.get("cache_images")))
    if config.get("train_ann") or config.get("test_ann"):
        annotations = config.get(f"{split}_ann") or config["test_ann"]
        images = config.get(f"{split}_images") if config.get(f"{split}_ann") else config.get("test_images")
        return Dataset.from_coco(annotations, images, **options)
    root = config.get("data")
    if not root:
        root = default_corpus(**{argument: config[key] for key, argument
                                 in SYNTHETIC_CONFIG_KEYS.items() if config.get(key) is not None})
    return Dataset.from_folder(root, split, **options)


def run_datasets(config: Mapping[str, Any]) -> Tuple[Dataset, Dataset]:
    """The run's (train, test) datasets; test uses the train set's class order."""
    train_set = run_dataset(config, "train", train=True)
    return train_set, run_dataset(config, "test", classes=train_set.classes)
