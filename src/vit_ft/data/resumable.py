"""The training order and augmentation randomness as functions of (seed, epoch, position): what makes
a run resumable mid-epoch, bit for bit.

:class:`EpochSampler` gives each rank its share of a shuffled epoch (the permutation depends only on
``seed`` and ``epoch``), can start ``start`` samples into it (a resumed epoch), and hands the dataset
``(index, sample_seed)`` pairs. :func:`sample_rng` seeds Python's, numpy's and torch's global
generators with that seed around one sample's transform, so a crop or a flip depends on
``(seed, epoch, position in the epoch)`` only — not on which DataLoader worker drew the sample, how many
it drew before, or whether the run was interrupted.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, get_worker_info

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser: a 64-bit integer hash whose outputs are uncorrelated for nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The random seed of the sample at ``position`` (over all ranks) of epoch ``epoch``: 63 bits."""
    return _mix(_mix(_mix(int(seed) & _MASK) ^ int(epoch)) ^ int(position)) >> 1


@contextmanager
def sample_rng(seed: int) -> Iterator[None]:
    """Python's ``random``, numpy's and torch's CPU generator seeded with ``seed`` inside the block.

    In a DataLoader worker they serve nothing else and are left as they are; in the main process
    (``num_workers=0``) their previous states are put back, so the model's dropout and mixup draw the
    same numbers whatever the data loading did."""
    in_worker = get_worker_info() is not None
    if not in_worker:
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if not in_worker:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class EpochSampler(DistributedSampler):
    """One rank's share of each epoch of a map-style data set, as ``(index, sample_seed)`` pairs.

    The order is :class:`~torch.utils.data.DistributedSampler`'s (a permutation seeded with
    ``seed + epoch``, padded to a multiple of ``num_replicas``, every ``num_replicas``-th index from
    ``rank``); being one, Lightning leaves it in place under DDP and calls :meth:`set_epoch` at each
    epoch start. ``start``: samples of this rank's share of ``epoch`` already trained on (a resumed
    epoch begins after them); a new epoch begins at 0. The sample seed is
    :func:`sample_seed` of ``(seed, epoch, position over all ranks)``.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch = int(epoch)
        self.start = int(start)

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start = 0
        super().set_epoch(int(epoch))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        seed, epoch, world, rank = self.seed, self.epoch, self.num_replicas, self.rank
        for pos in range(self.start, len(indices)):
            yield indices[pos], sample_seed(seed, epoch, rank + pos * world)
