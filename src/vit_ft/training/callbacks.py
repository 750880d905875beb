"""Lightning callbacks of vit-ft's own (the rest come from Lightning: ModelCheckpoint, ...).

* :class:`NonFiniteLossGuard`: a NaN/inf loss or gradient stops the run (or skips the step) before
  the weights change, and non-finite weights are never checkpointed;
* :class:`MetricsHistory`: ``history.csv`` in the run folder, one row per logged step and per validation;
* :class:`RunReport`: redraws the run report after each validation, with a drawing function it is given
  (``vit_ft.report.build_report`` in conf/callbacks/default.yaml: the report package sits above this one).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from vit_ft.errors import ConfigError, RunFault
from vit_ft.io import SafeCSVWriter, csv_text, write_text_atomic

log = logging.getLogger("vit_ft")


NONFINITE_ACTIONS = ("stop", "skip")


def first_nonfinite(tensors: list[torch.Tensor]) -> float | None:
    """The global L2 norm of ``tensors`` when it is not finite (NaN or inf), else None."""
    if not tensors:
        return None
    norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors])
    norm = float(torch.linalg.vector_norm(norms))
    return None if math.isfinite(norm) else norm


class NonFiniteLossGuard(Callback):
    """A NaN/inf training loss or gradient norm never reaches the weights.

    Checked after the backward pass, before the optimizer step (and before gradient clipping, which
    would turn an inf norm into NaN weights):

    * ``action="stop"`` (``trainer.on_nonfinite=stop``, the default): raise :class:`RunFault` with one
      line (the step, which value) before the weights change; the checkpoints already written stay;
    * ``action="skip"``: drop that optimizer step (every gradient set to None, so the optimizer
      leaves the weights and its state, SGD momentum or AdamW moments and step count, untouched),
      count it (``skipped``, in ``metrics.json``), and stop as above after ``max_skips`` skipped steps
      in a row.

    Under fp16 with a gradient scaler, an inf gradient is the scaler's business (it skips the step and
    lowers the scale); only a non-finite loss counts. Under DDP the gradients are already reduced, so
    a NaN on one rank is a NaN on every rank and all of them decide alike (no extra collective).

    Every checkpoint save is checked as well: weights that are not finite are never written (the
    save stops the run instead). ``every_n_steps`` > 1 checks only every n-th step in stop mode.
    """

    FREE_ON_RESUME = ("",)  # a config entry of its own (older sweep configs): how often it checks

    def __init__(self, every_n_steps: int = 1, action: str = "stop", max_skips: int = 10) -> None:
        if action not in NONFINITE_ACTIONS:
            raise ConfigError(f"trainer.on_nonfinite={action!r} must be one of {list(NONFINITE_ACTIONS)}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ConfigError(f"trainer.max_nonfinite_skips={max_skips!r} must be a positive integer")
        self.every_n_steps = max(1, int(every_n_steps))
        self.action = action
        self.max_skips = max_skips
        self.skipped = 0  # optimizer steps skipped in the whole run (travels in checkpoints)
        self.consecutive = 0
        self.bad_loss: float | None = None  # a non-finite loss of a micro-batch of this step

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    def checking(self, trainer: Any) -> bool:
        return self.action == "skip" or trainer.global_step % self.every_n_steps == 0

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        if self.bad_loss is None and self.checking(trainer):
            value = loss.detach().float()
            if not bool(torch.isfinite(value).all()):
                self.bad_loss = float(value.sum())

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        bad_loss, self.bad_loss = self.bad_loss, None
        if not self.checking(trainer):
            return
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        grad_norm = None if scaler is not None else first_nonfinite([p.grad.detach() for p in params])
        if bad_loss is None and grad_norm is None:
            self.consecutive = 0
            return
        step = trainer.global_step + 1  # the optimizer step being taken (1-based, as in the logs)
        what = f"training loss {bad_loss}" if bad_loss is not None else f"gradient norm {grad_norm}"
        if self.action == "stop":
            raise RunFault(
                f"non-finite {what} at optimizer step {step} (epoch {trainer.current_epoch}): stopped "
                "before that step, the checkpoints already written are kept - lower optimizer.lr, "
                "check the data, or set trainer.on_nonfinite=skip"
            )
        self.skipped += 1
        self.consecutive += 1
        for p in params:
            p.grad = None  # the optimizer leaves parameters without a gradient (and their state) alone
        if trainer.is_global_zero:
            log.warning(
                "non-finite %s at optimizer step %d: step skipped (%d in a row)", what, step, self.consecutive
            )
        if self.consecutive >= self.max_skips:
            raise RunFault(
                f"non-finite {what} at optimizer step {step}: {self.consecutive} optimizer steps in a row "
                f"skipped (trainer.max_nonfinite_skips={self.max_skips}; {self.skipped} in the run); the "
                "checkpoints already written are kept - lower optimizer.lr or check the data"
            )

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        for name, t in (checkpoint.get("state_dict") or {}).items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise RunFault(
                    f"the weights are not finite ({name} holds NaN/inf) at optimizer step "
                    f"{trainer.global_step}: no checkpoint written, the earlier ones are as they were - "
                    "lower optimizer.lr or check the data"
                )


def nonfinite_summary(trainer: Any) -> dict[str, Any] | None:
    """``{"on_nonfinite", "skipped_steps"}`` of the run's :class:`NonFiniteLossGuard` (None without one)."""
    guard = next((c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard)), None)
    if guard is None:
        return None
    return {"on_nonfinite": guard.action, "skipped_steps": guard.skipped}


def scalar(v: Any) -> float | None:
    try:
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError, RuntimeError):
        return None


class MetricsHistory(Callback):
    """``<dirpath>/history.csv``: ``step`` (optimizer steps done), ``epoch``, then one column per metric
    (``train/loss``, ``train/lr``, ``val/acc1``, ``val_ema/acc1`` with EMA, ...), an empty cell where a
    metric was not logged.

    A ``train/*`` row every ``every_n_steps`` optimizer steps (default: the trainer's
    ``log_every_n_steps``), a ``val/*`` row after each validation, a ``test/*`` row after a test. The file
    is rewritten atomically after each validation, at the end of training and on an exception; only
    rank 0 records or writes. The rows travel in checkpoints, so a resumed run's history goes on."""

    FILENAME = "history.csv"

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int | None = None) -> None:
        self.path = Path(dirpath) / self.FILENAME
        self.every_n_steps = every_n_steps
        self.rows: list[dict[str, float]] = []
        self.last_step = -1
        self.restored = False

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows") or []]
        self.restored = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if not self.restored and self.path.is_file():  # resumed in the same folder from an older checkpoint
            self.rows = read_history(self.path)
        step = trainer.global_step
        self.rows = [r for r in self.rows if r.get("step", 0) <= step]
        self.last_step = step

    def record(self, trainer: Any, prefix: str) -> None:
        values = {
            k: v
            for k, v in ((k, scalar(v)) for k, v in trainer.callback_metrics.items() if k.startswith(prefix))
            if v is not None
        }
        if values:
            self.rows.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **values})

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step == self.last_step:
            return
        self.last_step = step
        every = max(1, int(self.every_n_steps or trainer.log_every_n_steps or 1))
        if step % every == 0 or step == 1:
            self.record(trainer, "train/")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self.record(trainer, "val")  # val/* and, with model.ema, val_ema/*
            self.write()

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self.record(trainer, "test")
            self.write()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self.write()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        if not self.rows:
            return
        metrics = sorted({k for r in self.rows for k in r} - {"step", "epoch"})
        buf = io.StringIO()
        w = SafeCSVWriter(buf, lineterminator="\n")
        w.writerow(["step", "epoch", *metrics])
        for r in self.rows:
            w.writerow([int(r["step"]), int(r["epoch"]), *(format_value(r.get(m)) for m in metrics)])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, buf.getvalue())


def format_value(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a ``history.csv`` (cells that are empty or not numbers left out)."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                r = {}
                for k, v in row.items():
                    try:
                        r[csv_text(k)] = float(v)
                    except (TypeError, ValueError):
                        continue
                if "step" in r and "epoch" in r:
                    rows.append(r)
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return rows


class RunReport(Callback):
    """After a validation (not the sanity check), on rank 0 only, call
    ``draw(dirpath, pl_module.eval_analysis)`` (the analysis is None when the model has none).

    ``draw`` is ``vit_ft.report.build_report`` in the default config. Its cost stays under ``max_share``
    of the run's time: a validation is skipped when the last redraw took longer than ``max_share`` of the
    time since it (the first always draws; ``max_share=None``: every validation draws). The task draws
    the final report when the run ends. A failure is logged once as a warning and never stops training;
    ``seconds`` adds up the time spent drawing, ``skipped`` counts the validations left out."""

    FREE_ON_RESUME = ("",)  # its whole config may change when a run resumes (see tasks/resume.py)

    def __init__(
        self,
        dirpath: str | os.PathLike,
        draw: Callable[[str, Any], Any],
        max_share: float | None = 0.05,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.dirpath = str(dirpath)
        self.clock = clock  # seconds; a test passes its own
        self.draw = draw
        self.max_share = max_share
        self.seconds = 0.0
        self.skipped = 0
        self.last_cost: float | None = None
        self.last_end = 0.0
        self.warned = False

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        start = self.clock()
        if self.max_share is not None and self.last_cost is not None:
            if self.last_cost > self.max_share * (start - self.last_end):
                self.skipped += 1
                return
        try:
            self.draw(self.dirpath, getattr(pl_module, "eval_analysis", None))
        except Exception as e:  # noqa: BLE001 - a picture must never stop training
            if not self.warned:
                log.warning("run report not redrawn: %s: %s", type(e).__name__, e)
                self.warned = True
        finally:
            self.last_end = self.clock()
            self.last_cost = self.last_end - start
            self.seconds += self.last_cost
