"""Where a run's data comes from, decided once for training, evaluation and benchmarks.

A run's :class:`~maskdla.config.TrainConfig` names its data in one of three ways, first
match wins: ``train_ann``/``test_ann`` (COCO JSON files with ``train_images``/
``test_images``), ``data`` (a dataset folder: DATA/train, DATA/test), or neither: the
embedded synthetic corpus (``synthetic_pages``, ``synthetic_train``, ``synthetic_width``,
seed 0), generated once and cached.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

from maskdla.data.dataset import Dataset
from maskdla.data.synthetic import default_corpus

if TYPE_CHECKING:  # data comes before the config in the package's flow
    from maskdla.config import TrainConfig


def run_dataset(config: "TrainConfig", split: str, *, train: bool = False,
                classes: Optional[Sequence[str]] = None) -> Dataset:
    """Split ``split`` ("train" or "test", or any folder split) of the run's data.

    ``train=True`` gives the training view (augmentation, every ``min_size``); otherwise
    images come at the test size (the last ``min_size``). ``classes`` fixes the label
    order (a checkpoint's); default the config's, else the data's sorted class names.
    """
    options = dict(classes=list(classes) if classes is not None else config.classes,
                   class_map=config.class_map,
                   fold_subtypes=config.fold_subtypes, max_size=config.max_size,
                   min_size=tuple(config.min_size) if train else config.min_size[-1],
                   train=train, cache=train and config.cache_images)
    if config.train_ann or config.test_ann:
        given = getattr(config, f"{split}_ann", None)
        annotations = given or config.test_ann
        images = getattr(config, f"{split}_images") if given else config.test_images
        return Dataset.from_coco(annotations, images, **options)
    root = config.data or default_corpus(pages=config.synthetic_pages,
                                         train=config.synthetic_train,
                                         width=config.synthetic_width)
    return Dataset.from_folder(root, split, **options)


def run_datasets(config: "TrainConfig") -> Tuple[Dataset, Dataset]:
    """The run's (train, test) datasets; test uses the train set's class order."""
    train_set = run_dataset(config, "train", train=True)
    return train_set, run_dataset(config, "test", classes=train_set.classes)
