"""What every vit-ft classifier shares (:class:`~vit_ft.models.classifier.ViTClassifier`, the linear
probe): the eval steps and their logging, the train logs, the optimizer and schedule, and the calls
into the EMA (:mod:`~vit_ft.models.ema`) and the random state of a resume (:mod:`vit_ft.training.rng`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassAccuracy

from vit_ft.checkpoint_format import ema_chosen, multilabel_thresholds
from vit_ft.compat import forget_step_logs, lightning_logs_now
from vit_ft.errors import ConfigError
from vit_ft.models.analysis import unique_class_names
from vit_ft.models.ema import EmaWeights, restore_ema
from vit_ft.models.streams import eval_streams
from vit_ft.training.optim import build_optimizer, build_scheduler
from vit_ft.training.rng import RngResume

log = logging.getLogger(__name__)


def logging_step(trainer: Any) -> bool:
    """Whether the training step running now logs: Lightning's logging steps (``log_every_n_steps``,
    the test Lightning itself applies) and the run's first step (the first row of ``history.csv``)."""
    return trainer.global_step == 0 or lightning_logs_now(trainer)


FUSED_TYPES = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def fused_optimizer(module: torch.nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """:func:`build_optimizer` with ``fused=True`` where torch has a fused kernel (SGD, Adam, AdamW on
    CPU or CUDA, unless ``optimizer.fused``/``foreach`` is given): one kernel per step, and a skipped
    step that the non-finite guard decides on the device (``found_inf``) without a host read."""
    opt = build_optimizer(module, **cfg)
    params = [p for g in opt.param_groups for p in g["params"]]
    if (
        type(opt) not in FUSED_TYPES
        or "fused" in cfg
        or "foreach" in cfg
        or not params
        or any(p.device.type not in ("cpu", "cuda") or not p.is_floating_point() for p in params)
    ):
        return opt
    try:
        return build_optimizer(module, **cfg, fused=True)
    except (ConfigError, RuntimeError, ValueError, TypeError):  # a dtype or device it does not take
        return opt


class ClassifierSteps(L.LightningModule):
    """Metrics, logging, eval steps and the optimizer/schedule shared by every vit-ft classifier
    (:class:`ViTClassifier` and the linear probe on cached features).

    Each validation (and test) logs what its evaluators give (:func:`~vit_ft.models.streams.eval_streams`:
    ``<stage>/loss``, ``acc1``, ``acc5``, ``acc1_macro``, ``ece``, and ``<stage>_ema/*`` with an EMA),
    gathered over ranks, and leaves :attr:`eval_analysis`: the gathered confusion matrix, the class
    names and the reliability diagram, for callbacks (read it from ``on_validation_end``/``on_test_end``:
    Lightning calls callbacks' ``on_*_epoch_end`` first)."""

    num_classes: int
    class_names: list[str] | None
    optimizer_cfg: dict[str, Any]
    scheduler_cfg: dict[str, Any]
    ema: EmaWeights | None = None  # model.ema: see vit_ft.models.ema

    def _init_steps(self, k: int, task: str = "single") -> None:
        """The metrics (one evaluator per stream) and the random state of a resume; after ``self.ema``.
        ``task``: ``single`` or ``multilabel`` (per-class :attr:`thresholds`, 0.5 until chosen on val)."""
        self.task = task
        self.multilabel = task == "multilabel"
        self.thresholds = torch.full((k,), 0.5) if self.multilabel else None
        self.train_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.evaluators = eval_streams(k, ema=self.ema is not None, task=task)
        self.eval_analysis: dict[str, Any] | None = None
        self.rng = RngResume()

    def _log_train(self, loss: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None) -> None:
        """``train/loss``, ``train/lr`` and, when labels are hard (no mixup), ``train/acc1``: only at
        Lightning's logging steps (``trainer.log_every_n_steps``) and the first step, so that the steps
        between make no device-to-host read (a logged value is read back for the progress bar)."""
        if not logging_step(self.trainer):
            return
        if logits is not None:
            self.train_acc1(logits, y)
            self.log("train/acc1", self.train_acc1, on_step=True, on_epoch=False)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=y.shape[0])
        lr = max(g["lr"] for g in self.optimizers().param_groups)  # the head's under layer-wise decay
        self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=True)

    def _eval_step(self, batch: Any, stage: str) -> None:
        if batch is None:  # every image of this batch was skipped as unusable
            return
        x, y = batch
        self.evaluators[stage].update(self(x), y)
        if self.ema is not None:
            self.evaluators[f"{stage}_ema"].update(self._ema_logits(x).to(y.device), y)

    def _eval_epoch_end(self, stage: str) -> None:
        """Log every stream of ``stage`` and set :attr:`eval_analysis` (not after the sanity check)."""
        if self.ema is not None:
            self.ema.visit(None)  # a CPU-pinned EMA goes home after the evaluation
        for prefix in (stage, f"{stage}_ema"):
            if prefix not in self.evaluators:
                continue
            ev = self.evaluators[prefix]
            if self.multilabel:  # F1 and exact match at the thresholds in use
                ev.thresholds = self.thresholds
            for name, value in ev.compute(analysis=not self.trainer.sanity_checking):
                # Already gathered over ranks; sync_dist only keeps Lightning quiet.
                self.log(name, value, sync_dist=True, prog_bar=name.rsplit("/", 1)[1] in ev.progress)
        res = self.evaluators[stage].analysis
        if res is not None and self.multilabel and stage == "val" and self.trainer.state.fn == "fit":
            # per class the threshold of max F1 on this validation: what the checkpoint saved now keeps
            self.thresholds = torch.tensor(res["best_thresholds"], dtype=torch.float32)
        if res is not None:
            ok = self.class_names and len(self.class_names) == self.num_classes
            names = unique_class_names(self.class_names if ok else [str(i) for i in range(self.num_classes)])
            self.eval_analysis = {"split": stage, "class_names": names, **res}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # -- EMA of the weights (model.ema): updated after each optimizer step, evaluated beside the raw ----
    def _ema_target(self) -> torch.nn.Module:
        """The module whose EMA is kept (a subclass's trained network or head)."""
        raise NotImplementedError

    def _ema_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the EMA weights for an eval batch ``x``."""
        raise NotImplementedError

    def _ema_state(self, ema_state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The EMA's whole state dict from a checkpoint's ``model_ema.*`` entries (prefix dropped)."""
        return ema_state

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # every rank, from the same synchronised weights: the EMAs stay equal
            self.ema.update(self._ema_target(), step=self.trainer.global_step + 1)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.start(self.device, self._ema_target())

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self.ema.visit(self.device)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    @contextmanager
    def ema_weights_for(self, purpose: str = "eval") -> Iterator[None]:
        """Inside the block, the trained module holds the EMA weights when ``model.ema.use_for`` picks
        them for ``purpose`` (the raw weights are back after it)."""
        if self.ema is None or self.ema.missing or not ema_chosen(self.hparams.get("ema"), purpose):
            yield
        else:
            with self.ema.swapped_into(self._ema_target()):
                yield

    # -- optimisation -------------------------------------------------------------------------------
    def _optimizers_for(self, module: torch.nn.Module, **overrides: Any) -> dict[str, Any]:
        """timm optimizer over ``module``'s trainable parameters, warmup + decay per optimizer step."""
        opt = fused_optimizer(module, {**self.optimizer_cfg, **overrides})
        total = int(self.trainer.estimated_stepping_batches)
        warmup = int(self.scheduler_cfg.get("warmup_steps", 0) or 0)
        if warmup >= total:
            log.warning(
                "scheduler.warmup_steps=%d is not below the run's %d optimizer steps: the run never leaves warmup",
                warmup,
                total,
            )
        sched = build_scheduler(opt, total_steps=total, **self.scheduler_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # -- checkpoints: every rank's random state (exact resume) and the EMA's entries; subclasses add theirs
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.rng.save(checkpoint, self._trainer)

    def multilabel_record(self) -> dict[str, Any] | None:
        """The checkpoint record's ``multilabel`` entry (the thresholds); ``None`` when single-label."""
        return {"thresholds": self.thresholds.tolist()} if self.multilabel else None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        thr = multilabel_thresholds(checkpoint)
        if self.multilabel and thr is not None and len(thr) == self.num_classes:
            self.thresholds = torch.tensor(thr, dtype=torch.float32)
        self.rng.load(checkpoint)  # set back before the first resumed step
        restore_ema(self.ema, checkpoint, lambda ema_state: self._ema_state(ema_state, checkpoint))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.rng.restore(self.trainer)
        if not logging_step(self.trainer):
            forget_step_logs(self.trainer)
