"""Where optimizer steps end: the one test of it that step checkpoints and preemption share."""

from __future__ import annotations

from typing import Any


def is_last_batch(trainer: Any) -> bool:
    """Whether the training batch running now is its epoch's last (Lightning's own test, which also
    knows the end of a loader without a length and ``limit_train_batches``)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def is_step_boundary(trainer: Any, batch_idx: int) -> bool:
    """Whether the training batch ``batch_idx`` (in ``on_train_batch_end``) ended an optimizer step:
    with ``accumulate_grad_batches = k`` every k-th batch of an epoch, and its last batch (where
    Lightning steps on a partial accumulation). A checkpoint taken between micro-batches would lose
    the accumulated gradients."""
    k = max(1, int(trainer.accumulate_grad_batches))
    return k == 1 or (batch_idx + 1) % k == 0 or is_last_batch(trainer)
