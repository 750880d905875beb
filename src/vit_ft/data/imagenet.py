"""ImageNet (ILSVRC-2012) on disk: the standard class index, a flat val/ folder, a cached file index.

Layouts (``root`` is the folder holding ``train/`` and ``val/``; the Kaggle layout
``root/ILSVRC/Data/CLS-LOC/{train,val}`` is found too):

* ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``;
* ``train/<wnid>/*.JPEG`` and a flat ``val/*.JPEG`` with ``LOC_val_solution.csv`` (``ImageId,PredictionString``,
  the wnid first in ``PredictionString``), looked for at ``val_labels``, in ``root``, in ``val/`` and
  beside ``root``;
* no ``val/``: val is split off train by ``val_fraction`` (stratified, deterministic).

Labels are the standard ILSVRC-2012 indices (wnids sorted, as in timm's ``ImageNetInfo``:
n01440764 → 0 … n15075141 → 999) whatever subset of classes is present, so a pretrained 1000-class
head evaluates correctly; ``class_index="present"`` instead numbers only the classes present (in
ILSVRC order), for a new, smaller head. Class names are timm's descriptions.

Walking 1.28M files takes a while on network disks, so the index is cached (numpy, bytes paths
relative to the root) and reused while the modification times of the split folders, the class
folders and the label file are unchanged (adding or removing a file in a class folder changes it).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vit_ft.data.datamodule import ImageDataModule
from vit_ft.data.decode import is_image_file
from vit_ft.data.folder import VAL_ALIASES, FileIndex, stratified_split
from vit_ft.data.records import FileRecords
from vit_ft.errors import ConfigError
from vit_ft.labels import ilsvrc_descriptions, ilsvrc_wnids
from vit_ft.progress import track

log = logging.getLogger(__name__)

LABEL_FILE = "LOC_val_solution.csv"
CACHE_VERSION = 1


def _find_root(root: str) -> str:
    kaggle = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    if not os.path.isdir(os.path.join(root, "train")) and os.path.isdir(kaggle):
        return kaggle
    return root


def _class_dirs(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _list_images(folder: str) -> list[str]:
    """Image file names in ``folder`` (recursively for stray sub-folders), relative to it, sorted."""
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(folder, rel)) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                name = os.path.join(rel, e.name) if rel else e.name
                if e.is_dir():
                    stack.append(name)
                elif is_image_file(e.name):
                    out.append(name)
    out.sort()
    return out


def _find_label_file(root: str, val_dir: str, val_labels: str | None) -> str | None:
    if val_labels:
        path = os.path.expanduser(str(val_labels))
        if not os.path.isfile(path):
            raise ConfigError(f"data.val_labels={val_labels!r} does not exist; point it at {LABEL_FILE}")
        return path
    for cand in (root, val_dir, os.path.dirname(os.path.abspath(root)), os.path.join(root, "..", "..", "..")):
        path = os.path.join(cand, LABEL_FILE)
        if os.path.isfile(path):
            return os.path.normpath(path)
    return None


def read_val_labels(path: str) -> dict[str, str]:
    """``{image id (file stem): wnid}`` from ``LOC_val_solution.csv``."""
    out = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0].strip() != "ImageId":
            raise ConfigError(
                f"{path} is not a {LABEL_FILE} (expected a header 'ImageId,PredictionString' and rows "
                "'ILSVRC2012_val_00000001,n01751748 ...')"
            )
        for row in reader:
            if len(row) >= 2 and row[1].strip():
                out[row[0].strip()] = row[1].split()[0]
    return out


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha1()
    for p in paths:
        try:
            h.update(f"{p}:{os.stat(p).st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}:-\n".encode())
    return h.hexdigest()


def _cache_path(cache_dir: str, root: str, key: str) -> str:
    name = hashlib.sha1(f"{os.path.abspath(root)}|{key}".encode()).hexdigest()[:20]
    return os.path.join(os.path.expanduser(cache_dir), f"imagenet-index-{name}.npz")


def _scan_split(root: str, split: str, wnids: list[str], workers: int = 16) -> dict[str, list[str]]:
    folder = os.path.join(root, split)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # many small directory reads: I/O bound
        listed = pool.map(lambda w: _list_images(os.path.join(folder, w)), wnids)
        lists = list(track(listed, len(wnids), f"imagenet: indexing {split}/", unit="folders"))
    return {w: [f"{split}/{w}/{n}" for n in names] for w, names in zip(wnids, lists)}


def _build(
    root: str, label_file: str | None, val_name: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Walk the folders: ``{split: (relative paths as bytes, wnid index into ilsvrc_wnids)}``."""
    to_idx = {w: i for i, w in enumerate(ilsvrc_wnids())}
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", val_name):
        if split is None or not os.path.isdir(os.path.join(root, split)):
            continue
        wnids = _class_dirs(os.path.join(root, split))
        if split == val_name and not wnids:
            out[split] = _flat_val(root, split, label_file, to_idx)
            continue
        unknown = [w for w in wnids if w not in to_idx]
        if unknown:
            raise ConfigError(
                f"{os.path.join(root, split)} has folders that are not ILSVRC-2012 classes: {unknown[:10]}"
                f"{' ...' if len(unknown) > 10 else ''}; remove them, or use data=imagefolder for other class sets"
            )
        found = _scan_split(root, split, wnids)
        for w in wnids:
            if not found[w]:
                log.warning("class folder %s has no images; leaving it out", os.path.join(root, split, w))
        paths = [p for w in wnids for p in found[w]]
        labels = [to_idx[w] for w in wnids for _ in found[w]]
        if not paths:
            raise ConfigError(f"{os.path.join(root, split)} holds no images (*.JPEG in <wnid>/ folders)")
        out[split] = (np.array([os.fsencode(p) for p in paths], dtype=np.bytes_), np.array(labels, np.int64))
    return out


def _flat_val(
    root: str, split: str, label_file: str | None, to_idx: dict[str, int]
) -> tuple[np.ndarray, np.ndarray]:
    folder = os.path.join(root, split)
    if label_file is None:
        raise ConfigError(
            f"{folder} is a flat folder of images but no {LABEL_FILE} was found (looked in {root}, {folder} "
            f"and beside {root}); pass data.val_labels=/path/to/{LABEL_FILE}, or sort val/ into <wnid>/ folders"
        )
    labels_by_id = read_val_labels(label_file)
    names = _list_images(folder)
    if not names:
        raise ConfigError(f"{folder} holds no images")
    missing = [n for n in names if os.path.splitext(os.path.basename(n))[0] not in labels_by_id]
    if missing:
        raise ConfigError(
            f"{len(missing)} image(s) in {folder} have no row in {label_file}, e.g. {missing[:3]}; "
            "remove them or use the label file that belongs to this folder"
        )
    wnids = [labels_by_id[os.path.splitext(os.path.basename(n))[0]] for n in names]
    unknown = sorted({w for w in wnids if w not in to_idx})
    if unknown:
        raise ConfigError(f"{label_file} names wnids that are not ILSVRC-2012 classes: {unknown[:10]}")
    paths = np.array([os.fsencode(f"{split}/{n}") for n in names], dtype=np.bytes_)
    return paths, np.array([to_idx[w] for w in wnids], np.int64)


def index_imagenet(
    root: str,
    *,
    val_labels: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    class_index: str = "ilsvrc",
    cache_dir: str | None = "~/.cache/vit_ft",
) -> tuple[list[str], dict[str, FileIndex]]:
    """``(class_names, {"train": FileIndex, "val": FileIndex})`` for an ILSVRC-2012 folder."""
    if root is None or str(root).strip() in ("", "???"):
        raise ConfigError(
            "data.root is not set; pass data.root=/path/to/imagenet (the folder with train/ and val/)"
        )
    if class_index not in ("ilsvrc", "present"):
        raise ConfigError(f"data.class_index={class_index!r} must be 'ilsvrc' (all 1000) or 'present'")
    root = _find_root(os.path.abspath(os.path.expanduser(str(root))))
    if not os.path.isdir(root):
        raise ConfigError(f"data.root={root!r} does not exist or is not a folder; check the path")
    val_name = next((v for v in VAL_ALIASES if os.path.isdir(os.path.join(root, v))), None)
    if not os.path.isdir(os.path.join(root, "train")) and val_name is None:
        raise ConfigError(f"data.root={root!r} has neither train/ nor val/; expected the ILSVRC-2012 layout")
    label_file = _find_label_file(root, os.path.join(root, val_name or "val"), val_labels)

    # Fingerprint: modification times of the root, the split folders and every class folder.
    watched = [root, label_file] if label_file else [root]
    for split in ("train", val_name):
        if split and os.path.isdir(os.path.join(root, split)):
            d = os.path.join(root, split)
            watched += [d] + [os.path.join(d, w) for w in _class_dirs(d)]
    fingerprint = f"v{CACHE_VERSION}|{val_name}|{label_file}|{_fingerprint(watched)}"
    cache = _cache_path(cache_dir, root, f"{val_name}|{label_file}") if cache_dir else None
    raw = _load_cache(cache, fingerprint) if cache else None
    if raw is None:
        raw = _build(root, label_file, val_name)
        if cache:
            _save_cache(cache, fingerprint, raw)
    else:
        log.info("imagenet: file index from cache %s", cache)

    wnids = ilsvrc_wnids()
    descriptions = ilsvrc_descriptions()
    if class_index == "ilsvrc":
        class_names = list(descriptions)
        remap = None
    else:
        present = sorted({int(c) for _, labels in raw.values() for c in np.unique(labels)})
        class_names = [descriptions[c] for c in present]
        remap = np.full(len(wnids), -1, np.int64)
        remap[present] = np.arange(len(present))
    splits = {}
    for split, (paths, labels) in raw.items():
        splits["val" if split == val_name else split] = FileIndex(
            paths, remap[labels] if remap is not None else labels, root
        )
    if "train" in splits and "val" in splits:
        tr, va = set(np.unique(splits["train"].labels)), set(np.unique(splits["val"].labels))
        if tr != va:
            name = (lambda c: wnids[c]) if remap is None else (lambda c: wnids[present[c]])
            log.warning(
                "imagenet: train and val hold different classes (only in train: %s; only in val: %s); "
                "the class index is the standard one, so labels stay correct",
                sorted(name(c) for c in tr - va)[:10],
                sorted(name(c) for c in va - tr)[:10],
            )
    if "val" not in splits and "train" in splits:
        tr, va = stratified_split(splits["train"].labels, val_fraction, seed)
        splits["train"], splits["val"] = splits["train"].subset(tr), splits["train"].subset(va)
    return class_names, splits


def _load_cache(path: str, fingerprint: str) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return None
            return {str(s): (z[f"{s}_paths"], z[f"{s}_labels"]) for s in z["splits"]}
    except (OSError, KeyError, ValueError):
        return None


def _save_cache(path: str, fingerprint: str, raw: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        arrays = {"fingerprint": np.array(fingerprint), "splits": np.array(list(raw))}
        for s, (p, lab) in raw.items():
            arrays[f"{s}_paths"], arrays[f"{s}_labels"] = p, lab
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)  # atomic: concurrent ranks never read half a file
    except OSError as e:
        log.warning(
            "could not write the file-index cache %s (%s); the next start walks the folders again", path, e
        )


class ImageNetDataModule(ImageDataModule):
    """``data=imagenet``: ILSVRC-2012 from disk (see the module docstring for layouts)."""

    def __init__(
        self,
        root: str | None = None,
        val_labels: str | None = None,
        class_index: str = "ilsvrc",
        cache_dir: str | None = "~/.cache/vit_ft",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.val_labels, self.class_index, self.cache_dir = (
            root,
            val_labels,
            class_index,
            cache_dir,
        )

    def load_splits(self):
        class_names, index = index_imagenet(
            self.root,
            val_labels=self.val_labels,
            val_fraction=self.val_fraction,
            seed=self.seed,
            class_index=self.class_index,
            cache_dir=self.cache_dir,
        )
        return class_names, {k: FileRecords(v) for k, v in index.items()}
