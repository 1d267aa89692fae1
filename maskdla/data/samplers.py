"""Batch samplers of a training run: :class:`EpochBatches`, one rank's batches over the
rest of a run, built on :class:`maskdla.data.dataset.GroupedBatchSampler`."""
from __future__ import annotations

import itertools
from typing import Iterator, List, Optional

from torch.utils.data import DistributedSampler

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
                 world_size: int = 1):
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
