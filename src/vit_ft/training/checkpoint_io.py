"""Checkpoint files that are complete or absent."""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vit_ft.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<file>.tmp`` and renames it: a crash mid-save never leaves half a checkpoint, and a
    failed save (a full disk) leaves no temporary behind."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, str(tmp), storage_options)
