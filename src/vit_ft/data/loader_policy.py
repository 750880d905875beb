"""How every DataLoader of a run is built: the one rule for the per-device batch, ``drop_last``, pinned
memory, worker processes and their seeds.

The image DataModules, the resumable training order (which must count the batches of an epoch exactly
as the training loader cuts them) and the probe's loaders over cached features all build their
loaders here, so a resumed epoch and a cached-feature probe see the batches a plain run sees.
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from vit_ft.errors import ConfigError


def per_device_batch(global_batch: int, world_size: int, accumulate_grad_batches: int = 1) -> int:
    """The loader batch of one device: ``data.batch_size`` (one optimizer step's) split over devices
    and accumulation steps."""
    div = int(world_size) * int(accumulate_grad_batches)
    if global_batch % div != 0:
        raise ConfigError(
            f"data.batch_size={global_batch} does not divide over {world_size} device(s) x "
            f"{accumulate_grad_batches} accumulation step(s); use a multiple of {div}"
        )
    return global_batch // div


def loader_batch(
    per_device: int, eval_batch_size: int | None, *, train: bool, asked: int | None = None
) -> int:
    """The batch of a loader: training takes the per-device batch; an evaluation pass takes ``asked``
    (e.g. ``probe.extract_batch_size``), else ``data.eval_batch_size``, else the per-device batch."""
    if train:
        return int(per_device)
    return int(asked or eval_batch_size or per_device)


def drops_last(size: int, batch_size: int) -> bool:
    """Whether a training epoch of ``size`` samples leaves out its last, partial batch: only when there
    are at least two full batches (a tiny data set still trains on every sample)."""
    return int(size) >= 2 * int(batch_size)


def batches_per_epoch(size: int, world_size: int, batch_size: int) -> int:
    """Training batches one rank's loader yields per epoch (its share padded as
    :class:`~torch.utils.data.DistributedSampler` pads it)."""
    per_rank = -(-int(size) // int(world_size))
    if drops_last(size, batch_size):
        return per_rank // int(batch_size)
    return -(-per_rank // int(batch_size))


class EvalShareSampler(DistributedSampler):
    """One rank's share of an evaluation split under DDP, without padding: rank ``r`` reads indices
    ``r, r + world, ...`` (shares differ by at most one image). Lightning's own DistributedSampler repeats
    up to ``world - 1`` images to even the shares, and every logged ``val/*`` would count them; the
    evaluators gather over ranks at the epoch's end, so uneven shares need no per-step collective.
    Being a DistributedSampler, Lightning leaves it in place."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self) -> Any:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def eval_share_sampler(ds: Any) -> EvalShareSampler | None:
    """:class:`EvalShareSampler` of ``ds`` for this rank when a process group of 2+ ranks runs; None
    otherwise (one process, or a streamed set, which shards itself)."""
    dist = torch.distributed
    if isinstance(ds, IterableDataset) or not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return EvalShareSampler(ds, world, dist.get_rank()) if world > 1 else None


def seed_worker(worker_id: int) -> None:
    """Worker start: freeze the inherited heap, seed numpy and ``random`` from torch's worker seed."""
    # A forked worker shares the parent's memory copy-on-write until it writes to it; its first full
    # garbage collection would write the GC header of every object it inherited (torch, Lightning, the
    # model: ~140 MiB of pages copied into each worker, benchmarks/bench_worker_memory.py). Frozen
    # objects are never scanned; the worker's own objects are collected as usual.
    gc.freeze()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class LoaderPolicy:
    """Worker processes, pinning and seeding of a DataModule's loaders.

    ``pin_memory=None``: pinned when CUDA is available. ``seed``: seeds the workers of training loaders
    from a generator of its own, so they never draw from torch's global generator (the model's);
    ``None`` keeps torch's default (the loaders over cached features, which have no workers).
    """

    num_workers: int = 0
    pin_memory: bool | None = False
    persistent_workers: bool = False
    seed: int | None = None

    @property
    def pins(self) -> bool:
        return torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)

    def loader(
        self,
        ds: Any,
        batch_size: int,
        *,
        train: bool = False,
        sampler: Any = None,
        collate_fn: Any = None,
        once: bool = False,
        epoch_size: int | None = None,
    ) -> DataLoader:
        """A DataLoader over ``ds``. ``train``: in the training order ``sampler``, dropping the last
        partial batch (:func:`drops_last` of ``epoch_size`` samples, by default ``len(ds)``; not for a
        streamed ``ds``, whose size is unknown). ``once``: a single pass (features, predictions): its
        workers end with it."""
        iterable = isinstance(ds, IterableDataset)
        size = 0 if iterable else int(epoch_size or len(ds))
        return DataLoader(
            ds,
            batch_size=int(batch_size),
            sampler=sampler,
            shuffle=False,
            drop_last=train and not iterable and drops_last(size, batch_size),
            num_workers=int(self.num_workers),
            pin_memory=self.pins,
            persistent_workers=not once and self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_fn,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(int(self.seed))
            if train and self.seed is not None
            else None,
        )
