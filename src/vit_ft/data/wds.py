"""``data=webdataset``: train and evaluate on WebDataset tar shards, exactly resumable, equal on every rank.

The shards (written by :mod:`vit_ft.data.shards`, or any WebDataset of ``{key}.jpg|png|...`` +
``{key}.cls``) are read sequentially from local paths, ``pipe:`` commands, http(s) URLs or ``hf://``
(webdataset's ``gopen``), brace patterns expanded. The index (``index.json`` beside the shards, or
``data.index``) gives each shard's sample count and labels, so everything is known before reading:

- **The epoch is a pure function of (seed, epoch)** (:mod:`vit_ft.data.shard_order`). Its stream is the
  shards in an order shuffled with ``(seed, epoch)``, each shard's samples through a shuffle buffer of
  ``data.shuffle_buffer`` whose draws are seeded with ``(seed, epoch, shard)``: position ``p`` of the
  epoch is one known sample.
- **Equal ranks, honest lengths.** An epoch trains on ``floor(total / ranks)`` samples per rank (the last
  ``total mod ranks`` positions of the epoch's stream are left out; they change with the shard order):
  rank ``r`` takes the contiguous block ``[r n, (r+1) n)``, so every rank yields the same number of
  batches however unevenly the shards split, and the loader's length is what it yields.
- **Exact resume.** The training order is an :class:`~vit_ft.data.resumable.EpochSampler` over epoch
  positions (:class:`~vit_ft.data.shard_order.StreamSampler`), resumed by the DataModule's state like a
  folder run's; a sample's augmentation draws from ``sample_rng(sample_seed(seed, epoch, position))``.
  Skipping the positions already trained on reads tar headers only (local files are skipped with seeks).
- **Readers stream.** The dataset is map-style over positions (so Lightning keeps the sampler and
  counts batches), but each DataLoader worker keeps one tar open and reads forward: a batch's samples
  are consecutive positions of the stream; bytes of samples the buffer holds back are kept only for the
  positions this worker will be asked for (at most about ``shuffle_buffer`` samples).

Evaluation splits are read in index order (Lightning's sampler spreads them over ranks); the probe, k-NN
and predictions get each sample once, by its index-order id. Bad images follow ``data.on_bad_image``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vit_ft.data.datamodule import ImageDataModule
from vit_ft.data.decode import BadImageError
from vit_ft.data.records import transformed
from vit_ft.data.resumable import EpochSampler, sample_seed
from vit_ft.data.shard_order import EpochPlan, StreamSampler
from vit_ft.data.shards import IMAGE_EXTS
from vit_ft.data.tar_stream import default_index, expand_urls, iter_members, load_index, scan_shard
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)

_IMAGE_EXTS = frozenset(IMAGE_EXTS)


# -- a split: shards, counts, labels -------------------------------------------------------------
class ShardSplit:
    """The records of one split of shards: ``len``, ``labels`` (index order: shard by shard), names."""

    def __init__(
        self, urls: list[str], counts: list[int], labels: np.ndarray, split: str, source: str | None = None
    ) -> None:
        self.urls, self.split, self.source = list(urls), split, source  # source: the index's fingerprint
        self.cache_dir: str | None = None  # data.shard_cache: remote shards read from a local copy
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.labels) != int(self.offsets[-1]):
            raise ConfigError(f"the {split} shards' labels ({len(self.labels)}) do not match their counts")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """``(shard number, sample index in the shard)`` of index-order id ``i``."""
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return s, int(i - self.offsets[s])

    def name(self, i: int) -> str:
        s, j = self.locate(i)
        return f"{self.urls[s]} (sample {j})"

    def fingerprint(self) -> str:
        return json.dumps([self.urls, self.counts.tolist(), self.source])


def load_split(spec: Any, split: str, index_url: str | None, key: str) -> tuple[ShardSplit, dict | None]:
    """The :class:`ShardSplit` of ``spec`` and the index it came from (counts from the index, or a header
    scan of every shard when there is none)."""
    urls = expand_urls(spec, key)
    index_url = index_url or default_index(urls[0])
    index = load_index(index_url) if index_url else None
    known = {}
    for entries in ((index or {}).get("splits") or {}).values():
        for e in entries["shards"]:
            known[e["name"]] = e
    counts, labels = [], []
    if index is not None:
        for u in urls:
            e = known.get(u.rsplit("/", 1)[-1].split("?")[0])
            if e is None:
                raise ConfigError(
                    f"shard {u!r} is not in the index {index_url}; point data.index at the index written "
                    "with these shards (python -m vit_ft.data.shards writes it)"
                )
            counts.append(int(e["count"]))
            labels.extend(e["labels"])
    else:
        log.warning(
            "%s: no shard index (%s); reading every shard's headers to count its samples", key, index_url
        )
        for u in urls:
            got = scan_shard(u)
            counts.append(len(got))
            labels.extend(got)
        if any(c < 0 for c in labels):
            raise ConfigError(
                f"{key}: a sample has no .cls label; write shards with python -m vit_ft.data.shards"
            )
    source = ((index or {}).get("source") or {}).get("fingerprint")
    return ShardSplit(urls, counts, np.asarray(labels, np.int64), split, source), index


# -- reading -------------------------------------------------------------------------------------
class ShardReader:
    """One process's reading state: one open shard, read forward; bytes of samples it will be asked for
    later (``want``) kept, every other one skipped by its header."""

    MAX_KEPT = 10_000  # samples held back at most (a full buffer is ~data.shuffle_buffer); beyond: re-read

    def __init__(self, split: ShardSplit) -> None:
        self.split = split
        self.shard: int | None = None
        self._it: Any = None
        self.cursor = -1  # sample index of the last member read in the open shard
        self.kept: dict[int, tuple[bytes, str]] = {}
        self.opened = 0  # shards opened (tests, benchmark)

    def _open(self, s: int) -> None:
        self.close()
        members = iter_members(self.split.urls[s], self.split.cache_dir)
        self.shard, self._it, self.cursor, self.kept = s, members, -1, {}
        self.opened += 1

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
        self._it = None

    def get(self, s: int, j: int, want: Any = None) -> tuple[bytes, str]:
        """The image bytes and extension of sample ``j`` of shard ``s``. ``want(j2)``: keep sample
        ``j2``'s bytes if it is passed on the way (it will be asked for later)."""
        if s != self.shard or (j <= self.cursor and j not in self.kept):
            self._open(s)
        if j in self.kept:
            return self.kept.pop(j)
        for idx, ext, read in self._it:
            self.cursor = idx
            if ext in _IMAGE_EXTS and (idx == j or (want is not None and want(idx))):
                if idx not in self.kept:
                    data = read()
                    if idx == j:
                        return data, ext
                    if len(self.kept) < self.MAX_KEPT:
                        self.kept[idx] = (data, ext)
            if idx > j:
                raise BadImageError(
                    self.split.name(int(self.split.offsets[s]) + j), "no image file in the sample"
                )
        raise ConfigError(
            f"shard {self.split.urls[s]} ends before sample {j}: it holds fewer samples than its index says; "
            "write the index again with the shards (python -m vit_ft.data.shards)"
        )


class ShardDataset(Dataset):
    """A split of shards through ``transform``. Keys: an index-order id (evaluation) or, for training,
    ``(epoch, position)`` from a :class:`StreamSampler`. ``size``: the dataset's length (training: the
    samples an epoch uses over all ranks)."""

    def __init__(
        self,
        split: ShardSplit,
        transform: Any,
        *,
        on_bad_image: str = "error",
        bad: torch.Tensor | None = None,
        seed: int = 0,
        buffer: int = 0,
        train: bool = False,
        size: int | None = None,
    ) -> None:
        self.split, self.transform, self.on_bad_image = split, transform, on_bad_image
        self.bad = bad if bad is not None else torch.zeros(len(split), dtype=torch.uint8).share_memory_()
        self.seed, self.buffer, self.train = int(seed), int(buffer), bool(train)
        self.size = len(split) if size is None else int(size)
        self.layout: tuple[int, int, int] | None = None  # training: (rank start, rank samples, loader batch)
        self._plan: EpochPlan | None = None
        self._reader: ShardReader | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None  # open files stay in their process
        return state

    def __len__(self) -> int:
        return self.size

    def plan(self, epoch: int) -> EpochPlan:
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = EpochPlan(self.split.counts, self.seed, epoch, self.buffer, shuffle=self.train)
        return self._plan

    @property
    def reader(self) -> ShardReader:
        if self._reader is None:
            self._reader = ShardReader(self.split)
        return self._reader

    def _want(self, plan: EpochPlan, s: int, now: int) -> Any:
        """Which samples of shard ``s`` this process will be asked for after position ``now``: those of
        its rank's block in the loader batches it serves (batch ``t`` goes to worker ``t % workers``)."""
        if self.layout is None:
            return None
        start, n, bs = self.layout
        info = get_worker_info()
        k, w = (info.num_workers, info.id) if info is not None else (1, 0)

        def want(j: int) -> bool:
            p = plan.position(s, j)
            return now < p < start + n and ((p - start) // bs) % k == w

        return want

    def __getitem__(self, key: int | tuple[int, int]):
        if isinstance(key, tuple):  # training: (epoch, position)
            epoch, position = int(key[0]), int(key[1])
            plan = self.plan(epoch)
            s, j = plan.locate(position)
            seed = sample_seed(self.seed, epoch, position)
            want = self._want(plan, s, position)
        else:
            s, j = self.split.locate(int(key))
            seed, want = None, None
        i = int(self.split.offsets[s]) + j
        x = transformed(
            self.split,
            i,
            seed,
            lambda: self.transform(self.reader.get(s, j, want)[0]),
            self.bad,
            self.on_bad_image,
        )
        return None if x is None else (x, int(self.split.labels[i]))


# -- the DataModule ------------------------------------------------------------------------------
class WebDatasetDataModule(ImageDataModule):
    """``data=webdataset``: ``train`` / ``val`` / ``test`` shard paths or URLs (brace patterns, lists)."""

    def __init__(
        self,
        train: Any = None,
        val: Any = None,
        test: Any = None,
        index: str | None = None,
        classes: list[str] | None = None,
        shuffle_buffer: int = 1000,
        shard_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(shuffle_buffer) < 0:
            raise ConfigError(f"data.shuffle_buffer={shuffle_buffer!r} must be 0 (no shuffling) or more")
        self.train_urls, self.val_urls, self.test_urls = train, val, test
        self.index, self.classes, self.shuffle_buffer = index, classes, int(shuffle_buffer)
        self.shard_cache = os.path.expanduser(str(shard_cache)) if shard_cache else None
        if self.shard_cache:  # checked here: a worker that cannot write there would fail mid-epoch
            try:
                os.makedirs(self.shard_cache, exist_ok=True)
                writable = os.access(self.shard_cache, os.W_OK)
            except OSError as e:
                writable, why = False, e.strerror
            else:
                why = "not writable"
            if not writable:
                raise ConfigError(
                    f"data.shard_cache={shard_cache!r} cannot hold the shards ({why}); pass a writable folder "
                    "on the node's local disk, or data.shard_cache=null to stream them"
                )

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        splits: dict[str, Any] = {}
        train, index = load_split(self.train_urls, "train", self.index, "data.train")
        splits["train"] = train
        val = self.val_urls
        if val is None:
            entry = ((index or {}).get("splits") or {}).get("val")
            if entry is None:
                raise ConfigError(
                    "data.val is not set and the shard index has no val split; pass data.val=<val shards>"
                )
            val = [train.urls[0].rsplit("/", 1)[0] + "/" + e["name"] for e in entry["shards"]]
        splits["val"], _ = load_split(val, "val", self.index, "data.val")
        if self.test_urls is not None:
            splits["test"], _ = load_split(self.test_urls, "test", self.index, "data.test")
        for shard_split in splits.values():  # remote shards read from their local copy (data.shard_cache)
            shard_split.cache_dir = self.shard_cache
        n_classes = 1 + max(int(r.labels.max(initial=-1)) for r in splits.values())
        names = list(self.classes) if self.classes else (index or {}).get("classes")
        if not names:
            names = [str(c) for c in range(n_classes)]
        if len(names) < n_classes:
            raise ConfigError(
                f"the shards have label {n_classes - 1} but {len(names)} class names {names[:5]}...; "
                "give data.classes all the class names (or use the shards' index)"
            )
        return list(names), splits

    def dataset(self, split: str, transform: Any, train: bool) -> Dataset:
        records = self.splits[split]
        size = None
        if train:
            world = self.trainer.world_size if self.trainer is not None else 1
            size = len(records) // world * world
            if size == 0:
                raise ConfigError(
                    f"the train shards hold {len(records)} samples, fewer than the {world} ranks"
                )
        return ShardDataset(
            records,
            transform,
            on_bad_image=self.on_bad_image,
            bad=self.ledger.record_flags(split, len(records)),
            seed=int(self.seed),
            buffer=self.shuffle_buffer,
            train=train,
            size=size,
        )

    def epoch_sampler(
        self, ds: Any, batch_size: int, *, with_seeds: bool = True, labels: Any = None
    ) -> EpochSampler:
        if self.sampler != "none":  # a weighted draw reads images in any order; shards are read forward
            raise ConfigError(
                f"data.sampler={self.sampler} needs random access to the images, but data=webdataset reads "
                "its shards in order; use data.sampler=none with shards (or model.class_weights=balanced)"
            )
        base = super().epoch_sampler(ds, batch_size, with_seeds=with_seeds)
        sampler = StreamSampler(
            ds,
            num_replicas=base.num_replicas,
            rank=base.rank,
            seed=base.seed,
            epoch=base.epoch,
            start=base.start,
        )
        if isinstance(ds, ShardDataset):
            ds.layout = (sampler.rank * sampler.num_samples, sampler.num_samples, int(batch_size))
        self._train_sampler = sampler
        return sampler
