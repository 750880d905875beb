"""Records and the dataset over them: what a DataLoader worker runs for each image.

A source provides, per split, *records*: ``len(records)``, ``records.load(i) -> PIL RGB image`` and
``records.labels`` (int64 numpy array); :class:`TransformedDataset` adds the transform and the
handling of bad images, :class:`IndexedDataset` the record index (for passes whose shares of a split
are merged over ranks). :func:`transformed` is what a worker gives for one record, for these and for
the shards' dataset (:mod:`vit_ft.data.wds`); what a bad image leads to is :mod:`vit_ft.data.bad_images`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from vit_ft.data.bad_images import skip_or_raise
from vit_ft.data.decode import BadImageError, load_image
from vit_ft.data.folder import FileIndex
from vit_ft.data.resumable import sample_rng
from vit_ft.data.transforms import PlannedJpeg


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
        x = transformed(self.records, i, seed, lambda: self._transform(i), self.bad, self.on_bad_image)
        if x is None:
            return None
        if getattr(self.records, "multilabel", False):  # a multi-label task: the multi-hot float vector
            return x, self.records.multi_hot(i)
        return x, int(self.records.labels[i])

    def _transform(self, i: int) -> Any:
        if self._source is not None:
            return self.transform(self._source(i))
        return self.transform(self.records.load(i))


def transformed(
    records: Any, i: int, seed: int | None, make: Callable[[], Any], bad: torch.Tensor, on_bad_image: str
) -> Any:
    """What a worker gives for record ``i`` of a map-style split: ``make()`` (the record through its
    transform), drawing its randomness from ``seed`` alone when there is one (:func:`sample_rng`). A bad
    image gives None, flagged in ``bad`` (shared memory: never read again), or one clear error, as
    ``on_bad_image`` says; a record already flagged gives None at once."""
    if bad[i]:
        return None
    try:
        with nullcontext() if seed is None else sample_rng(seed):
            x = make()
    except BadImageError as e:
        skip_or_raise(on_bad_image, records.name(i) if hasattr(records, "name") else e.path, e.reason)
        bad[i] = 1
        return None
    return x._replace(index=i) if isinstance(x, PlannedJpeg) else x


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
