"""The order of a training epoch over shards (``data=webdataset``): which sample stands at each position.

The shards go in an order shuffled with ``(seed, epoch)``, each shard's samples through a shuffle buffer
whose draws are seeded with ``(seed, epoch, shard)`` (:class:`EpochPlan`), so position ``p`` of an epoch
is one known sample; :class:`StreamSampler` gives each rank its contiguous block of positions, resumable
as every :class:`~vit_ft.data.resumable.EpochSampler` is. The reading itself is :mod:`vit_ft.data.wds`'s.
"""

from __future__ import annotations

import random

import numpy as np

from vit_ft.data.resumable import EpochSampler, sample_seed


def buffer_permutation(n: int, buffer: int, seed: int) -> np.ndarray:
    """``out[k]`` = the input index of the ``k``-th sample a shuffle buffer of ``buffer`` samples emits
    from a stream of ``n`` (a random one of the buffer each time it is full, then the rest at random)."""
    if buffer <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    rng, buf, out = random.Random(seed), [], []
    for i in range(n):
        buf.append(i)
        if len(buf) >= buffer:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            out.append(buf.pop())
    while buf:
        j = rng.randrange(len(buf))
        buf[j], buf[-1] = buf[-1], buf[j]
        out.append(buf.pop())
    return np.asarray(out, dtype=np.int64)


class EpochPlan:
    """Position -> sample of one training epoch: shards in a ``(seed, epoch)`` order, each through the
    seeded shuffle buffer."""

    def __init__(self, counts: np.ndarray, seed: int, epoch: int, buffer: int, shuffle: bool = True) -> None:
        self.counts, self.seed, self.epoch, self.buffer = counts, int(seed), int(epoch), int(buffer)
        n = len(counts)
        self.order = (
            np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, 7]).permutation(n)
            if shuffle
            else np.arange(n)
        )
        self.starts = np.concatenate([[0], np.cumsum(counts[self.order])]).astype(np.int64)
        self.slot_of = np.empty(n, dtype=np.int64)
        self.slot_of[self.order] = np.arange(n)
        self.shuffle = shuffle
        self._perms: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def perm(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """``(output -> input, input -> output)`` of shard ``s`` this epoch."""
        if s not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            buf = self.buffer if self.shuffle else 0
            out = buffer_permutation(int(self.counts[s]), buf, sample_seed(self.seed, self.epoch, -1 - s))
            inv = np.empty_like(out)
            inv[out] = np.arange(len(out))
            self._perms[s] = (out, inv)
        return self._perms[s]

    def locate(self, position: int) -> tuple[int, int]:
        """``(shard, input index in it)`` of epoch position ``position``."""
        slot = int(np.searchsorted(self.starts, position, side="right")) - 1
        s = int(self.order[slot])
        return s, int(self.perm(s)[0][position - self.starts[slot]])

    def position(self, s: int, j: int) -> int:
        """The epoch position of input ``j`` of shard ``s``."""
        return int(self.starts[self.slot_of[s]] + self.perm(s)[1][j])


class StreamSampler(EpochSampler):
    """An :class:`EpochSampler` over the positions of the epoch's shard stream: rank ``r`` of ``W``
    yields ``(epoch, position)`` for its contiguous block ``[r n, (r+1) n)``, ``n = len(dataset) / W``,
    from ``start`` on."""

    def __iter__(self):
        if self.passes:
            self.epoch, self.start = self.epoch + 1, 0
        self.passes += 1
        base = self.rank * self.num_samples
        for pos in range(self.start, self.num_samples):
            yield self.epoch, base + pos
