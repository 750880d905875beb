"""Fingerprints of what features depend on, and the feature cache (memory and disk).

A probe never changes the backbone, so its features never change either. The cache is keyed by a
fingerprint of

* the weights — a hash of the backbone's state dict (head excluded) and its architecture,
* the data — per split: the file list, labels and each file's size and modification time,
* the preprocessing — image size, interpolation, normalisation, eval transform, feature type and
  numeric precision,

so any change of these gives a new key and new features; a cache file is only ever used when its
key matches and its contents check out (labels agree with the data), never silently otherwise.

Features live in memory (reused across the jobs of a Hydra sweep run in one process) and on disk
as ``<cache_dir>/<key>.pt`` (written to a ``.tmp`` and renamed; the job that builds a file holds
``<key>.lock``, so a second job needing the same features waits and then reads them). Pure: no Lightning, no network pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from vit_ft.errors import ConfigError
from vit_ft.models.features import linear_head

log = logging.getLogger("vit_ft")

CACHE_FORMAT = 1
MEMORY_ENTRIES = 6  # splits kept in memory (most recently used)


# -- fingerprints ------------------------------------------------------------------------------------
def _hash_update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def weights_fingerprint(classifier: Any) -> str:
    """Hash of the backbone (every tensor but the head's) and of its architecture."""
    h = hashlib.blake2b(digest_size=16)
    arch = dict(classifier.hparams.get("arch") or {})
    arch.pop("features", None)  # what the head sits on (a linear probe's): not the backbone
    kwargs = {k: v for k, v in dict(arch.get("kwargs") or {}).items() if k != "num_classes"}
    h.update(json.dumps({**arch, "kwargs": kwargs}, sort_keys=True, default=str).encode())
    head = linear_head(classifier.model)
    head_ids = {id(p) for p in head.parameters()} | {id(b) for b in head.buffers()}
    for name, t in sorted(classifier.model.state_dict(keep_vars=True).items()):
        if id(t) in head_ids:
            continue
        h.update(name.encode())
        _hash_update_tensor(h, t)
    return h.hexdigest()


def records_fingerprint(records: Any) -> str:
    """Hash of a split's records: labels, file list and file stats (or the source's own fingerprint)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(records).__name__.encode())
    labels = np.asarray(records.labels, dtype=np.int64)
    h.update(labels.tobytes())
    h.update(repr(getattr(records, "draft_size", None)).encode())
    index = getattr(records, "index", None)
    if index is not None and hasattr(index, "paths"):
        h.update(str(getattr(index, "root", "")).encode())
        h.update(np.ascontiguousarray(index.paths).tobytes())
        stats = np.zeros((len(index), 2), dtype=np.int64)
        for i in range(len(index)):
            try:
                st = os.stat(index.path(i))
                stats[i] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stats[i] = (-1, -1)
        h.update(stats.tobytes())
        return h.hexdigest()
    own = getattr(records, "fingerprint", None)
    own = own() if callable(own) else own
    if own is not None:
        h.update(str(own).encode())
    elif hasattr(records, "name"):
        for i in range(len(records)):
            h.update(str(records.name(i)).encode() + b"\0")
    return h.hexdigest()


def preprocessing_fingerprint(classifier: Any, transform: Any, features: str, precision: str) -> dict:
    return {
        "format": CACHE_FORMAT,
        "preprocessing": classifier.preprocessing.to_dict(),
        "transform": repr(transform),
        "features": features,
        "precision": str(precision),
    }


def feature_key(weights_fp: str, records_fp: str, pre: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"w": weights_fp, "d": records_fp, "p": pre}, sort_keys=True).encode())
    return h.hexdigest()


# -- the disk cache ------------------------------------------------------------------------------------
@dataclass
class SplitFeatures:
    features: torch.Tensor  # float32 [N, D]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N]: record index of each row (bad images skipped are absent)
    num_records: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"{key}.pt")


@contextmanager
def cache_lock(cache_dir: str, keys: list[str]) -> Iterator[None]:
    """Hold ``<cache_dir>/<key>.lock`` for every key (in sorted order, so two jobs never deadlock):
    a second job that needs the same features waits here, then finds them cached."""
    os.makedirs(cache_dir, exist_ok=True)
    with ExitStack() as stack:
        for key in sorted(set(keys)):
            lock = FileLock(os.path.join(cache_dir, f"{key}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("features: another job is building the cache %s; waiting for it", key)
                lock.acquire()
            stack.callback(lock.release)
        yield


def save_features(path: str, key: str, split: str, feats: SplitFeatures, meta: dict) -> None:
    """Write one cache file atomically (a unique temporary beside it, renamed over it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or "."
    )
    os.close(fd)
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "split": split,
        "meta": json.dumps(meta, sort_keys=True, default=str),
        "features": feats.features.contiguous(),
        "labels": feats.labels,
        "indices": feats.indices,
        "num_records": int(feats.num_records),
    }
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


class BadCacheError(ConfigError):
    pass


def load_features(path: str, key: str, labels: np.ndarray) -> SplitFeatures:
    """Read and check one cache file; :class:`BadCacheError` when it is corrupt or stale."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, ...
        raise BadCacheError(f"feature cache {path} is corrupt ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        raise BadCacheError(f"feature cache {path} is stale (not cache format {CACHE_FORMAT})")
    if obj.get("key") != key:
        raise BadCacheError(f"feature cache {path} is stale (it was written for another key)")
    f, y, idx = obj.get("features"), obj.get("labels"), obj.get("indices")
    n = int(obj.get("num_records", -1))
    ok = (
        isinstance(f, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and isinstance(idx, torch.Tensor)
        and f.dim() == 2
        and f.dtype == torch.float32
        and y.dtype == torch.int64
        and idx.dtype == torch.int64
        and len(f) == len(y) == len(idx)
        and n == len(labels)
    )
    if ok and len(idx):
        ok = bool(idx.min() >= 0 and idx.max() < n and torch.isfinite(f).all())
        ok = ok and np.array_equal(labels[idx.numpy()], y.numpy())
    if not ok:
        raise BadCacheError(f"feature cache {path} is stale (its contents do not match the data)")
    return SplitFeatures(f, y, idx, n)


# -- the memory cache: the jobs of a sweep in one process share it -----------------------------------
_MEMORY: OrderedDict[str, SplitFeatures] = OrderedDict()  # key -> features, most recent last


def recall(key: str) -> SplitFeatures | None:
    """The features stored in memory under ``key``, if any."""
    return _MEMORY.get(key)


def remember(key: str, feats: SplitFeatures) -> None:
    _MEMORY[key] = feats
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)


def clear_memory_cache() -> None:
    _MEMORY.clear()
