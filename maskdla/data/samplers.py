"""Batch samplers of a training run: :class:`EpochBatches`, one rank's batches over the
rest of a run, built on :class:`maskdla.data.dataset.GroupedBatchSampler`, and
:class:`RepeatFactorSampler`, class-balanced sampling of pages by their rarest class."""
from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Iterator, List, Optional, Sequence, Set

import torch
from torch.utils.data import DistributedSampler, Sampler

from maskdla.data.dataset import Dataset, GroupedBatchSampler, aspect_ratio_groups


class EpochBatches:
    """Batch sampler of one rank over the rest of a run: a DistributedSampler (shuffled by
    seed and epoch, so the order is reproducible) grouped by aspect ratio, epoch after
    epoch, that can start mid-epoch.

    ``start(epoch, skip, count)`` before iterating: the epoch's first ``skip`` batches are
    skipped without loading them (resuming a run killed mid-epoch), and ``count`` batches
    follow, across epoch boundaries. With ``--loader-pass run`` one pass over the DataLoader
    covers the rest of the run, so the workers keep prefetching through each epoch's end
    instead of draining their queue and making the next epoch's first step wait for a full
    load.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, repeat_threshold: float = 0.0):
        sampler: Sampler[int]
        if repeat_threshold > 0:
            sampler = RepeatFactorSampler(dataset.image_labels(), repeat_threshold, seed=seed,
                                          rank=rank, world_size=world_size)
        else:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                         shuffle=True, seed=seed, drop_last=False)
        self.batches = GroupedBatchSampler(sampler, aspect_ratio_groups(dataset.aspect_ratios()),
                                           batch_size)
        self.start(0)

    @property
    def per_epoch(self) -> int:
        """Batches of one epoch on this rank."""
        return len(self.batches)

    def start(self, epoch: int, skip: int = 0, count: Optional[int] = None) -> None:
        """Begin at batch ``skip`` of ``epoch``; ``count`` batches in all (default: the rest
        of that epoch)."""
        self.epoch, self.skip = epoch, skip
        self.count = self.per_epoch - skip if count is None else count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[List[int]]:
        epoch, skip, left = self.epoch, self.skip, self.count
        while left > 0:
            self.batches.set_epoch(epoch)
            before = left
            for batch in itertools.islice(self.batches, skip, skip + left):
                yield batch
                left -= 1
            if left == before:  # an epoch with nothing (left): never loop forever
                return
            epoch, skip = epoch + 1, 0


def repeat_factors(image_labels: Sequence[Set[int]], threshold: float) -> List[float]:
    """LVIS's repeat factor of every page (Gupta et al. 2019, as detectron2 samples).

    A class present on a fraction f_c of the pages gets r_c = max(1, sqrt(threshold / f_c));
    a page gets the largest r_c of the classes it holds (1 for a page without regions), so
    pages with a rare class are seen about r times as often. ``image_labels``: the label
    set of each page. Returns one factor >= 1 per page.
    """
    if threshold <= 0:
        raise ValueError(f"repeat threshold must be > 0, got {threshold}")
    pages = max(len(image_labels), 1)
    present = Counter(label for labels in image_labels for label in labels)
    factor = {label: max(1.0, math.sqrt(threshold / (count / pages)))
              for label, count in present.items()}
    return [max((factor[label] for label in labels), default=1.0) for labels in image_labels]


class RepeatFactorSampler(Sampler[int]):
    """One rank's share of an epoch of pages drawn by their repeat factors.

    Each epoch, page i is repeated floor(r_i) times plus once more with probability
    frac(r_i) (stochastic rounding, seeded by seed and epoch), the repeats are shuffled,
    and the first ``len(dataset)`` (rounded up to a multiple of ``world_size``) are the
    epoch. The epoch keeps its length, so a run's iterations, LR steps and checkpoints are
    the same as with uniform sampling: what changes is how often each page is seen.
    Ranks take interleaved shares of the same order, like DistributedSampler.

    Args:
        image_labels: the label set of each page (:meth:`Dataset.image_labels`).
        threshold: the class frequency below which a class's pages are repeated (LVIS's
            t; :func:`repeat_factors`).
    """

    def __init__(self, image_labels: Sequence[Set[int]], threshold: float, *, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.factors = torch.tensor(repeat_factors(image_labels, threshold), dtype=torch.float64)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.total = math.ceil(len(image_labels) / world_size) * world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose draw the next iteration gives."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total // self.world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        whole = self.factors.floor()
        repeats = whole + (torch.rand(len(self.factors), generator=generator,
                                      dtype=torch.float64) < self.factors - whole)
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), repeats.long())
        order = indices[torch.randperm(len(indices), generator=generator)]
        if len(order) < self.total:  # fewer pages than ranks: wrap around
            order = order.repeat(math.ceil(self.total / max(len(order), 1)))
        return iter(order[: self.total][self.rank::self.world_size].tolist())
