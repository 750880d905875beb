"""Hugging Face label sets: a label column that is a ``Sequence(ClassLabel)`` (``data=hf``, not streamed).

Each row's label set is held in compressed rows (``ptr``, ``ids``: flat, so DataLoader workers' memory
stays flat), as a manifest's are; the target is the multi-hot float vector once the data module decides
the task is multi-label (:meth:`~vit_ft.data.datamodule.ImageDataModule.configure_task`). A single-label
task takes each row's first label and leaves out the rows without one. :mod:`vit_ft.data.hf` dispatches
here when the train split's label column is such a sequence.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from vit_ft.data.folder import stratified_split
from vit_ft.data.hf import HFRecords
from vit_ft.data.manifest import multi_hot_row, multi_hot_rows
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)


class HFLabelSetRecords(HFRecords):
    """Records whose label column is a ``Sequence(ClassLabel)``: each row's label set in compressed rows
    (``ptr``, ``ids``); ``labels`` is each row's first label (``-1``: none); ``multilabel`` (set by the
    data module once the task is decided) makes the target multi-hot."""

    def __init__(
        self, ds: Any, image_column: str, ptr: np.ndarray, ids: np.ndarray, k: int, split: str
    ) -> None:
        first = np.where(
            np.diff(ptr) > 0, ids[np.minimum(ptr[:-1], max(len(ids) - 1, 0))] if len(ids) else -1, -1
        )
        super().__init__(ds, image_column, first.astype(np.int64), split)
        self.ptr, self.ids, self.num_classes, self.multilabel = ptr, ids, int(k), False

    def label_counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    def multi_hot(self, i: int) -> torch.Tensor:
        return multi_hot_row(self.ids[self.ptr[i] : self.ptr[i + 1]], self.num_classes)

    def multi_hot_all(self) -> np.ndarray:
        return multi_hot_rows(self.ptr, self.ids, self.num_classes)

    def subset(self, keep: np.ndarray) -> HFLabelSetRecords:
        sets = [self.ids[self.ptr[i] : self.ptr[i + 1]] for i in keep]
        ptr = np.zeros(len(keep) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(x) for x in sets]) if len(sets) else []
        ids = np.concatenate(sets).astype(np.int64) if sets else np.zeros(0, np.int64)
        return HFLabelSetRecords(
            self.ds.select(keep), self.image_column, ptr, ids, self.num_classes, self.split
        )


def label_sets(ds: Any, label_column: str) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """``(class names, row offsets, class ids)`` of a ``Sequence(ClassLabel)`` column; None for another."""
    import datasets

    feature = ds.features[label_column]
    inner = getattr(feature, "feature", None)
    if not isinstance(
        feature, (datasets.Sequence, getattr(datasets, "List", datasets.Sequence))
    ) or not isinstance(inner, datasets.ClassLabel):
        return None
    col = ds.with_format("arrow")[label_column].combine_chunks()
    if len(col) == 0:
        return list(inner.names), np.zeros(1, np.int64), np.zeros(0, np.int64)
    ptr = np.asarray(col.offsets.to_numpy(), dtype=np.int64)
    ptr = ptr - ptr[0]
    ids = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.int64)
    return list(inner.names), ptr, ids


def label_set_splits(
    dd: Any,
    sets: tuple,
    *,
    train_split: str,
    val_split: str | None,
    image_column: str,
    label_column: str,
    val_fraction: float,
    seed: int,
) -> tuple[list[str], dict[str, Any]]:
    """``(class names, {"train", "val": HFLabelSetRecords})`` of ``dd`` whose train split has the label
    sets ``sets`` (:func:`label_sets`); no val split: val split off train by its first labels."""
    names, ptr, ids = sets
    train = HFLabelSetRecords(dd[train_split], image_column, ptr, ids, len(names), "train")
    if val_split is None:
        tr, va = stratified_split(train.labels, val_fraction, seed)
        return names, {"train": train.subset(tr), "val": train.subset(va)}
    val_sets = label_sets(dd[val_split], label_column)
    if val_sets is None or val_sets[0] != names:
        raise ConfigError(
            f"splits {train_split!r} and {val_split!r}: the label column {label_column!r} is a "
            "Sequence(ClassLabel) in one and not the same one in the other; give both the same classes"
        )
    val = HFLabelSetRecords(dd[val_split], image_column, val_sets[1], val_sets[2], len(names), "val")
    return names, {"train": train, "val": val}


def single_label_rows(splits: dict[str, Any]) -> None:
    """A single-label task: leave out (in place) the rows of label-set splits that have no label."""
    for split, records in list(splits.items()):
        if isinstance(records, HFLabelSetRecords) and (records.labels < 0).any():
            keep = np.flatnonzero(records.labels >= 0)
            log.warning("%s: leaving out %d row(s) without a label", split, len(records) - len(keep))
            splits[split] = records.subset(keep)
