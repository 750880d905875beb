"""Checkpoint files that are complete or absent, and a save that fails as one line.

A local checkpoint is written by ``torch.save`` straight into ``<file>.tmp`` beside it, flushed to
disk and renamed over ``<file>``: a crash or a kill mid-save never leaves half a checkpoint under the
real name, and nothing is written to ``$TMPDIR`` (Lightning's own writer goes through fsspec, whose
transaction stages the file in ``$TMPDIR``: a kill there leaves an orphan the size of the model).

A save that fails (a full disk, a folder that is read-only or was deleted, a value pickle refuses, an
object store's error) removes its ``.tmp``, leaves the previous checkpoint as it was and raises
:class:`~vit_ft.errors.RunFault` with one line naming the file. The fault is looked for along the whole
cause/context chain: ``torch.save`` reports a full disk as a ``RuntimeError`` raised while handling it.
A ``*.ckpt.tmp`` left by a kill is removed at the first save into its folder.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vit_ft.errors import RunFault
from vit_ft.io import atomic_path

log = logging.getLogger("vit_ft")

TMP_SUFFIX = ".tmp"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_TORCH_WRITE_FAILED = ("PytorchStreamWriter failed", "inline_container.cc", "file write failed")
_STORAGE_MODULES = {"fsspec", "s3fs", "gcsfs", "adlfs", "botocore", "boto3", "google", "azure", "aiohttp"}


def open_checkpoint_file(path: Path) -> BinaryIO:
    """The temporary file a checkpoint is written into (a seam the fault tests replace)."""
    return open(path, "wb")


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or while handling (``torch.save`` turns the ``OSError`` of a
    full disk into a ``RuntimeError`` whose context it is)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 20:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_pickling_error(e: BaseException) -> bool:
    """A value in the checkpoint that pickle refuses (a lambda, a local function, a lock)."""
    text = str(e).lower()
    return isinstance(e, pickle.PicklingError) or (
        isinstance(e, (TypeError, AttributeError)) and ("pickle" in text)
    )


def is_storage_error(e: BaseException) -> bool:
    """An error of the storage under the checkpoint: torch's zip writer failing a write, or an object
    store's client (s3fs, gcsfs, adlfs and their SDKs)."""
    if isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED):
        return True
    return type(e).__module__.split(".")[0] in _STORAGE_MODULES


def os_error_reason(path: Path, e: OSError) -> str:
    folder = path.parent
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        try:
            free = f", {shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
        except OSError:
            free = ""
        full = "the disk is full" if e.errno == errno.ENOSPC else "the disk quota is used up"
        return f"{full} ({reason}{free}) - free space there or set paths.output_dir elsewhere"
    if e.errno in _NOT_WRITABLE:
        return f"the folder {folder} is not writable ({reason}) - fix its permissions or set paths.output_dir"
    if e.errno == errno.ENOENT and not folder.is_dir():
        return f"the folder {folder} no longer exists (deleted or unmounted while the run went on)"
    return f"{reason} (errno {e.errno})"


def write_fault(path: Path | str, exc: BaseException) -> RunFault | None:
    """The one line for a checkpoint that could not be written to ``path``, found anywhere in the
    cause/context chain of ``exc`` (None for anything else: a bug keeps its traceback)."""
    chain = list(causes(exc))
    found = next((e for e in chain if isinstance(e, RunFault)), None)
    if found is not None:
        return found
    what = None
    for e in chain:
        if isinstance(e, OSError):
            what = os_error_reason(Path(str(path)), e)
            break
    if what is None:
        pickling = next((e for e in chain if is_pickling_error(e)), None)
        storage = next((e for e in chain if is_storage_error(e)), None)
        if pickling is not None:
            what = f"a value in it cannot be pickled ({one_line(pickling)}) - keep only plain data in the checkpoint"
        elif storage is not None:
            what = f"the storage refused the write ({type(storage).__name__}: {one_line(storage)})"
    if what is None:
        return None
    local = "://" not in str(path) or str(path).startswith("file://")
    if local and not Path(str(path).removeprefix("file://")).exists():
        return RunFault(f"cannot write checkpoint {path}: {what}; there was no earlier checkpoint to keep")
    return RunFault(f"cannot write checkpoint {path}: {what}; the previous checkpoint is kept")


def one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic and without a temporary file elsewhere (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.folders: set[Path] = set()  # folders written into (a stale .tmp there removed)

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # object storage: Lightning's way
            try:
                super().save_checkpoint(checkpoint, path, storage_options)
            except Exception as e:
                fault = write_fault(path, e)
                if fault is None:
                    raise
                raise fault from e
            return
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        target = Path(str(path).removeprefix("file://"))
        try:
            self.prepare_folder(target.parent)
            with atomic_path(target, TMP_SUFFIX) as tmp, open_checkpoint_file(tmp) as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except Exception as e:  # torch.save wraps the OSError of a full disk in a RuntimeError
            fault = write_fault(target, e)
            if fault is None:
                raise
            raise fault from e

    def prepare_folder(self, folder: Path) -> None:
        """Create the folder at its first save (a later save into a vanished one fails instead) and
        remove the ``*.ckpt.tmp`` a killed save left there."""
        if folder in self.folders:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"*.ckpt{TMP_SUFFIX}"):
            try:
                stale.unlink()
                log.info("removed %s, left by a save that did not finish", stale)
            except OSError:
                pass
        self.folders.add(folder)


def share_save_faults(strategy: Any) -> None:
    """Under DDP or FSDP, rank 0 writes the checkpoint (with FSDP's sharded state, every rank its part)
    while the others go on to the next collective: a write that fails on one rank (a full disk) would
    leave the others waiting there until the process group's timeout. After each save every rank says
    whether its write failed (one boolean all-reduce per save, nothing per step), and all stop with a
    :class:`RunFault`: the failing rank with its own line, the others naming the file."""
    if getattr(strategy, "_vit_ft_shared_faults", False):
        return
    save = strategy.save_checkpoint

    def save_checkpoint(checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        if int(getattr(strategy, "world_size", 1) or 1) <= 1:
            return save(checkpoint, filepath, storage_options)
        error: BaseException | None = None
        try:
            save(checkpoint, filepath, storage_options)
        except Exception as e:  # noqa: BLE001 - every rank must reach the decision below
            error = e
        if strategy.reduce_boolean_decision(error is not None, all=False):
            if error is not None:
                raise error
            raise RunFault(
                f"cannot write checkpoint {filepath}: another rank's write failed (its error line says why); "
                "the previous checkpoint is kept"
            )

    strategy.save_checkpoint = save_checkpoint
    strategy._vit_ft_shared_faults = True  # noqa: SLF001 - our own mark on the instance
