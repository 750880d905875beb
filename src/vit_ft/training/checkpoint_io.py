"""Checkpoint files that are complete or absent, and a save that fails as one line.

A local checkpoint is written by ``torch.save`` straight into ``<file>.tmp`` beside it, flushed to
disk and renamed over ``<file>``: a crash or a kill mid-save never leaves half a checkpoint under the
real name, and nothing is written to ``$TMPDIR`` (Lightning's own writer goes through fsspec, whose
transaction stages the file in ``$TMPDIR``: a kill there leaves an orphan the size of the model).

A save that fails (a full disk, a folder that is read-only or was deleted) removes its ``.tmp``,
leaves the previous checkpoint as it was and raises :class:`~vit_ft.errors.RunFault` with one line.
A ``*.ckpt.tmp`` left by a kill is removed at the first save into its folder.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vit_ft.errors import RunFault
from vit_ft.io import atomic_path

log = logging.getLogger("vit_ft")

TMP_SUFFIX = ".tmp"
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def open_checkpoint_file(path: Path) -> BinaryIO:
    """The temporary file a checkpoint is written into (a seam the fault tests replace)."""
    return open(path, "wb")


def write_fault(path: Path, e: OSError) -> RunFault:
    """The one line for a checkpoint that could not be written to ``path``."""
    folder = path.parent
    reason = e.strerror or type(e).__name__
    if e.errno == errno.ENOSPC or e.errno == getattr(errno, "EDQUOT", -1):
        try:
            free = f", {shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
        except OSError:
            free = ""
        what = f"the disk is full ({reason}{free}) - free space there or set paths.output_dir elsewhere"
    elif e.errno in _NOT_WRITABLE:
        what = f"the folder {folder} is not writable ({reason}) - fix its permissions or set paths.output_dir"
    elif e.errno == errno.ENOENT and not folder.is_dir():
        what = f"the folder {folder} no longer exists (deleted or unmounted while the run went on)"
    else:
        what = f"{reason} (errno {e.errno})"
    return RunFault(f"cannot write checkpoint {path}: {what}; the previous checkpoint is kept")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, atomic and without a temporary file elsewhere (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self.folders: set[Path] = set()  # folders written into (a stale .tmp there removed)

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # object storage: Lightning's way
            super().save_checkpoint(checkpoint, path, storage_options)
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
        except OSError as e:
            raise write_fault(target, e) from e

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
