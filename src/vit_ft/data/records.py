"""Records and the dataset over them: what a DataLoader worker runs for each image.

A source provides, per split, *records*: ``len(records)``, ``records.load(i) -> PIL RGB image`` and
``records.labels`` (int64 numpy array); :class:`TransformedDataset` adds the transform and the
handling of bad images, :class:`IndexedDataset` the record index (for passes whose shares of a split
are merged over ranks), :func:`seed_worker` the per-worker setup.
"""

from __future__ import annotations

import gc
import logging
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from vit_ft.data.decode import BadImageError, load_image
from vit_ft.data.folder import FileIndex
from vit_ft.data.resumable import sample_rng
from vit_ft.data.transforms import PlannedJpeg
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)


class FileRecords:
    """Records backed by a :class:`FileIndex` of image paths."""

    def __init__(self, index: FileIndex, draft_size: int | None = None) -> None:
        self.index = index
        self.labels = index.labels
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.index)

    def source(self, i: int) -> str:
        """What the transforms decode: here the path (they read and decode it themselves)."""
        return self.index.path(i)

    def load(self, i: int):
        return load_image(self.index.path(i), draft_size=self.draft_size)

    def name(self, i: int) -> str:
        return self.index.path(i)


class UnusableImageError(ConfigError):
    """A bad image in ``on_bad_image=error`` mode: one line naming the file and the way out.

    DataLoader workers re-raise an exception in the main process as ``type(msg)`` where ``msg`` holds
    the worker's whole traceback; this class keeps only the original one-line message.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            message = last.split(": ", 1)[1] if last.startswith(("vit_ft.", "UnusableImageError")) else last
        super().__init__(message)


def unusable_message(path: str, reason: str) -> str:
    return f"unusable image {path}: {reason}; fix or remove it, or set data.on_bad_image=skip"


class TransformedDataset(Dataset):
    """``records`` + ``transform``; bad images raise one clear error or are skipped and flagged.

    ``bad`` is a uint8 tensor in shared memory, one flag per record, written by whichever worker
    process meets a bad file: the main process reads it for :meth:`ImageDataModule.bad_image_report`,
    each bad file is logged once (the first time), and later epochs skip it without reading it.
    """

    def __init__(
        self, records: Any, transform: Any, on_bad_image: str = "error", bad: torch.Tensor | None = None
    ) -> None:
        self.records, self.transform, self.on_bad_image = records, transform, on_bad_image
        self.bad = bad if bad is not None else torch.zeros(len(records), dtype=torch.uint8).share_memory_()
        self._source = getattr(records, "source", None)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]):
        """``key``: a record index, or ``(index, sample_seed)`` from an :class:`EpochSampler`: the
        transform then draws its randomness from that seed alone (see :func:`sample_rng`)."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        if self.bad[i]:
            return None
        try:
            if seed is None:
                x = self._transform(i)
            else:
                with sample_rng(seed):
                    x = self._transform(i)
        except BadImageError as e:
            name = self.records.name(i) if hasattr(self.records, "name") else e.path
            if self.on_bad_image == "skip":
                self.bad[i] = 1
                log.warning("skipping unusable image %s (%s)", name, e.reason)
                return None
            raise UnusableImageError(unusable_message(name, e.reason)) from None
        if isinstance(x, PlannedJpeg):
            x = x._replace(index=i)
        return x, int(self.records.labels[i])

    def _transform(self, i: int) -> Any:
        if self._source is not None:
            return self.transform(self._source(i))
        return self.transform(self.records.load(i))


class IndexedDataset(Dataset):
    """``(index, image, label)`` of a map-style dataset of ``(image, label)`` (or ``None`` for a skipped
    image): the record index lets the shares that ranks computed be merged exactly, one row per record."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.ds[i]
        return None if item is None else (i, *item)


def collate_skipping_none(batch: list) -> Any:
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


def seed_worker(worker_id: int) -> None:
    # A forked worker shares the parent's memory copy-on-write until it writes to it; its first full
    # garbage collection would write the GC header of every object it inherited (torch, Lightning, the
    # model: ~140 MiB of pages copied into each worker, benchmarks/bench_worker_memory.py). Frozen
    # objects are never scanned; the worker's own objects are collected as usual.
    gc.freeze()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
