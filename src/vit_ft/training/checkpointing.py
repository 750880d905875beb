"""Step checkpoints: :class:`StepCheckpoint`, Lightning's ``ModelCheckpoint`` that also writes
mid-epoch, every ``every_n_steps`` optimizer steps and/or every ``every_minutes`` minutes, and only at
an optimizer-step boundary (never between the micro-batches of one accumulated step).

What else a checkpoint needs to resume bit for bit travels through Lightning's own hooks: the
optimizer, scheduler, AMP scaler and loop progress (Lightning), the training order (the DataModule's
``state_dict``, :mod:`vit_ft.data.resumable`), the random state (:mod:`vit_ft.training.rng`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from vit_ft.compat import model_checkpoint_save_now
from vit_ft.errors import ConfigError
from vit_ft.training.steps import is_last_batch, is_step_boundary

log = logging.getLogger("vit_ft")

# The latest state of a run, which ``ckpt_path=auto`` resumes from: ``<checkpoint dir>/last.ckpt``.
# conf/callbacks/default.yaml names it once (callbacks.last_checkpoint; the preemption entry follows it).
LAST_CHECKPOINT_NAME = "last"


def last_checkpoint_file(dirpath: str, name: str | None = None) -> str:
    """``<dirpath>/<name>.ckpt`` (``name`` defaults to :data:`LAST_CHECKPOINT_NAME`)."""
    return os.path.join(dirpath, (name or LAST_CHECKPOINT_NAME) + ModelCheckpoint.FILE_EXTENSION)


def _moved(path: Any, old: str, new: str) -> Any:
    if isinstance(path, str) and (path == old or path.startswith(old.rstrip(os.sep) + os.sep)):
        return new + path[len(old.rstrip(os.sep)) :] if path != old else new
    return path


def relocate_checkpoint_states(trainer: Any, checkpoint: dict[str, Any]) -> None:
    """A run folder that was moved or copied (``mv RUN RUN2``) and resumed there: each
    ``ModelCheckpoint`` state in ``checkpoint`` names files under the old folder. Rewrite them to the
    same files under this run's ``dirpath``, so Lightning restores the best score and paths (it drops
    them when ``dirpath`` differs) and the best checkpoint is found where it now is."""
    states = checkpoint.get("callbacks") or {}
    for cb in trainer.checkpoint_callbacks:
        state = states.get(cb.state_key)
        old, new = (state or {}).get("dirpath"), cb.dirpath
        if not isinstance(old, str) or not new or os.path.abspath(old) == os.path.abspath(new):
            continue
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            state[key] = _moved(state.get(key), old, new)
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {_moved(k, old, new): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = new
        log.info("checkpoints: the run folder moved (%s -> %s); its checkpoint records follow", old, new)


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` plus mid-epoch saves: every ``every_n_steps`` optimizer steps and/or when
    ``every_minutes`` have passed since the last save (``None`` turns either off), and at the end of
    every epoch as before (``every_n_epochs=1`` unless given).

    A mid-epoch save happens in ``on_train_batch_end`` right after an optimizer step (never between
    the micro-batches of an accumulated one, whose gradients a checkpoint does not hold) and not on
    the last batch of an epoch (the end-of-epoch save follows it, after validation). The file goes
    through the trainer's checkpoint IO (atomic in vit-ft). Under DDP, rank 0's clock decides, checked
    every ``check_every`` optimizer steps (each check is one broadcast)."""

    def __init__(
        self,
        *,
        every_n_steps: int | None = None,
        every_minutes: float | None = None,
        check_every: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ConfigError(
                f"callbacks.last_checkpoint.every_n_steps={every_n_steps!r} must be a positive integer "
                "or null (no step interval)"
            )
        if every_minutes is not None and (
            isinstance(every_minutes, bool)
            or not isinstance(every_minutes, (int, float))
            or not math.isfinite(every_minutes)
            or every_minutes <= 0
        ):
            raise ConfigError(
                f"callbacks.last_checkpoint.every_minutes={every_minutes!r} must be a positive number "
                "of minutes or null (no time interval)"
            )
        kwargs.setdefault("every_n_epochs", 1)
        super().__init__(**kwargs)
        self.every_n_steps = every_n_steps
        self.every_minutes = None if every_minutes is None else float(every_minutes)
        self.check_every = check_every
        self.clock = clock  # seconds; a test passes its own
        self.last_save_time = clock()
        self.step_saves = 0

    # Keys of its config that may change when a run resumes (how often it saves): see tasks/resume.py.
    FREE_ON_RESUME = ("every_n_steps", "every_minutes")

    @staticmethod
    def resume_file(dirpath: str, filename: str | None) -> str:
        """The file this callback keeps rewriting (``filename`` without its extension)."""
        return last_checkpoint_file(dirpath, filename)

    @property
    def state_key(self) -> str:
        # Without the intervals: a run resumed with another interval still restores this callback.
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, filename=self.filename)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self.last_save_time = self.clock()

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Before any callback loads its state: a moved or copied run folder keeps its best checkpoints.
        relocate_checkpoint_states(trainer, checkpoint)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Any checkpoint of the run (this one's, the best one's, a preemption's) restarts the clock.
        self.last_save_time = self.clock()

    def _time_due(self, trainer: Any) -> bool:
        if self.every_minutes is None:
            return False
        world = int(trainer.world_size)
        every = self.check_every or (1 if world == 1 else 10)
        if trainer.global_step % every:
            return False
        due = self.clock() - self.last_save_time >= 60.0 * self.every_minutes
        return bool(trainer.strategy.broadcast(due)) if world > 1 else due

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not is_step_boundary(trainer, batch_idx) or is_last_batch(trainer):
            return
        step = trainer.global_step
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        if (by_steps or self._time_due(trainer)) and model_checkpoint_save_now(self, trainer):
            self.step_saves += 1
