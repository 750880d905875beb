"""Lightning callbacks of vit-ft's own (the rest come from Lightning: ModelCheckpoint, ...; the
non-finite guard has its own module, :mod:`vit_ft.training.nonfinite`).

* :class:`MetricsHistory`: ``history.csv`` in the run folder, one row per logged step and per validation;
* :class:`RunReport`: redraws the run report after each validation, with a drawing function it is given
  (``vit_ft.report.build_report`` in conf/callbacks/default.yaml: the report package sits above this one).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from vit_ft.io import SafeCSVWriter, csv_text, write_text_atomic

log = logging.getLogger("vit_ft")


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
    ``log_every_n_steps``) that is also a logging step (vit-ft logs ``train/*`` only there, so that the
    steps between read nothing back from the device) and after the first step, a ``val/*`` row after each validation, a ``test/*`` row after a test. The file
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
        logged = step == 1 or (trainer.log_every_n_steps and step % trainer.log_every_n_steps == 0)
        if (step % every == 0 or step == 1) and logged:  # vit-ft logs train/* at logging steps only
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
