"""Lightning callbacks of vit-ft's own (the rest come from Lightning: ModelCheckpoint, ...)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossGuard(Callback):
    """Raise ``FloatingPointError`` at the first non-finite training loss (checked every
    ``every_n_steps`` batches; under DDP one rank's NaN stops every rank, so none hangs)."""

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = max(1, int(every_n_steps))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % self.every_n_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise FloatingPointError(
                f"non-finite training loss at step {trainer.global_step} (batch {batch_idx}); "
                "lower optimizer.lr or check the data"
            )
