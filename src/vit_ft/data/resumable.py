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

import logging
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, get_worker_info

from vit_ft.compat import batches_done_in_epoch
from vit_ft.data.loader_policy import batches_per_epoch

log = logging.getLogger(__name__)

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
    """One rank's share of each epoch of a map-style data set, as ``(index, sample_seed)`` pairs
    (plain indices with ``with_seeds=False``).

    The order is :class:`~torch.utils.data.DistributedSampler`'s (a permutation seeded with
    ``seed + epoch``, padded to a multiple of ``num_replicas``, every ``num_replicas``-th index from
    ``rank``); being one, Lightning leaves it in place under DDP and calls :meth:`set_epoch` at each
    epoch start. ``start``: samples of this rank's share of ``epoch`` already trained on (a resumed
    epoch begins after them); a new epoch begins at 0. The sample seed is
    :func:`sample_seed` of ``(seed, epoch, position over all ranks)``. Iterated again without
    :meth:`set_epoch` (outside a Trainer), it moves on to the next epoch, reshuffling as a
    ``RandomSampler`` would.
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
        with_seeds: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.with_seeds = with_seeds
        self.epoch = int(epoch)
        self.start = int(start)
        self.passes = 0  # iterations begun since the epoch was set

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start = 0
        super().set_epoch(int(epoch))
        self.passes = 0

    def epoch_indices(self) -> list[int]:
        """This rank's whole share of the current epoch, in order (``start`` not yet applied)."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[Any]:
        if self.passes:
            self.epoch, self.start = self.epoch + 1, 0
        self.passes += 1
        indices = self.epoch_indices()
        seed, epoch, world, rank = self.seed, self.epoch, self.num_replicas, self.rank
        if not self.with_seeds:  # a data set without randomness of its own (cached features)
            yield from indices[self.start :]
            return
        for pos in range(self.start, len(indices)):
            yield indices[pos], sample_seed(seed, epoch, rank + pos * world)


SAMPLERS = ("none", "balanced", "sqrt")
_SAMPLER_SALT = 0x2F76_DD0D_2676  # the weighted draws' stream, apart from the sample seeds'


def class_sampling_weights(labels: Any, mode: str) -> torch.Tensor:
    """Per-sample drawing weights (float64) for ``data.sampler=mode``: ``balanced`` gives each class
    the same total weight (``1/count`` per sample: classes drawn equally often), ``sqrt`` gives
    ``1/sqrt(count)`` per sample (a class is drawn in proportion to ``sqrt(count)``). Unlabelled samples
    (label < 0) are never drawn."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if mode not in SAMPLERS[1:]:
        raise ValueError(f"no weights for data.sampler={mode!r}")
    known = y >= 0
    counts = torch.bincount(y[known]).double() if bool(known.any()) else torch.zeros(1, dtype=torch.float64)
    per_class = torch.where(counts > 0, counts, torch.ones_like(counts))
    per_class = 1.0 / (per_class if mode == "balanced" else per_class.sqrt())
    w = torch.zeros(len(y), dtype=torch.float64)
    w[known] = per_class[y[known]]
    return w


class WeightedEpochSampler(EpochSampler):
    """:class:`EpochSampler` drawing with replacement in proportion to per-sample ``weights``
    (``data.sampler=balanced|sqrt``, see :func:`class_sampling_weights`).

    An epoch is ``samples_per_epoch`` draws (default: the data set's size), padded to a multiple of
    ``num_replicas`` so every rank gets as many; they are made at once by ``torch.multinomial`` with a
    generator seeded from ``(seed, epoch)`` only, and rank ``r`` takes every ``num_replicas``-th from
    ``r``: the order is a pure function of ``(seed, epoch, position)``, so ``start`` resumes it exactly,
    whatever the workers or an interruption did."""

    def __init__(
        self, dataset: Any, weights: torch.Tensor, *, samples_per_epoch: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if len(self.weights) != len(dataset) or not bool((self.weights > 0).any()):
            raise ValueError("one positive weight per sample is needed")
        self.epoch_size = int(samples_per_epoch or len(dataset))
        self.num_samples = -(-self.epoch_size // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def epoch_indices(self) -> list[int]:
        g = torch.Generator().manual_seed(_mix(_mix(int(self.seed) & _MASK) ^ self.epoch) ^ _SAMPLER_SALT)
        if len(self.weights) <= 2**24:  # torch.multinomial's most categories
            drawn = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
        else:  # the same distribution by the inverse CDF
            cdf = self.weights.cumsum(0)
            u = torch.rand(self.total_size, generator=g, dtype=torch.float64) * cdf[-1]
            drawn = torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)
        return drawn[self.rank :: self.num_replicas].tolist()


class ResumableOrder:
    """DataModule mixin: the training order as an :class:`EpochSampler` whose position travels in
    checkpoints (Lightning saves and restores a DataModule's ``state_dict``).

    Uses the DataModule's ``trainer`` (ranks; loop progress when saving), ``seed`` (the order's),
    ``sampler`` (``data.sampler``: ``none`` or a class-weighted draw) and ``samples_per_epoch``."""

    trainer: Any
    seed: int
    sampler: str = "none"
    samples_per_epoch: int | None = None

    def epoch_size(self, ds: Any) -> int:
        """Samples of one training epoch over all ranks (before padding)."""
        if self.sampler == "none":
            return len(ds)
        return int(self.samples_per_epoch or len(ds))

    def epoch_sampler(
        self, ds: Any, batch_size: int, *, with_seeds: bool = True, labels: Any = None
    ) -> EpochSampler:
        """The training order over this rank's share of ``ds`` (loader batch ``batch_size``), starting
        where a restored checkpoint left it (see :meth:`load_state_dict`). Outside a Trainer, a new
        loader goes on with the epoch after the last one's, reshuffling as a ``RandomSampler`` would.
        ``labels`` (one per sample of ``ds``): what ``data.sampler=balanced|sqrt`` weighs by."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        epoch, start = 0, 0
        order = getattr(self, "_resume_order", None)
        previous = getattr(self, "_train_sampler", None)
        if order:
            epoch, batches = int(order["epoch"]), int(order["batches"])
            layout = {"size": self.epoch_size(ds), "num_replicas": world, "batch_size": batch_size}
            if self.sampler != "none" or "sampler" in order:
                layout["sampler"] = self.sampler
            if any(order.get(k, "none" if k == "sampler" else None) != v for k, v in layout.items()):
                log.warning(
                    "resuming epoch %d with another data size, device count or batch (%s, now %s): "
                    "the rest of the epoch is not what an uninterrupted run would have trained on",
                    epoch,
                    {k: order.get(k) for k in layout},
                    layout,
                )
            if batches >= batches_per_epoch(
                self.epoch_size(ds), world, batch_size
            ):  # saved at the end of the epoch: the next one starts afresh
                epoch, batches = epoch + 1, 0
            start = batches * batch_size
        elif trainer is None and previous is not None and previous.passes:
            epoch = previous.epoch + 1
        self._train_batch_size = int(batch_size)
        kwargs = dict(num_replicas=world, rank=rank, seed=int(self.seed), epoch=epoch, start=start)
        if self.sampler == "none":
            self._train_sampler = EpochSampler(ds, with_seeds=with_seeds, **kwargs)
        else:
            if labels is None:
                raise ValueError(f"data.sampler={self.sampler} needs the training labels")
            self._train_sampler = WeightedEpochSampler(
                ds,
                class_sampling_weights(labels, self.sampler),
                samples_per_epoch=self.samples_per_epoch,
                with_seeds=with_seeds,
                **kwargs,
            )
        return self._train_sampler

    def state_dict(self) -> dict[str, Any]:
        """Where the training order stands (in every checkpoint of a fit): the epoch, the loader batches
        of it already trained on, and the layout they were counted in."""
        sampler, trainer = getattr(self, "_train_sampler", None), self.trainer
        if sampler is None or trainer is None:
            return {}
        order = {
            "epoch": int(sampler.epoch),
            "batches": batches_done_in_epoch(trainer),
            "seed": int(sampler.seed),
            "size": int(getattr(sampler, "epoch_size", len(sampler.dataset))),
            "num_replicas": int(sampler.num_replicas),
            "batch_size": int(getattr(self, "_train_batch_size", 0)),
        }
        if isinstance(sampler, WeightedEpochSampler):
            order["sampler"] = self.sampler
        return {"train_order": order}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training order of a checkpoint: its epoch, after the batches it had trained on.

        Lightning restores this before it builds the training DataLoader (its own restore of stateful
        loaders comes after ``configure_optimizers`` has built one, too late: the loader is never
        restored), so the loader starts in the right place."""
        order = (state_dict or {}).get("train_order")
        if not order:
            return
        self._resume_order = dict(order)
        if int(order.get("seed", self.seed)) != int(self.seed):
            log.warning("resuming a run shuffled with seed %s under seed %s", order.get("seed"), self.seed)
        # Lightning warns that a mid-epoch resume is inexact unless the DataLoader itself is "stateful";
        # this one resumes exactly through the DataModule's state instead.
        warnings.filterwarnings(
            "ignore", message=r"You're resuming from a checkpoint that ended before the epoch"
        )
