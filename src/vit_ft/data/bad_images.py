"""The bad-image ledger: what ``data.on_bad_image`` does with an unusable image, and which ones a run left out.

A bad image is met in one of three places: a DataLoader worker decoding a record of a map-style split
(it sets that record's flag, in shared memory, so every worker skips it from then on), a worker of a
streamed split (no record index: it counts it in its slot), or the main process decoding a batch on the
device (``data.decode_device=cuda``). :class:`BadImageLedger` holds all three and gives the one report
that ``metrics.json`` shows; ``on_bad_image=error`` turns any of them into one :class:`UnusableImageError`.
What the policy does with one bad image, wherever it is met, is :func:`skip_or_raise`'s.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import torch

from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)

STREAM_SLOTS = 1024  # per-worker counters of a streamed split (a worker writes slot id % STREAM_SLOTS)
REPORTED_FILES = 1000  # files listed in the report at most
ON_BAD_IMAGE = ("error", "skip")  # the values of data.on_bad_image (and of the tools' own option)


class UnusableImageError(ConfigError):
    """A bad image in ``on_bad_image=error`` mode: one line naming the file and the way out.

    DataLoader workers re-raise an exception in the main process as ``type(msg)`` where ``msg`` holds
    the worker's whole traceback; this class keeps only the original one-line message.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            message = last.split(": ", 1)[1] if last.startswith(("vit_ft.", "UnusableImageError")) else last
        super().__init__(message)


def unusable_message(path: str, reason: str) -> str:
    return f"unusable image {path}: {reason}; fix or remove it, or set data.on_bad_image=skip"


def check_on_bad_image(value: Any, key: str = "data.on_bad_image") -> None:
    """Raise :class:`ConfigError` unless ``value`` is a policy (``key``: the option as the user wrote it)."""
    if value not in ON_BAD_IMAGE:
        raise ConfigError(f"{key}={value!r} must be 'error' or 'skip'")


def skip_or_raise(on_bad_image: str, name: str, reason: str, *, first: bool = True) -> None:
    """What ``on_bad_image`` does with an image that cannot be decoded: ``error`` raises one
    :class:`UnusableImageError` naming it; ``skip`` logs it (when ``first``: the first time it is met) and
    returns, for the caller to leave it out and flag or count it."""
    if on_bad_image != "skip":
        raise UnusableImageError(unusable_message(name, reason)) from None
    if first:
        log.warning("skipping unusable image %s (%s)", name, reason)


class BadImageLedger:
    """The bad images of one DataModule, over its splits, worker processes and the device.

    ``on_bad_image``: ``error`` (one clear error) or ``skip`` (left out, logged once, reported).
    """

    def __init__(self, on_bad_image: str = "error") -> None:
        check_on_bad_image(on_bad_image)
        self.on_bad_image = on_bad_image
        self.flags: dict[str, torch.Tensor] = {}  # map-style split -> uint8 flag per record (shared)
        self.stream_counts: dict[str, torch.Tensor] = {}  # streamed split -> int64 per worker slot (shared)
        self.device_counts: dict[str, int] = {}  # streamed split -> bad images found decoding on the device
        self._seen_on_device: set = set()

    def record_flags(self, split: str, n: int) -> torch.Tensor:
        """The shared flags of a map-style split of ``n`` records (the workers write them)."""
        if split not in self.flags:
            self.flags[split] = torch.zeros(n, dtype=torch.uint8).share_memory_()
        return self.flags[split]

    def stream_slots(self, split: str) -> torch.Tensor:
        """The shared per-worker counters of a streamed split."""
        if split not in self.stream_counts:
            self.stream_counts[split] = torch.zeros(STREAM_SLOTS, dtype=torch.int64).share_memory_()
        return self.stream_counts[split]

    def found_on_device(
        self, split: str, records: Any, index: int, file_name: str, reason: str, data: torch.Tensor
    ) -> None:
        """A JPEG that no decoder could read, met while decoding a batch in the main process:
        raise (``error``), or flag the record / count the streamed file once and log it once (``skip``).
        ``index``: its record index (``-1`` when streamed); ``data``: its bytes."""
        if index >= 0 and hasattr(records, "name"):
            name = records.name(index)
        else:
            name = f"{split} ({file_name})"
        flags = self.flags.get(split) if index >= 0 else None
        if flags is not None:
            first = not bool(flags[index])
        else:  # streamed: no index; count each file once (by name, or by content for raw bytes)
            key = (split, file_name if file_name != "<bytes>" else zlib.crc32(data.cpu().numpy()))
            first = key not in self._seen_on_device
        skip_or_raise(self.on_bad_image, name, reason, first=first)
        if flags is not None:
            flags[index] = 1  # shared memory: the workers leave it out from now on
        elif first:
            self._seen_on_device.add(key)
            self.device_counts[split] = self.device_counts.get(split, 0) + 1

    def files(self, splits: dict[str, Any]) -> list[str]:
        """The flagged files of the map-style splits (their names; ``split[i]`` without one)."""
        out = []
        for split, flags in self.flags.items():
            records = splits[split]
            for i in torch.nonzero(flags).flatten().tolist():
                out.append(records.name(i) if hasattr(records, "name") else f"{split}[{i}]")
        return out

    def report(self, splits: dict[str, Any]) -> dict:
        """``{"count": n, "by_split": {...}, "files": [...]}`` for metrics.json (files capped at 1000)."""
        by_split = {k: int(v.sum()) for k, v in self.flags.items()}
        files = self.files(splits)
        count = len(files)
        for split, n in self.device_counts.items():
            by_split[split] = by_split.get(split, 0) + n
            count += n
        for split, counts in self.stream_counts.items():
            n = int(counts.sum())
            by_split[split] = by_split.get(split, 0) + n
            count += n
        return {"count": count, "by_split": by_split, "files": files[:REPORTED_FILES]}
