"""Write WebDataset tar shards of any source vit-ft reads, and the index that describes them.

    python -m vit_ft.data.shards SOURCE OUT [--kind auto|folder|imagenet|hf] [--shard-size 256MB]
                                            [--workers N] [--on-bad-image error|skip] [--no-check]

SOURCE is an image folder (``root/{train,val}/<class>/*`` or ``root/<class>/*``, split by
``--val-fraction`` exactly as ``data=imagefolder`` splits it), an ILSVRC-2012 folder (``--kind imagenet``,
found automatically when every class folder is a wnid) or a Hugging Face data set (``--kind hf``, a hub id
or a local folder). OUT gets, per split, ``{split}-000000.tar ...`` holding ``{key}.jpg|png|webp|...``
(the stored bytes: nothing is re-encoded) and ``{key}.cls`` (the class index as text), plus
``index.json``: class names, the shards of each split with their sample counts and labels, the total, the
source's fingerprint, the keys. The reader (:mod:`vit_ft.data.wds`, ``data=webdataset``) needs the index
for honest epoch lengths and exact resume; timm and webdataset read the shards as they are.

Shards are planned from the file sizes (``--shard-size``), written by ``--workers`` processes to
``.tmp`` files renamed when complete, each with a small record in ``OUT/.parts/``: a conversion that
was interrupted (or is run again) skips every finished shard whose planned content is unchanged.
Every image is decoded once on the way (``--no-check`` skips that); a bad image stops the conversion
(``--on-bad-image error``, the default) or is left out and listed in ``OUT/bad_images.csv`` and the
index (``skip``), as ``data.on_bad_image`` does in training.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from vit_ft.data.bad_images import check_on_bad_image
from vit_ft.data.decode import check_image
from vit_ft.errors import ConfigError
from vit_ft.io import write_json_atomic

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FORMAT = "vit-ft-shards/1"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "jpe")
MEMBER_OVERHEAD = 1536  # tar header + padding per member, for planning
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """``"256MB"``, ``"1.5GB"``, ``"64k"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"--shard-size={text!r} is not a size; use e.g. 256MB, 1GB or a byte count")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    size = int(float(m.group(1)) * scale)
    if size < 1:
        raise ConfigError(f"--shard-size={text!r} must be positive")
    return size


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def sample_key(i: int) -> str:
    """The WebDataset key of the split's ``i``-th record (no dots: webdataset splits names at the first)."""
    return f"{i:09d}"


# -- sources -------------------------------------------------------------------------------------
def _detect_kind(source: str) -> str:
    if not os.path.isdir(source):
        return "hf"
    train = os.path.join(source, "train")
    if os.path.isdir(train):
        dirs = [d for d in os.listdir(train) if not d.startswith(".")]
        if dirs and all(re.fullmatch(r"n\d{8}", d) for d in dirs):
            return "imagenet"
    return "folder"


def open_source(source: str, kind: str = "auto", val_fraction: float = 0.1, seed: int = 0) -> Any:
    """The DataModule vit-ft would train on for ``source`` (set up: its class names and split records)."""
    from vit_ft.data.datamodule import ImageFolderDataModule
    from vit_ft.data.hf import HFDataModule
    from vit_ft.data.imagenet import ImageNetDataModule

    kind = _detect_kind(source) if kind == "auto" else kind
    common = dict(val_fraction=val_fraction, seed=seed, num_workers=0)
    if kind == "folder":
        dm = ImageFolderDataModule(root=source, **common)
    elif kind == "imagenet":
        dm = ImageNetDataModule(root=source, cache_dir=None, **common)
    elif kind == "hf":
        dm = HFDataModule(name=source, **common)
    else:
        raise ConfigError(f"--kind={kind!r} must be auto, folder, imagenet or hf")
    dm.setup("fit")
    return dm


def _record_size(records: Any, i: int) -> int:
    src = records.source(i)
    if isinstance(src, (str, os.PathLike)):
        return os.path.getsize(src)
    if isinstance(src, dict):
        return len(src.get("bytes") or b"")
    return len(src)


def _record_bytes(records: Any, i: int) -> tuple[bytes, str]:
    """The stored bytes of record ``i`` and their extension (from the file name, else the format)."""
    src = records.source(i)
    name = None
    if isinstance(src, dict):
        name, src = src.get("path"), src.get("bytes") or src.get("path")
    if isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
        with open(name, "rb") as f:
            data = f.read()
    else:
        data = bytes(src)
    ext = os.path.splitext(name or "")[1].lower().lstrip(".")
    if ext not in IMAGE_EXTS:
        from PIL import Image

        try:
            fmt = (Image.open(io.BytesIO(data)).format or "").lower()
        except Exception:  # noqa: BLE001 - an unreadable image: the check (or the reader) reports it
            fmt = ""
        ext = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt) or "img"
    return data, ext


def _stat_key(records: Any, i: int) -> str:
    src = records.source(i)
    if isinstance(src, (str, os.PathLike)):
        st = os.stat(src)
        return f"{os.fspath(src)}:{st.st_size}:{st.st_mtime_ns}"
    return f"{i}"


# -- planning ------------------------------------------------------------------------------------
def plan_shards(sizes: np.ndarray, target: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` record ranges of about ``target`` bytes each (at least one record)."""
    bounds, start, acc = [], 0, 0
    for i, s in enumerate(sizes.tolist()):
        acc += int(s) + 2 * MEMBER_OVERHEAD
        if acc >= target:
            bounds.append((start, i + 1))
            start, acc = i + 1, 0
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


def _digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


# -- writing (in worker processes: the records are inherited through fork) -----------------------
_JOB: dict[str, Any] = {}


def _write_shard(task: tuple[str, int, int, int, str]) -> dict:
    """Write one shard to ``.tmp``, rename it when complete, then record it in ``.parts/``."""
    import webdataset as wds

    split, n, start, end, digest = task
    records, out, check, on_bad = (_JOB[k] for k in ("records", "out", "check", "on_bad_image"))
    records = records[split]
    name = shard_name(split, n)
    path, tmp = os.path.join(out, name), os.path.join(out, name + ".tmp")
    labels, bad = [], []
    try:
        with open(tmp, "wb") as f, wds.TarWriter(f) as sink:
            for i in range(start, end):
                data, ext = _record_bytes(records, i)
                if check:
                    reason = check_image(data)
                    if reason is not None:
                        where = records.name(i) if hasattr(records, "name") else f"{split}[{i}]"
                        if on_bad != "skip":
                            return {"error": f"{where}: {reason}"}
                        bad.append((where, reason))
                        continue
                label = int(records.labels[i])
                sink.write({"__key__": sample_key(i), ext: data, "cls": str(label).encode()})
                labels.append(label)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    part = {"name": name, "digest": digest, "count": len(labels), "labels": labels, "bad": bad}
    part["bytes"] = os.path.getsize(path)
    write_json_atomic(os.path.join(out, ".parts", name + ".json"), part)
    return part


def _finished(out: str, name: str, digest: str) -> dict | None:
    try:
        with open(os.path.join(out, ".parts", name + ".json")) as f:
            part = json.load(f)
    except (OSError, ValueError):
        return None
    if part.get("digest") == digest and os.path.isfile(os.path.join(out, name)):
        return part
    return None


def write_shards(
    source: str,
    out: str,
    *,
    kind: str = "auto",
    shard_size: int | str = "256MB",
    workers: int = 1,
    on_bad_image: str = "error",
    check: bool = True,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict:
    """Convert ``source`` into shards under ``out``; return the index (also written to ``out/index.json``)."""
    check_on_bad_image(on_bad_image, "--on-bad-image")
    target = parse_size(shard_size)
    dm = open_source(source, kind, val_fraction, seed)
    os.makedirs(os.path.join(out, ".parts"), exist_ok=True)
    tasks, done, plans = [], {}, {}
    for split, records in dm.splits.items():
        own = getattr(records, "fingerprint", None)  # a data set's content hash (HF), if it has one
        own = own() if callable(own) else None
        sizes = np.array([_record_size(records, i) for i in range(len(records))], dtype=np.int64)
        plans[split] = plan_shards(sizes, target)
        for n, (a, b) in enumerate(plans[split]):
            digest = _digest(
                check,
                on_bad_image,
                own,
                *(_stat_key(records, i) for i in range(a, b)),
                np.asarray(records.labels[a:b], np.int64).tobytes(),
            )
            part = _finished(out, shard_name(split, n), digest)
            if part is not None:
                done[shard_name(split, n)] = part
            else:
                tasks.append((split, n, a, b, digest))
    skipped = len(done)
    _JOB.update(records=dm.splits, out=out, check=check, on_bad_image=on_bad_image)
    try:
        if workers > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = list(pool.map(_write_shard, tasks))
        else:
            results = [_write_shard(t) for t in tasks]
    finally:
        _JOB.clear()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(
            f"unusable image {errors[0]}{more}; fix or remove it, or pass --on-bad-image skip "
            "(finished shards are kept: run the same command again)"
        )
    for r in results:
        done[r["name"]] = r
    index: dict[str, Any] = {
        "format": FORMAT,
        "classes": list(dm.class_names),
        "keys": {"image": list(IMAGE_EXTS), "label": "cls"},
        "source": {"path": os.path.abspath(source) if os.path.exists(source) else source, "kind": kind},
        "splits": {},
        "bad_images": [],
    }
    prints = []
    for split, plan in plans.items():
        parts = [done[shard_name(split, n)] for n in range(len(plan))]
        index["splits"][split] = {
            "pattern": f"{split}-{{{0:06d}..{len(plan) - 1:06d}}}.tar",
            "total": sum(p["count"] for p in parts),
            "shards": [{"name": p["name"], "count": p["count"], "labels": p["labels"]} for p in parts],
        }
        index["bad_images"] += [{"path": w, "reason": r} for p in parts for w, r in p["bad"]]
        prints += [p["digest"] for p in parts]
    index["source"]["fingerprint"] = _digest(*prints)
    write_json_atomic(os.path.join(out, INDEX_NAME), index)
    if index["bad_images"]:
        from vit_ft.data.scan import write_report

        bad = [(b["path"], b["reason"]) for b in index["bad_images"]]
        write_report(
            os.path.join(out, "bad_images.csv"), bad, sum(len(r) for r in dm.splits.values()), source
        )
    index["_written"], index["_skipped"] = len(results), skipped
    return index


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vit_ft.data.shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="image folder, ImageNet folder, or Hugging Face data set (id or folder)")
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--kind", default="auto", choices=["auto", "folder", "imagenet", "hf"])
    ap.add_argument("--shard-size", default="256MB", help="target bytes per shard (default 256MB)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="processes")
    ap.add_argument("--on-bad-image", default="error", choices=["error", "skip"])
    ap.add_argument("--no-check", action="store_true", help="do not decode every image on the way")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="val split-off when there is no val/")
    ap.add_argument("--seed", type=int, default=42, help="seed of the val split-off (train.py's seed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    try:
        index = write_shards(
            args.source,
            args.out,
            kind=args.kind,
            shard_size=args.shard_size,
            workers=args.workers,
            on_bad_image=args.on_bad_image,
            check=not args.no_check,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    for split, s in index["splits"].items():
        print(
            f"{split}: {s['total']} images in {len(s['shards'])} shards: {os.path.join(args.out, s['pattern'])}"
        )
    print(
        f"{index['_written']} shards written, {index['_skipped']} already complete, in {dt:.1f}s; "
        f"index: {os.path.join(args.out, INDEX_NAME)}"
    )
    if index["bad_images"]:
        print(
            f"{len(index['bad_images'])} unusable images left out; report: {os.path.join(args.out, 'bad_images.csv')}"
        )
        for b in index["bad_images"][:20]:
            print(f"  {b['path']}: {b['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
