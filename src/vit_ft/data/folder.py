"""Index a folder of class folders into flat numpy arrays (paths, labels).

Layouts: ``root/{train,val[,test]}/<class>/...`` or ``root/<class>/...`` (then split into train and
val by ``val_fraction``, stratified and deterministic). Hidden files and folders and non-image files
are ignored; empty class folders are warned about and left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vit_ft.data.decode import is_image_file
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
VAL_ALIASES = ("val", "valid", "validation")


@dataclass
class FileIndex:
    """Image paths and integer labels as numpy arrays: cheap to share with DataLoader workers.

    ``paths`` is a numpy bytes (``S``) array (``U`` works too, at 4 bytes a character), relative to
    ``root`` when ``root`` is set. No per-item Python objects, so workers' memory stays
    flat (nothing for reference counting to copy-on-write).
    """

    paths: np.ndarray
    labels: np.ndarray  # int64
    root: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        p = self.paths[i]
        p = os.fsdecode(p) if isinstance(p, bytes) else str(p)
        return os.path.join(self.root, p) if self.root else p

    def subset(self, idx: np.ndarray) -> FileIndex:
        return FileIndex(self.paths[idx], self.labels[idx], self.root)


def _visible_dirs(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def walk_files(
    top: str, root: str | None = None, outside: list[str] | None = None, seen: set[str] | None = None
):
    """``(dirpath, visible file names, sorted)`` for every folder under ``top``, links to folders
    followed once per real folder: a link loop (``red/self -> .``) or a second link to a folder
    already seen (in ``seen``, shared between walks: e.g. the other class folders) is not entered,
    so no image is found twice. A link to a folder outside ``root`` (default ``top``) is followed and
    appended to ``outside`` (for the caller's one warning)."""
    real_root = os.path.realpath(root if root is not None else top)
    seen = set() if seen is None else seen
    seen.add(os.path.realpath(top))

    def leaves_root(path: str, real: str) -> None:
        if (
            outside is not None
            and os.path.islink(path)
            and os.path.commonpath([real, real_root]) != real_root
        ):
            outside.append(path)

    leaves_root(top, os.path.realpath(top))
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in seen:
                continue
            seen.add(real)
            leaves_root(full, real)
            keep.append(d)
        dirnames[:] = keep
        yield dirpath, sorted(f for f in filenames if not f.startswith("."))


def warn_outside(outside: list[str], root: str) -> None:
    """One warning for the folder links found leading out of ``root`` (they are followed)."""
    if outside:
        more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
        log.warning(
            "%s links to %s, outside %s%s: followed (the data is not all under its root)",
            outside[0],
            os.path.realpath(outside[0]),
            root,
            more,
        )


def _images_under(
    folder: str, root: str | None = None, outside: list[str] | None = None, seen: set[str] | None = None
) -> list[str]:
    out = []
    for dirpath, filenames in walk_files(folder, root, outside, seen):
        out.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return out


def scan_classes(folder: str, key: str = "data.root", root: str | None = None) -> dict[str, list[str]]:
    """``{class_name: [image paths]}`` for the class folders directly under ``folder`` (folder links
    followed once each: see :func:`walk_files`)."""
    classes = _visible_dirs(folder)
    if not classes:
        raise ConfigError(
            f"{key}={folder!r} has no class folders; expected one sub-folder of images per class "
            "(e.g. root/cat/1.jpg, root/dog/2.jpg) or train/ and val/ folders holding them"
        )
    found = {}
    outside: list[str] = []
    # every class folder is its own: a link from one into another is not followed
    seen = {os.path.realpath(os.path.join(folder, name)) for name in classes}
    for name in classes:
        files = _images_under(os.path.join(folder, name), root or folder, outside, seen)
        if files:
            found[name] = files
        else:
            log.warning("class folder %s has no images; leaving it out", os.path.join(folder, name))
    warn_outside(outside, root or folder)
    if not found:
        raise ConfigError(
            f"{key}={folder!r}: none of its {len(classes)} class folders holds an image "
            "(.jpg, .png, .webp, ...); put images in them"
        )
    return found


def _to_index(found: dict[str, list[str]], class_names: list[str], root: str) -> FileIndex:
    """Paths relative to ``root`` as bytes (1 byte a character, not numpy ``str``'s 4)."""
    to_idx = {c: i for i, c in enumerate(class_names)}
    prefix = os.path.join(root, "")
    paths = [p[len(prefix) :] if p.startswith(prefix) else p for c in found for p in found[c]]
    labels = [to_idx[c] for c in found for _ in found[c]]
    return FileIndex(
        np.array([os.fsencode(p) for p in paths], dtype=np.bytes_), np.array(labels, dtype=np.int64), root
    )


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split; every class with at least 2 images gets one in val."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _check_same_classes(a: dict, b: dict, name_b: str) -> None:
    if set(a) != set(b):
        only_train = sorted(set(a) - set(b))
        only_b = sorted(set(b) - set(a))
        raise ConfigError(
            f"train/ and {name_b}/ have different classes: only in train: {only_train[:10]}, "
            f"only in {name_b}: {only_b[:10]}; give both the same class folders"
        )


def index_image_folder(
    root: str, val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], dict[str, FileIndex]]:
    """``(class_names, {"train": FileIndex, "val": FileIndex[, "test": FileIndex]})``."""
    if root is None or str(root).strip() in ("", "???"):
        raise ConfigError("data.root is not set; pass data.root=/path/to/images (class folders inside)")
    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise ConfigError(f"data.root={root!r} does not exist or is not a folder; check the path")
    subdirs = _visible_dirs(root)
    if not subdirs and not any(True for _ in os.scandir(root)):
        raise ConfigError(f"data.root={root!r} is empty; put one folder of images per class in it")
    if "train" in subdirs:
        train = scan_classes(os.path.join(root, "train"), "data.root/train", root)
        class_names = sorted(train)
        splits = {"train": _to_index(train, class_names, root)}
        val_name = next((v for v in VAL_ALIASES if v in subdirs), None)
        if val_name is not None:
            val = scan_classes(os.path.join(root, val_name), f"data.root/{val_name}", root)
            _check_same_classes(train, val, val_name)
            splits["val"] = _to_index(val, class_names, root)
        else:
            tr, va = stratified_split(splits["train"].labels, val_fraction, seed)
            splits["train"], splits["val"] = splits["train"].subset(tr), splits["train"].subset(va)
        if "test" in subdirs:
            test = scan_classes(os.path.join(root, "test"), "data.root/test", root)
            unknown = sorted(set(test) - set(train))
            if unknown:
                raise ConfigError(
                    f"test/ has classes that train/ lacks: {unknown[:10]}; remove or rename them"
                )
            splits["test"] = _to_index(test, class_names, root)
        return class_names, splits
    found = scan_classes(root)
    class_names = sorted(found)
    full = _to_index(found, class_names, root)
    tr, va = stratified_split(full.labels, val_fraction, seed)
    return class_names, {"train": full.subset(tr), "val": full.subset(va)}


def find_images(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Image paths of ``images``: a file (used whatever its extension), a folder (image files found
    recursively, sorted, folder links followed once each; other files ignored) or a list of either."""
    if images is None or (isinstance(images, str) and images.strip() in ("", "???")):
        raise ConfigError("images is not set; pass images=<image file or folder>, e.g. images=photos/")
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise ConfigError("images=[] names no image; pass an image file or a folder")
    out: list[str] = []
    for item in items:
        path = os.fspath(item)
        expanded = os.path.expanduser(path)
        if os.path.isfile(expanded):
            out.append(path)
        elif os.path.isdir(expanded):
            outside: list[str] = []
            found = _images_under(expanded, expanded, outside)
            warn_outside(outside, path)
            if not found:
                raise ConfigError(
                    f"images={path!r} is a folder with no image files (.jpg, .png, .webp, ...); "
                    "pass a folder of images or an image file"
                )
            if expanded != path:  # keep the user's spelling in the output
                found = [path + f[len(expanded) :] for f in found]
            out += sorted(found)
        else:
            raise ConfigError(
                f"images={path!r} does not exist (cwd {os.getcwd()}); pass an image file or folder"
            )
    return out
