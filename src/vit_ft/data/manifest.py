"""CSV and JSONL manifests: one row per image, ``image`` (a path relative to the manifest's folder, or
absolute) and ``labels`` (class names separated by spaces; empty: no label; in JSONL also a list).

Rows become a :class:`ManifestIndex`: the :class:`~vit_ft.data.folder.FileIndex` the folder source
has (same records, same decode and transform path, same epoch order) plus every row's label set in
compressed rows (``label_ptr``, ``label_idx``: flat, so DataLoader workers' memory stays flat).
``labels`` is the first label of each row (``-1``: none): the single-label target. A multi-label run
reads :meth:`ManifestRecords.multi_hot` instead (``records.multilabel``).

Bad rows (a missing file, an empty ``image``, a class not in ``data.classes``) follow
``data.on_bad_image`` as bad images do: ``error`` stops at the first with one line naming it; ``skip``
leaves each out, names it once in the log and counts it in ``bad_images`` of ``metrics.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vit_ft.data.bad_images import REPORTED_FILES
from vit_ft.data.folder import FileIndex
from vit_ft.data.records import FileRecords
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)

TASKS = ("auto", "single", "multilabel")


@dataclass
class ManifestIndex(FileIndex):
    """A :class:`FileIndex` whose rows carry label sets: row ``i``'s classes are
    ``label_idx[label_ptr[i]:label_ptr[i + 1]]``."""

    label_ptr: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    label_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    def label_set(self, i: int) -> np.ndarray:
        return self.label_idx[self.label_ptr[i] : self.label_ptr[i + 1]]

    def label_counts(self) -> np.ndarray:
        """How many labels each row has."""
        return np.diff(self.label_ptr)

    def subset(self, idx: np.ndarray) -> ManifestIndex:
        idx = np.asarray(idx, dtype=np.int64)
        sets = [self.label_set(int(i)) for i in idx]
        ptr = np.zeros(len(idx) + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(s) for s in sets]) if len(sets) else []
        flat = np.concatenate(sets).astype(np.int32) if sets else np.zeros(0, dtype=np.int32)
        return ManifestIndex(self.paths[idx], self.labels[idx], self.root, ptr, flat)


class ManifestRecords(FileRecords):
    """File records with label sets: ``multilabel`` (set by the data module once the task is decided)
    makes the dataset's target the multi-hot float vector of :meth:`multi_hot`."""

    def __init__(self, index: ManifestIndex, num_classes: int) -> None:
        super().__init__(index)
        self.num_classes = int(num_classes)
        self.multilabel = False

    def label_counts(self) -> np.ndarray:
        return self.index.label_counts()

    def multi_hot(self, i: int) -> torch.Tensor:
        return multi_hot_row(self.index.label_set(i), self.num_classes)

    def multi_hot_all(self) -> np.ndarray:
        """``[N, K]`` bool: every row's labels (for the linear probe's cached targets)."""
        return multi_hot_rows(self.index.label_ptr, self.index.label_idx, self.num_classes)


def multi_hot_row(ids: np.ndarray, k: int) -> torch.Tensor:
    out = torch.zeros(k, dtype=torch.float32)
    out[torch.as_tensor(np.array(ids, dtype=np.int64))] = 1.0
    return out


def multi_hot_rows(ptr: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """``[N, K]`` bool from compressed rows."""
    out = np.zeros((len(ptr) - 1, k), dtype=bool)
    out[np.repeat(np.arange(len(ptr) - 1), np.diff(ptr)), idx] = True
    return out


@dataclass
class Row:
    image: str
    labels: list[str]
    where: str  # "train.csv:3": the manifest and line, for messages


@dataclass
class BadRows:
    """The rows left out (``on_bad_image=skip``), per split: ``(where, why)``."""

    by_split: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, split: str, where: str, why: str) -> None:
        self.by_split.setdefault(split, []).append((where, why))

    def merge_into(self, report: dict) -> dict:
        """``report`` (the bad-image ledger's) with the bad rows counted and named in it."""
        n = sum(len(v) for v in self.by_split.values())
        if not n:
            return report
        by_split = dict(report.get("by_split", {}))
        for split, rows in self.by_split.items():
            by_split[split] = by_split.get(split, 0) + len(rows)
        files = [f"{w} ({why})" for rows in self.by_split.values() for w, why in rows]
        return {
            **report,
            "count": int(report.get("count", 0)) + n,
            "by_split": by_split,
            "files": (list(report.get("files", [])) + files)[:REPORTED_FILES],
        }


def _split_names(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return str(value).split()


def read_manifest(path: str, key: str) -> list[Row]:
    """The rows of a CSV (header with ``image`` and ``labels``) or JSONL manifest (one object a line)."""
    if path is None or str(path).strip() in ("", "???"):
        raise ConfigError(f"{key} is not set; pass {key}=<manifest .csv or .jsonl>")
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise ConfigError(f"{key}={path!r} does not exist; pass a .csv or .jsonl manifest (image, labels)")
    base = os.path.basename(path)
    rows: list[Row] = []
    if path.lower().endswith((".jsonl", ".json", ".ndjson")):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{key}: {base}:{n} is not JSON ({e.msg}); one object a line") from None
                if not isinstance(obj, dict):
                    raise ConfigError(
                        f"{key}: {base}:{n} is not a JSON object; write {{'image': ..., 'labels': ...}}"
                    )
                rows.append(
                    Row(str(obj.get("image") or "").strip(), _split_names(obj.get("labels")), f"{base}:{n}")
                )
        return rows
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "image" not in cols or "labels" not in cols:
            raise ConfigError(
                f"{key}={path!r} has the columns {cols}; a manifest needs a header with 'image' and 'labels'"
            )
        reader.fieldnames = cols
        for n, rec in enumerate(reader, 2):
            rows.append(
                Row(str(rec.get("image") or "").strip(), _split_names(rec.get("labels")), f"{base}:{n}")
            )
    return rows


def index_rows(
    rows: Sequence[Row],
    class_names: Sequence[str],
    root: str,
    split: str,
    bad: BadRows,
    on_bad: str,
    key: str,
) -> ManifestIndex:
    """The usable rows as a :class:`ManifestIndex`; each bad row raises (``error``) or is noted in ``bad``."""
    to_idx = {c: i for i, c in enumerate(class_names)}
    paths, first, ptr, flat = [], [], [0], []
    for row in rows:
        why = None
        if not row.image:
            why = "empty image column"
        else:
            unknown = [c for c in row.labels if c not in to_idx]
            if unknown:
                why = f"unknown class {unknown[0]!r} (not in data.classes)"
            elif not os.path.isfile(os.path.join(root, os.path.expanduser(row.image))):
                why = f"missing file {row.image}"
        if why is not None:
            if on_bad != "skip":
                raise ConfigError(
                    f"{key}: bad row {row.where}: {why}; fix the manifest, or set data.on_bad_image=skip"
                )
            bad.add(split, row.where, why)
            continue
        ids = sorted({to_idx[c] for c in row.labels})
        paths.append(os.fsencode(os.path.expanduser(row.image)))
        first.append(ids[0] if ids else -1)
        flat.extend(ids)
        ptr.append(len(flat))
    n_bad = len(bad.by_split.get(split, []))
    if n_bad:
        log.warning(
            "%s: %d bad row(s) left out (data.on_bad_image=skip), first: %s (%s)",
            key,
            n_bad,
            *bad.by_split[split][0],
        )
    return ManifestIndex(
        np.array(paths, dtype=np.bytes_),
        np.array(first, dtype=np.int64),
        root,
        np.array(ptr, dtype=np.int64),
        np.array(flat, dtype=np.int32),
    )


def index_manifests(
    manifests: dict[str, str | None],
    classes: Sequence[str] | None,
    on_bad: str,
) -> tuple[list[str], dict[str, ManifestIndex], BadRows]:
    """``(class names, {split: ManifestIndex}, bad rows)`` of the given manifests (``None``: no such split)."""
    read = {s: read_manifest(p, f"data.{s}") for s, p in manifests.items() if p is not None}
    if classes:
        class_names = [str(c) for c in classes]
        dup = sorted({c for c in class_names if class_names.count(c) > 1})
        if dup:
            raise ConfigError(f"data.classes names {dup[0]!r} twice; give each class once")
    else:
        class_names = sorted({c for rows in read.values() for r in rows for c in r.labels})
    bad = BadRows()
    out = {}
    for split, rows in read.items():
        root = os.path.dirname(os.path.abspath(os.path.expanduser(str(manifests[split]))))
        out[split] = index_rows(rows, class_names, root, split, bad, on_bad, f"data.{split}")
        if not len(out[split]):
            raise ConfigError(
                f"data.{split}={manifests[split]!r} has no usable row; add rows (image, labels)"
            )
    return class_names, out, bad


def decide_task(asked: str, label_counts: Sequence[np.ndarray]) -> str:
    """``single`` or ``multilabel``: ``asked``, or for ``auto`` multilabel when a row has two labels."""
    if asked not in TASKS:
        raise ConfigError(f"model.task={asked!r} must be one of {', '.join(TASKS)}")
    if asked != "auto":
        return asked
    most = max((int(c.max()) for c in label_counts if len(c)), default=1)
    if most >= 2:
        log.info(
            "model.task=auto: multilabel (a row has %d labels); set model.task=single to refuse it", most
        )
        return "multilabel"
    return "single"
