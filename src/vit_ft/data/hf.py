"""Hugging Face ``datasets`` as a source: hub ids, local folders (imagefolder, parquet), ``save_to_disk``.

``name`` is a hub id (``user/dataset``), a local folder that ``datasets.load_dataset`` reads (a folder
of class folders, parquet files, ...) or a folder written by ``save_to_disk``. Images are read as raw
bytes (``datasets.Image(decode=False)``) and decoded by :mod:`vit_ft.data.decode`, so they take the same
fast path and bad-image handling as files on disk. Class names come from the ``ClassLabel`` feature
(integer labels without one are named ``"0"``, ``"1"``, ...; string labels are sorted). A label column
that is a ``Sequence(ClassLabel)`` (a label set per row) is :mod:`vit_ft.data.hf_multilabel`'s.

With ``streaming=True`` nothing is downloaded up front: the split is read as an ``IterableDataset``,
shuffled through a buffer, split over DDP ranks (``split_dataset_by_node``) and over DataLoader
workers (by shards, done by ``datasets`` itself).
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from vit_ft.compat import hf_dataset_fingerprint
from vit_ft.data.bad_images import STREAM_SLOTS, skip_or_raise
from vit_ft.data.datamodule import ImageDataModule
from vit_ft.data.decode import BadImageError, load_image
from vit_ft.data.folder import stratified_split
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)

VAL_SPLITS = ("validation", "val", "valid")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_hf(
    name: str,
    *,
    config_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    revision: str | None = None,
):
    """A ``DatasetDict`` (or ``IterableDatasetDict`` when streaming) for a hub id or a local folder."""
    import datasets

    if name is None or str(name).strip() in ("", "???"):
        raise ConfigError("data.name is not set; pass a hub id (data.name=user/dataset) or a local folder")
    name = str(name)
    local = os.path.expanduser(name)
    if os.path.isdir(local) and (
        os.path.isfile(os.path.join(local, "dataset_dict.json"))
        or os.path.isfile(os.path.join(local, "state.json"))
    ):
        ds = datasets.load_from_disk(local)
        if isinstance(ds, datasets.Dataset):
            ds = datasets.DatasetDict(train=ds)
        if streaming:
            ds = datasets.IterableDatasetDict(
                {k: v.to_iterable_dataset(num_shards=min(64, max(1, len(v)))) for k, v in ds.items()}
            )
        return ds
    if os.path.exists(local):
        name = local
    elif name.startswith((".", "/", "~")):
        raise ConfigError(f"data.name={name!r} does not exist; give a hub id or an existing folder")
    try:
        return datasets.load_dataset(
            name, config_name, streaming=streaming, cache_dir=cache_dir, revision=revision
        )
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure: one line naming the data set
        raise ConfigError(
            f"could not load data.name={name!r} with datasets.load_dataset ({type(e).__name__}: {_first_line(e)}); "
            "check the hub id (and network or HF_HUB_OFFLINE), or the folder's contents"
        ) from None


def _check_columns(features: Any, image_column: str, label_column: str, split: str) -> None:
    cols = list(features or {})
    if not cols:
        return
    for key, col in (("image_column", image_column), ("label_column", label_column)):
        if col not in cols:
            raise ConfigError(
                f"data.{key}={col!r} is not a column of split {split!r}; its columns are {cols}"
            )


def class_names_and_labels(ds: Any, label_column: str) -> tuple[list[str], np.ndarray]:
    """Class names (from ``ClassLabel`` when there is one) and the label of every row (int64)."""
    import datasets

    feature = ds.features[label_column]
    col = ds.with_format("arrow")[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), np.asarray(col.to_numpy(), dtype=np.int64)
    values = col.to_numpy(zero_copy_only=False)
    if values.dtype.kind in "iu":
        values = values.astype(np.int64)
        return [str(i) for i in range(int(values.max()) + 1 if len(values) else 0)], values
    names = sorted({str(v) for v in values})
    return names, np.searchsorted(np.array(names), values.astype(str)).astype(np.int64)


def _image_bytes_view(ds: Any, image_column: str) -> Any:
    """Only the image column, undecoded (``{"bytes", "path"}``) when it is a ``datasets.Image``."""
    import datasets

    ds = ds.select_columns([image_column])
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return ds


class HFRecords:
    """Records of a map-style ``datasets.Dataset``: Arrow-backed and memory-mapped, so workers stay flat."""

    def __init__(self, ds: Any, image_column: str, labels: np.ndarray, split: str) -> None:
        self.ds = _image_bytes_view(ds, image_column)
        self.image_column, self.labels, self.split = image_column, labels, split

    def __len__(self) -> int:
        return len(self.labels)

    def source(self, i: int) -> Any:
        return self.ds[int(i)][self.image_column]

    def load(self, i: int):
        return load_image(self.source(i))

    def fingerprint(self) -> str | None:
        """The Arrow table's content hash (what ``datasets`` caches by), None when it has none."""
        return hf_dataset_fingerprint(self.ds)

    def name(self, i: int) -> str:
        try:
            src = self.source(i)
            path = src.get("path") if isinstance(src, dict) else (src if isinstance(src, str) else None)
        except Exception:  # noqa: BLE001 - a name for a message must never fail
            path = None
        return f"{self.split}[{i}]" + (f" ({path})" if path else "")


class StreamingRecords(IterableDataset):
    """An ``IterableDataset`` split: transformed samples, bad images skipped (counted) or one clear error.

    It shards over DDP ranks here and over DataLoader workers through ``datasets`` itself (by shards:
    use data with at least ``num_workers`` shards, e.g. parquet files, for all workers to be busy).
    """

    def __init__(
        self,
        ds: Any,
        image_column: str,
        label_column: str,
        label_of: Any,
        split: str,
        *,
        transform: Any = None,
        on_bad_image: str = "error",
        shuffle_buffer: int = 0,
        seed: int = 0,
        bad_counts: torch.Tensor | None = None,
    ) -> None:
        import datasets

        feature = (ds.features or {}).get(image_column)
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.ds, self.image_column, self.label_column = ds, image_column, label_column
        self.label_of, self.split, self.transform, self.on_bad_image = (
            label_of,
            split,
            transform,
            on_bad_image,
        )
        self.shuffle_buffer, self.seed, self.epoch = int(shuffle_buffer), int(seed), 0
        self.bad_counts = (
            bad_counts if bad_counts is not None else torch.zeros(STREAM_SLOTS, dtype=torch.int64)
        )

    def __iter__(self):
        ds = self.ds
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(
                ds, rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size()
            )
        if self.shuffle_buffer > 0:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(self.epoch)
        self.epoch += 1
        info = torch.utils.data.get_worker_info()
        slot = (info.id if info is not None else 0) % STREAM_SLOTS
        for n, row in enumerate(ds):
            label = self.label_of(row[self.label_column])
            if label < 0:
                continue
            src = row[self.image_column]
            try:
                x = self.transform(src)
            except BadImageError as e:
                where = f"{self.split}[{n}]" + (
                    f" ({e.path})" if e.path not in ("<bytes>", "<image>") else ""
                )
                skip_or_raise(self.on_bad_image, where, e.reason, first=self.epoch == 1)
                if self.epoch == 1:  # each epoch meets it again: counted in the first
                    self.bad_counts[slot] += 1
                continue
            yield x, label


class HashSplit:
    """``filter`` predicate: is this row in val (``want_val``) by a hash of its image bytes?"""

    def __init__(self, image_column: str, fraction: float, seed: int, want_val: bool) -> None:
        self.image_column, self.threshold, self.seed, self.want_val = (
            image_column,
            int(fraction * 2**32),
            seed,
            want_val,
        )

    def __call__(self, row: dict) -> bool:
        src = row[self.image_column]
        if isinstance(src, dict):
            src = src.get("bytes") or src.get("path") or b""
        data = src.encode() if isinstance(src, str) else bytes(src) if src is not None else b""
        h = zlib.crc32(data, zlib.crc32(str(self.seed).encode()))
        return (h < self.threshold) == self.want_val


def _label_of(v: Any) -> int:
    return int(v) if v is not None else -1


class HFDataModule(ImageDataModule):
    """``data=hf``: a Hugging Face data set (hub id, local folder or ``save_to_disk`` folder)."""

    def __init__(
        self,
        name: str | None = None,
        config_name: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        train_split: str = "train",
        val_split: str | None = "validation",
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        hf_cache_dir: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.name, self.config_name, self.revision = name, config_name, revision
        self.image_column, self.label_column = image_column, label_column
        self.train_split, self.val_split = train_split, val_split
        self.streaming, self.shuffle_buffer, self.hf_cache_dir = (
            bool(streaming),
            int(shuffle_buffer),
            hf_cache_dir,
        )

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        dd = load_hf(
            self.name,
            config_name=self.config_name,
            streaming=self.streaming,
            cache_dir=self.hf_cache_dir,
            revision=self.revision,
        )
        if self.train_split not in dd:
            raise ConfigError(
                f"data.train_split={self.train_split!r} is not a split of {self.name!r}; its splits are {sorted(dd)}"
            )
        val_split = self.val_split if self.val_split in dd else None
        if val_split is None and self.val_split not in (None, "validation"):
            raise ConfigError(
                f"data.val_split={self.val_split!r} is not a split of {self.name!r} (it has {sorted(dd)}); "
                "pick one, or set data.val_split=null to split val off train by data.val_fraction"
            )
        if val_split is None and self.val_split is not None:
            val_split = next((s for s in VAL_SPLITS if s in dd), None)
        for split in (self.train_split, val_split):
            if split is not None:
                _check_columns(dd[split].features, self.image_column, self.label_column, split)
        if self.streaming:
            return self._streaming_splits(dd, val_split)
        from vit_ft.data import hf_multilabel  # it builds on HFRecords, so it is imported here

        sets = hf_multilabel.label_sets(dd[self.train_split], self.label_column)
        if sets is not None:  # Sequence(ClassLabel): label sets (a multi-label task, or one label a row)
            return hf_multilabel.label_set_splits(
                dd,
                sets,
                train_split=self.train_split,
                val_split=val_split,
                image_column=self.image_column,
                label_column=self.label_column,
                val_fraction=self.val_fraction,
                seed=self.seed,
            )

        class_names, labels = class_names_and_labels(dd[self.train_split], self.label_column)
        train = dd[self.train_split]
        if val_split is not None:
            val = dd[val_split]
            val_names, val_labels = class_names_and_labels(val, self.label_column)
            if val_names != class_names:
                if set(val_names) != set(class_names):
                    raise ConfigError(
                        f"splits {self.train_split!r} and {val_split!r} have different classes: only in "
                        f"{self.train_split}: {sorted(set(class_names) - set(val_names))[:10]}, only in {val_split}: "
                        f"{sorted(set(val_names) - set(class_names))[:10]}"
                    )
                remap = np.array([class_names.index(n) for n in val_names], np.int64)
                val_labels = np.where(val_labels >= 0, remap[np.maximum(val_labels, 0)], -1)
            splits = {"train": (train, labels), "val": (val, val_labels)}
        else:
            keep = np.flatnonzero(labels >= 0)
            tr, va = stratified_split(labels[keep], self.val_fraction, self.seed)
            splits = {
                k: (train.select(keep[idx]), labels[keep[idx]]) for k, idx in (("train", tr), ("val", va))
            }
        out = {}
        for k, (ds, lab) in splits.items():
            unlabelled = np.flatnonzero(lab < 0)
            if len(unlabelled):
                log.warning("%s: leaving out %d row(s) without a label", k, len(unlabelled))
                idx = np.flatnonzero(lab >= 0)
                ds, lab = ds.select(idx), lab[idx]
            out[k] = HFRecords(ds, self.image_column, lab, k)
        return class_names, out

    def single_label_rows(self) -> None:
        from vit_ft.data import hf_multilabel

        hf_multilabel.single_label_rows(self.splits or {})

    def _streaming_splits(self, dd: Any, val_split: str | None) -> tuple[list[str], dict[str, Any]]:
        import datasets

        train = dd[self.train_split]
        feature = (train.features or {}).get(self.label_column)
        if not isinstance(feature, datasets.ClassLabel):
            raise ConfigError(
                f"streaming needs the label column {self.label_column!r} to be a ClassLabel (to know the classes "
                f"without reading everything); it is {feature!r}. Use data.streaming=false"
            )
        class_names = list(feature.names)
        if val_split is not None:
            val = dd[val_split]
        else:
            # No length to split by: a row goes to val by a hash of its image bytes, so the split is
            # the same whatever the sharding, worker count or epoch.
            if isinstance(feature_img := (train.features or {}).get(self.image_column), datasets.Image):
                train = train.cast_column(self.image_column, datasets.Image(decode=False))
            del feature_img
            val = train.filter(HashSplit(self.image_column, self.val_fraction, self.seed, True))
            train = train.filter(HashSplit(self.image_column, self.val_fraction, self.seed, False))
        return class_names, {"train": train, "val": val}

    # -- streaming loaders: an IterableDataset per split ---------------------------------------
    def dataset(self, split: str, transform: Any, train: bool):
        if not self.streaming:
            return super().dataset(split, transform, train)
        return StreamingRecords(
            self.splits[split],
            self.image_column,
            self.label_column,
            _label_of,
            split,
            transform=transform,
            on_bad_image=self.on_bad_image,
            shuffle_buffer=self.shuffle_buffer if train else 0,
            seed=self.seed,
            bad_counts=self.ledger.stream_slots(split),
        )
