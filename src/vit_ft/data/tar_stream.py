"""Shard files, read forward: URL patterns (local paths, ``pipe:``, http(s), ``hf://`` through webdataset's
``gopen``), the shards' ``index.json``, and tar members parsed header by header (ustar / GNU / pax; a
member's bytes are skipped with a seek on local files), as :mod:`vit_ft.data.wds` streams them."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from vit_ft.data.shards import INDEX_NAME
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)


# -- URLs ----------------------------------------------------------------------------------------
def expand_urls(spec: Any, key: str = "data.train") -> list[str]:
    """Shard URLs of ``spec``: one string (brace patterns ``{000000..000127}`` expanded) or a list."""
    from braceexpand import braceexpand

    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "???")):
        raise ConfigError(f"{key} is not set; pass {key}=/path/to/train-{{000000..000127}}.tar (shards)")
    items = [spec] if isinstance(spec, str) else list(spec)
    urls = [u for item in items for u in braceexpand(str(item))]
    if not urls:
        raise ConfigError(f"{key}={spec!r} names no shard; pass a path or pattern of .tar shards")
    return urls


def _local(url: str) -> str | None:
    if url.startswith("file://"):
        return url[len("file://") :]
    if "://" in url or url.startswith("pipe:"):
        return None
    return os.path.expanduser(url)


def cached_copy(url: str, cache_dir: str) -> str:
    """The local copy of the shard at ``url`` in ``cache_dir`` (``data.shard_cache``), fetched once per
    folder: the first reader downloads it under an exclusive lock (into ``.part``, renamed when whole),
    every other worker and rank sharing the folder waits and then reads the file, with seeks. Keyed by
    the URL: a shard changed at its source needs the folder cleared."""
    import fcntl
    import hashlib
    import re
    import shutil

    import webdataset as wds

    tail = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/'\" ").rsplit("/", 1)[-1])[-80:]
    path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest()[:16] + "-" + tail)
    if os.path.isfile(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        except OSError:  # no flock on this file system: each reader may fetch, the rename stays atomic
            pass
        if not os.path.isfile(path):
            part = f"{path}.part{os.getpid()}"
            try:
                with wds.gopen(url, "rb") as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.replace(part, path)
            except Exception as e:
                if os.path.exists(part):
                    os.remove(part)
                raise OSError(
                    f"shard {url!r}: could not copy it into data.shard_cache={cache_dir!r} ({e})"
                ) from e
    return path


def open_url(url: str, cache_dir: str | None = None) -> tuple[Any, bool]:
    """``(binary file object, seekable)`` for a local path, ``pipe:`` command, http(s) or hf:// URL;
    with ``cache_dir`` a remote shard is read from its local copy (:func:`cached_copy`)."""
    path = _local(url)
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"shard {url!r} does not exist; check data.train / data.val")
        return open(path, "rb"), True
    if cache_dir:
        return open(cached_copy(url, cache_dir), "rb"), True
    import webdataset as wds

    return wds.gopen(url, "rb"), False


def default_index(url: str) -> str | None:
    if url.startswith("pipe:"):
        return None
    return url.rsplit("/", 1)[0] + "/" + INDEX_NAME if "/" in url else INDEX_NAME


def load_index(url: str) -> dict | None:
    """The parsed ``index.json`` at ``url`` (path or URL); ``None`` when there is none."""
    path = _local(url)
    if path is not None and not os.path.isfile(path):
        return None
    try:
        f, _ = open_url(url)
        with f:
            data = f.read()
        return json.loads(data) if data else None
    except (OSError, ValueError, ConfigError) as e:
        log.info("no shard index at %s (%s)", url, e)
        return None


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset's ``(key, extension)`` of a tar member: the name up to the first dot of its base name."""
    head, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(head, stem), ext.lower()


def _read_exact(f: Any, n: int) -> bytes:
    data = f.read(n)
    while len(data) < n:  # a pipe may return less
        more = f.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _number(field: bytes) -> int:
    """A tar header number: octal text, or GNU base-256 (first byte 0x80) for large sizes."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.strip(b"\0 ")
    return int(text, 8) if text else 0


def _pax(data: bytes) -> dict[bytes, bytes]:
    out = {}
    while data:
        length = int(data.split(b" ", 1)[0])
        key, _, value = data[:length].split(b" ", 1)[1][:-1].partition(b"=")
        out[key], data = value, data[length:]
    return out


def iter_members(url: str, cache_dir: str | None = None):
    """``(sample index in the shard, extension, read)`` of every file of shard ``url`` (the sample index
    counts keys); ``read()`` returns the file's bytes until the next member is asked for. Only headers are
    parsed (ustar, GNU long names, pax paths and sizes); unread data is skipped with a seek (local files)
    or read past (streams). Python's ``tarfile`` parses a header ~10x slower, which a reader of small
    images pays on every sample."""
    f, seekable = open_url(url, cache_dir)

    def skip(n: int) -> None:
        if seekable:
            f.seek(n, os.SEEK_CUR)
        else:
            while n > 0:
                got = len(f.read(min(n, 1 << 20)))
                if not got:
                    return
                n -= got

    try:
        last, idx, name_next, size_next = None, -1, None, None
        while True:
            hdr = _read_exact(f, 512)
            if len(hdr) < 512 or not hdr.strip(b"\0"):
                return
            size = _number(hdr[124:136]) if size_next is None else size_next
            typ, padded = hdr[156:157], (size + 511) & ~511
            if typ in (b"L", b"x", b"g"):  # GNU long name / pax headers: the next member's name, size
                meta = _read_exact(f, padded)[:size]
                if typ == b"L":
                    name_next = meta.rstrip(b"\0").decode("utf-8", "replace")
                elif typ == b"x":
                    pax = _pax(meta)
                    name_next = pax[b"path"].decode("utf-8", "replace") if b"path" in pax else name_next
                    size_next = int(pax[b"size"]) if b"size" in pax else None
                continue
            name = name_next
            if name is None:
                name = hdr[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                prefix = hdr[345:500].split(b"\0", 1)[0] if hdr[257:263] == b"ustar\x00" else b""
                if prefix:
                    name = prefix.decode("utf-8", "replace") + "/" + name
            name_next, size_next = None, None
            if typ not in (b"0", b"\0", b"7"):  # not a regular file
                skip(padded)
                continue
            key, ext = _member_key(name)
            if key != last:
                idx, last = idx + 1, key
            done = [False]

            def read(size: int = size, padded: int = padded, done: list = done) -> bytes:
                done[0] = True
                data = _read_exact(f, size)
                skip(padded - size)
                return data

            yield idx, ext, read
            if not done[0]:
                skip(padded)
    finally:
        f.close()


def scan_shard(url: str) -> list[int]:
    """The labels (``.cls``; -1 when missing) of the samples of ``url``, in order (no index needed)."""
    labels: list[int] = []
    for idx, ext, read in iter_members(url):
        while len(labels) <= idx:
            labels.append(-1)
        if ext == "cls":
            labels[idx] = int(read().decode().strip())
    return labels
