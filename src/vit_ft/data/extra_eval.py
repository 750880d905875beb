"""More evaluation sets (``data.extra_eval``): each entry names an image folder or a Hugging Face data set
that is scored after training and by ``eval.py`` beside the run's own split (ImageNet-V2/-R/-A/-Sketch,
a camera the model has not seen).

An entry is ``{root: DIR}`` (``DIR/<class>/*.jpg``, or ``DIR/val/<class>/...``) or ``{name: HUB_ID_OR_FOLDER,
split: ...}`` (with ``config_name``, ``image_column``, ``label_column``, ``revision`` as ``data=hf`` has
them), and optionally ``labels_file: FILE.json`` (ReaL-style acceptable labels, read by
:mod:`vit_ft.models.subset`). Sets are read here into the records every DataModule uses, and given
the run's evaluation transform and loader policy; what their classes mean to the model (a subset of its
classes) is :mod:`vit_ft.models.subset`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from vit_ft.data.folder import VAL_ALIASES, _to_index, _visible_dirs, scan_classes
from vit_ft.data.records import FileRecords, IndexedDataset, TransformedDataset, collate_skipping_none
from vit_ft.errors import ConfigError

KEY = "data.extra_eval"
FOLDER_KEYS = ("root", "labels_file")
HF_KEYS = ("name", "split", "config_name", "image_column", "label_column", "revision", "labels_file")
RESERVED = ("train", "val", "test", "val_ema", "test_ema", "final", "best", "report")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class ExtraSet:
    """One extra evaluation set: its name (the metrics' prefix, the CSV's name), its own class names
    (index = its labels), its records, and what ``labels_file`` names (or None)."""

    name: str
    class_names: list[str]
    records: Any
    labels_file: str | None = None
    root: str = ""  # the folder file names in labels_file are relative to ("" for an HF set)

    def __len__(self) -> int:
        return len(self.records)

    def file_key(self, i: int) -> str:
        """Record ``i``'s name as a labels file keys it: its path relative to the set's root (posix); for
        an HF set, the image's file name when the data set keeps one, else ``str(i)``."""
        if not self.root:
            src = self.records.source(i)
            path = src.get("path") if isinstance(src, dict) else None
            return os.path.basename(path) if path else str(i)
        name = self.records.name(i)
        if self.root and name.startswith(os.path.join(self.root, "")):
            name = name[len(self.root) + 1 :]
        return name.replace(os.sep, "/")


def check_entries(entries: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``data.extra_eval`` as plain dicts, each entry checked (one line on the first wrong one)."""
    if not entries:
        return {}
    if not isinstance(entries, Mapping):
        raise ConfigError(
            f"{KEY}={entries!r} must be a mapping of set names to sets, e.g. +{KEY}.shifted.root=/data/shifted"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        name = str(name)
        where = f"{KEY}.{name}"
        if not _NAME.fullmatch(name) or name in RESERVED:
            raise ConfigError(
                f"{where}: {name!r} cannot name a set (it prefixes metrics and a file); use letters, digits, "
                f"_ . - and none of {', '.join(RESERVED)}"
            )
        if entry is None:
            continue  # ~data.extra_eval.NAME or NAME=null: the set is off
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}={entry!r} must be a mapping; set {where}.root=DIR or {where}.name=ID")
        entry = dict(entry)
        has_root, has_name = entry.get("root") is not None, entry.get("name") is not None
        if has_root == has_name:
            raise ConfigError(
                f"{where} has {'both root and name' if has_root else 'neither root nor name'}; set one: "
                f"{where}.root=<folder of class folders> or {where}.name=<HF hub id or folder> {where}.split=test"
            )
        allowed = FOLDER_KEYS if has_root else HF_KEYS
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; it takes {', '.join(allowed)}")
        out[name] = entry
    return out


def _folder_set(name: str, entry: dict[str, Any]) -> ExtraSet:
    where = f"{KEY}.{name}.root"
    root = os.path.expanduser(str(entry["root"]))
    if not os.path.isdir(root):
        raise ConfigError(f"{where}={root!r} does not exist or is not a folder; check the path")
    sub = next((v for v in VAL_ALIASES if v in _visible_dirs(root)), None)
    folder = os.path.join(root, sub) if sub else root
    found = scan_classes(folder, where, root)
    class_names = sorted(found)
    records = FileRecords(_to_index(found, class_names, root))
    return ExtraSet(name, class_names, records, entry.get("labels_file"), root=root)


def _hf_set(name: str, entry: dict[str, Any]) -> ExtraSet:
    from vit_ft.data.hf import HFRecords, _check_columns, class_names_and_labels, load_hf

    where = f"{KEY}.{name}"
    try:
        dd = load_hf(entry["name"], config_name=entry.get("config_name"), revision=entry.get("revision"))
    except ConfigError as e:  # its line names data.name: say which set
        raise ConfigError(f"{where}: {e}") from None
    split = entry.get("split") or next((s for s in ("test", "validation", "val") if s in dd), None)
    if split not in dd:
        raise ConfigError(
            f"{where}.split={split!r} is not a split of {entry['name']!r}; its splits are {sorted(dd)}"
        )
    image_column, label_column = entry.get("image_column", "image"), entry.get("label_column", "label")
    ds = dd[split]
    _check_columns(ds.features, image_column, label_column, split)
    class_names, labels = class_names_and_labels(ds, label_column)
    keep = np.flatnonzero(labels >= 0)
    if len(keep) < len(labels):
        ds, labels = ds.select(keep), labels[keep]
    return ExtraSet(name, class_names, HFRecords(ds, image_column, labels, name), entry.get("labels_file"))


def load_extra_sets(entries: Mapping[str, Any] | None) -> list[ExtraSet]:
    """Every set of ``data.extra_eval``, indexed (folders scanned, HF sets opened), in name order."""
    out = []
    for name, entry in sorted(check_entries(entries).items()):
        s = _folder_set(name, entry) if "root" in entry else _hf_set(name, entry)
        if len(s) == 0:
            raise ConfigError(f"{KEY}.{name} holds no image; give it a folder of class folders of images")
        out.append(s)
    return out


def extra_loader(datamodule: Any, s: ExtraSet) -> DataLoader:
    """``(record index, image, label)`` batches of ``s`` with ``datamodule``'s evaluation transform,
    loader policy, evaluation batch and bad-image policy (decoded in the workers)."""
    ds = TransformedDataset(s.records, datamodule.transform(False), datamodule.on_bad_image)
    return datamodule.loader_policy.loader(
        IndexedDataset(ds), datamodule.batch_for(False), collate_fn=collate_skipping_none, once=True
    )
