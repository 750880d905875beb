"""The LightningModule: a timm ViT, a linear head on the CLS token, the paper's training step.

Batches arrive as uint8 images and are normalised here, on the device, in one fused op. Checkpoints
carry ``arch`` (rebuilds the network offline), ``preprocessing`` and ``class_names``, so a ``.ckpt``
is self-describing: ``ViTClassifier.load_from_checkpoint(path)`` needs no network and no data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryCalibrationError,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
)

from vit_ft.checkpoint_format import (
    LORA_RECORD,
    MODEL_PREFIX,
    RECORD,
    RNG_KEY,
    build_record,
    ema_chosen,
    feature_record,
    strip_prefix,
)
from vit_ft.errors import ConfigError
from vit_ft.models.analysis import per_class_accuracy, unique_class_names
from vit_ft.models.backbone import build_backbone
from vit_ft.models.compile import CompiledForward
from vit_ft.models.ema import EMA_PREFIX, EmaWeights, build_ema, pop_ema_state
from vit_ft.models.features import head_features, network_logits, pre_logits
from vit_ft.preprocessing import Normalize, Preprocessing
from vit_ft.training.checkpointing import gather_rng_states, set_rng_state
from vit_ft.training.optim import build_optimizer, build_scheduler
from vit_ft.weights import Backbone, create_from_arch
from vit_ft.weights.assemble import HEAD_PREFIXES, head_modules
from vit_ft.weights.lora import LoraSpec, drop_base, fill_base, inject_lora, lora_checkpoint_info

log = logging.getLogger(__name__)


ECE_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


class ReliabilityBins(Metric):
    """The reliability diagram: per equal-width bin of top-1 confidence, how many predictions fell in
    it, their summed confidence and how many were right. Sums, so DDP adds the ranks' counts.

    Bins are those of torchmetrics' calibration error (``[i/n, (i+1)/n)``), except that a confidence
    of exactly 1 counts in the last bin."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, n_bins: int = ECE_BINS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = int(n_bins)
        self.add_state("count", torch.zeros(self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        # Summed confidence in millionths: an integer state, which no precision setting converts to bf16.
        self.add_state("confidence_e6", torch.zeros(self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        """``confidence``: ``[N]`` probability of the predicted class; ``correct``: ``[N]`` whether it was right."""
        conf = confidence.float()
        edges = torch.linspace(0, 1, self.n_bins + 1, device=conf.device)
        b = (torch.bucketize(conf, edges, right=True) - 1).clamp_(0, self.n_bins - 1)
        # index_put_ with accumulate: deterministic on every device (bincount is not on CUDA)
        self.count.index_put_((b,), torch.ones_like(b), accumulate=True)
        self.correct.index_put_((b,), correct.long(), accumulate=True)
        self.confidence_e6.index_put_((b,), (conf * 1e6).round().long(), accumulate=True)

    def compute(self) -> dict[str, list[float]]:
        """``bin_edges`` (n+1), and per bin the mean ``confidence``, the ``accuracy`` (NaN when empty), ``count``."""
        count = self.count.cpu().double()
        conf = (self.confidence_e6.cpu().double() / 1e6 / count).tolist()
        acc = (self.correct.cpu().double() / count).tolist()
        return {
            "bin_edges": torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64).tolist(),
            "confidence": conf,
            "accuracy": acc,
            "count": [int(c) for c in count.tolist()],
        }


class ConfusionMatrix(MulticlassConfusionMatrix):
    """torchmetrics' multiclass confusion matrix (its state, DDP sum and compute), counted in place:
    an update costs O(batch), where the parent's adds a K² bincount per batch (and, under
    deterministic algorithms or on MPS, builds a ``[batch, K²]`` comparison: 2 GB for 1000 classes)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: ``[N, K]`` logits or probabilities, or ``[N]`` class indices; ``target``: ``[N]``."""
        pred = preds.argmax(dim=1) if preds.ndim == target.ndim + 1 else preds
        target = target.long()
        self.confmat.index_put_((target, pred.long()), torch.ones_like(target), accumulate=True)


class AnalysisMetrics(torch.nn.Module):
    """What an evaluation adds to loss, top-1 and top-5: the confusion matrix, the expected calibration
    error (top-label, L1, ``n_bins`` equal-width bins) and the reliability bins. ``compute`` gathers
    them over ranks (a collective under DDP). No persistent state: checkpoints are unchanged."""

    def __init__(self, num_classes: int, n_bins: int = ECE_BINS) -> None:
        super().__init__()
        self.confusion = ConfusionMatrix(num_classes=num_classes, validate_args=False)
        # torchmetrics' binary calibration error on (top-1 confidence, correct) is the number
        # MulticlassCalibrationError gives, without its second pass over the [N, K] probabilities.
        self.ece = BinaryCalibrationError(n_bins=n_bins, norm="l1", validate_args=False)
        self.reliability = ReliabilityBins(n_bins)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        # Top-1 class and its softmax probability, without materialising the [N, K] probabilities.
        top, pred = logits.float().max(dim=1)
        conf = (top - torch.logsumexp(logits.float(), dim=1)).exp()
        correct = pred == target
        self.confusion.update(pred, target)
        self.ece.update(conf, correct.long())
        self.reliability.update(conf, correct)

    def compute(self) -> dict[str, Any]:
        """``confusion`` (numpy int64 ``[K, K]``, rows = true class), ``ece`` (NaN without images), ``reliability``."""
        confusion = self.confusion.compute()  # every rank's counts (a sum over ranks)
        # An evaluation without images (every one skipped as unusable) has no calibration error.
        ece = float(self.ece.compute()) if int(confusion.sum()) else float("nan")
        return {
            "confusion": confusion.cpu().numpy().astype(np.int64),
            "ece": ece,
            "reliability": self.reliability.compute(),
        }

    def reset(self) -> None:
        for m in (self.confusion, self.ece, self.reliability):
            m.reset()


class ClassifierSteps(L.LightningModule):
    """Metrics, logging, eval steps and the optimizer/schedule shared by every vit-ft classifier
    (:class:`ViTClassifier` and the linear probe on cached features).

    Each validation (and test) logs ``<stage>/loss``, ``acc1``, ``acc5``, ``acc1_macro`` (mean of the
    per-class accuracies, over the classes with images) and ``ece`` (expected calibration error, 15
    bins, L1), all gathered over ranks, and leaves :attr:`eval_analysis`: the gathered confusion
    matrix, the class names and the reliability diagram, for callbacks (read it from
    ``on_validation_end``/``on_test_end``: Lightning calls callbacks' ``on_*_epoch_end`` first)."""

    num_classes: int
    class_names: list[str] | None
    optimizer_cfg: dict[str, Any]
    scheduler_cfg: dict[str, Any]
    ema: EmaWeights | None = None  # model.ema: see vit_ft.models.ema

    def _init_metrics(self, k: int) -> None:
        self.train_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.has_top5 = k >= 5
        if self.has_top5:
            self.val_acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro")
            self.test_acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro")
        # Not logged as objects: computed (and reset) together in on_*_epoch_end.
        self.val_analysis = AnalysisMetrics(k)
        self.test_analysis = AnalysisMetrics(k)
        self.eval_analysis: dict[str, Any] | None = None
        if self.ema is not None:  # val_ema/* and test_ema/*: loss, acc1, acc5 of the EMA weights
            self.val_ema_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
            self.test_ema_acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
            if self.has_top5:
                self.val_ema_acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro")
                self.test_ema_acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro")

    def _log_train(self, loss: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None) -> None:
        """``train/loss``, ``train/lr`` every step; ``train/acc1`` when labels are hard (no mixup)."""
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
        logits = self(x)
        self._log_eval(logits, y, stage)
        getattr(self, f"{stage}_analysis").update(logits, y)
        if self.ema is not None:
            self._log_eval(self._ema_logits(x).to(logits.device), y, f"{stage}_ema")

    def _log_eval(self, logits: torch.Tensor, y: torch.Tensor, stage: str) -> None:
        """``<stage>/loss``, ``acc1`` and ``acc5`` (``stage``: val, test, val_ema or test_ema)."""
        loss = F.cross_entropy(logits.float(), y)
        acc1 = getattr(self, f"{stage}_acc1")
        acc1(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, prog_bar=True, batch_size=y.shape[0])
        self.log(f"{stage}/acc1", acc1, on_epoch=True, prog_bar=True)
        if self.has_top5:
            acc5 = getattr(self, f"{stage}_acc5")
            acc5(logits, y)
            self.log(f"{stage}/acc5", acc5, on_epoch=True)

    def _eval_epoch_end(self, stage: str) -> None:
        """Log ``acc1_macro`` and ``ece`` and set :attr:`eval_analysis`, from the metrics gathered over ranks."""
        if self.ema is not None:
            self.ema.visit(None)  # a CPU-pinned EMA goes home after the evaluation
        metrics = getattr(self, f"{stage}_analysis")
        if not self.trainer.sanity_checking:
            res = metrics.compute()
            macro = per_class_accuracy(res["confusion"])[1]
            macro = float("nan") if macro is None else macro
            # The values are already the same on every rank; sync_dist only keeps Lightning quiet.
            self.log(f"{stage}/acc1_macro", macro, sync_dist=True)
            self.log(f"{stage}/ece", res["ece"], sync_dist=True)
            names = (
                self.class_names if self.class_names and len(self.class_names) == self.num_classes else None
            )
            self.eval_analysis = {
                "split": stage,
                "class_names": unique_class_names(names or [str(i) for i in range(self.num_classes)]),
                "acc1_macro": macro,
                **res,
            }
        metrics.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    # -- EMA of the weights (model.ema): updated after each optimizer step, evaluated beside the raw ----
    def _ema_target(self) -> torch.nn.Module:
        """The module whose EMA is kept (a subclass's trained network or head)."""
        raise NotImplementedError

    def _ema_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of the EMA weights for an eval batch ``x``."""
        raise NotImplementedError

    def _ema_restore(self, ema_state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> None:
        """Load the ``model_ema.*`` entries of a checkpoint (prefix dropped) into the EMA."""
        self.ema.load_state_dict(ema_state)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # every rank, from the same synchronised weights: the EMAs stay equal
            self.ema.update(self._ema_target(), step=self.trainer.global_step + 1)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.follow(self.device)
            if self.ema.missing:  # resumed from a checkpoint without EMA weights: restart from these
                self.ema.load_state_dict(self._ema_target().state_dict())
                self.ema.missing = False

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self.ema.visit(self.device)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume_rng = checkpoint.get(RNG_KEY)  # set before the first resumed step
        ema_state = pop_ema_state(checkpoint.get("state_dict") or {})
        if self.ema is None:
            return
        if ema_state:
            self._ema_restore(ema_state, checkpoint)
        else:
            log.warning("the checkpoint holds no EMA weights; the EMA restarts from its weights")
            self.ema.missing = True

    @contextmanager
    def ema_weights_for(self, purpose: str = "eval") -> Iterator[None]:
        """Inside the block, the trained module holds the EMA weights when ``model.ema.use_for`` picks
        them for ``purpose`` (the raw weights are back after it)."""
        if self.ema is None or self.ema.missing or not ema_chosen(self.hparams.get("ema"), purpose):
            yield
            return
        target = self._ema_target()
        raw = {k: v.detach().clone() for k, v in target.state_dict().items()}
        target.load_state_dict(self.ema.state_dict())
        try:
            yield
        finally:
            target.load_state_dict(raw)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _optimizers_for(self, module: torch.nn.Module, **overrides: Any) -> dict[str, Any]:
        """timm optimizer over ``module``'s trainable parameters, warmup + decay per optimizer step."""
        opt = build_optimizer(module, **{**self.optimizer_cfg, **overrides})
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

    # -- exact resume: the random state of every rank travels in checkpoints -----------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every rank's global random generators (dropout, drop-path, mixup, random erasing draw from
        them); subclasses add their own entries and call this."""
        trainer = self._trainer
        if trainer is not None:
            checkpoint[RNG_KEY] = gather_rng_states(trainer)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Resumed from a checkpoint: set this rank's generators as they were when it was saved, just
        before the first training step (after the data loaders and the sanity check have started)."""
        states = getattr(self, "_resume_rng", None)
        if not states:
            return
        self._resume_rng = None
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(states) == world:
            set_rng_state(states[rank])
        else:
            log.warning(
                "the checkpoint holds the random state of %d rank(s), this run has %d: dropout and mixup "
                "draw other numbers than an uninterrupted run would",
                len(states),
                world,
            )


class ViTClassifier(ClassifierSteps):
    def __init__(
        self,
        backbone: str = "vit_base_patch32_384",
        weights: str | None = None,
        img_size: int | None = 384,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        freeze_backbone: bool = False,
        reset_head: bool = False,
        label_smoothing: float = 0.0,
        drop_path_rate: float = 0.0,
        timm_kwargs: dict[str, Any] | None = None,
        preprocessing_override: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        mixup: dict[str, Any] | None = None,
        random_erasing: float = 0.0,
        ema: dict[str, Any] | None = None,
        compile: bool = False,
        compile_mode: str = "default",
        arch: dict[str, Any] | None = None,
        preprocessing: dict[str, Any] | None = None,
        grad_checkpointing: bool = False,
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        lora_spec = LoraSpec.from_config(lora)  # -- LoRA (vit_ft.weights.lora)
        if lora_spec is not None and freeze_backbone:
            raise ConfigError(
                f"model.lora.rank={lora_spec.rank} with model.freeze_backbone=true: LoRA already freezes the base "
                "weights and trains adapters + head; drop one of them (model.lora.rank=null for a linear probe)"
            )
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"model.label_smoothing={label_smoothing!r} must be in [0, 1)")
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        kwargs = dict(timm_kwargs or {})
        if drop_path_rate:
            kwargs["drop_path_rate"] = float(drop_path_rate)
        # A LoRA checkpoint without its base weights rebuilds them from model.weights, as training did.
        if arch is not None and not (lora_spec is not None and weights):
            # Restoring a vit-ft checkpoint: the architecture is known, the weights follow.
            net = create_from_arch(arch)
            bb = Backbone(net, arch, Preprocessing.from_dict(preprocessing), class_names, True, None)
        else:
            bb = build_backbone(
                backbone,
                weights=weights,
                img_size=img_size,
                num_classes=num_classes,
                reset_head=reset_head,
                timm_kwargs=kwargs,
            )
            for note in bb.notes:
                log.info("weights: %s", note)
        if class_names is None:
            class_names = bb.class_names
        pre = bb.preprocessing
        if preprocessing_override:
            override = {k: v for k, v in dict(preprocessing_override).items() if v is not None}
            pre = Preprocessing.from_dict({**pre.to_dict(), **override})
        self.model = bb.model
        # None: timm's head on its own pooling; else the token feature the head sits on (a linear probe's).
        self.head_features = head_features(bb.arch)
        self.num_classes = bb.num_classes
        self.lora_spec, self.lora_info = lora_spec, None
        if lora_spec is not None:  # base weights frozen, adapters + head train
            self.model = inject_lora(self.model, lora_spec)
            base = None  # where a checkpoint rebuilds its base from (None: random init, kept in the file)
            if weights:
                base = dict(source=str(weights), backbone=backbone, img_size=img_size, reset_head=reset_head)
                base.update(num_classes=self.num_classes, timm_kwargs=kwargs)
                self.strict_loading = False  # checkpoints omit the base: on_load_checkpoint checks the rest
            self.lora_info = lora_checkpoint_info(lora_spec, base, self.model)
        if grad_checkpointing:  # activation checkpointing of the blocks (timm): recompute in backward
            self.model.set_grad_checkpointing(True)
        if self.num_classes < 1:
            raise ConfigError(
                "the model has no classification head; set num_classes or use weights with a head"
            )
        if class_names is not None and len(class_names) != self.num_classes:
            raise ConfigError(
                f"the head has {self.num_classes} outputs but {len(class_names)} class names were given; "
                "set model.reset_head=true to train a new head for this data"
            )
        self.class_names = list(class_names) if class_names is not None else None
        self.preprocessing = pre
        # What a checkpoint needs to rebuild this exact model offline:
        self.save_hyperparameters(ignore=["arch", "preprocessing", "class_names", "num_classes"])
        self.hparams["arch"] = bb.arch
        self.hparams["preprocessing"] = pre.to_dict()
        self.hparams["class_names"] = self.class_names
        self.hparams["num_classes"] = self.num_classes

        self.normalizer = Normalize(pre)  # uint8 batches -> normalised floats, on the device
        # One uint8 image: Lightning's model summary shows input/output sizes and real FLOPs (not 0).
        self.example_input_array = torch.zeros(1, 3, pre.img_size, pre.img_size, dtype=torch.uint8)

        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            for name, p in self.model.named_parameters():
                p.requires_grad = name.startswith(HEAD_PREFIXES)  # DeiT-distilled: both heads
        self.label_smoothing = float(label_smoothing)
        self.optimizer_cfg = dict(
            optimizer or {"name": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 0.0}
        )
        self.scheduler_cfg = dict(scheduler or {"warmup_steps": 500, "decay": "cosine"})
        self.mixup_fn = self._build_mixup(mixup)
        self.random_erasing = self._build_random_erasing(float(random_erasing or 0.0))
        # model.ema / model.compile (vit_ft.models.ema, vit_ft.models.compile); the EMA copies the
        # network as it is now, so this stays after every change to it.
        self.ema = build_ema(self.model, ema)
        if not isinstance(compile, bool):
            raise ConfigError(f"model.compile={compile!r} must be true or false")
        self.compile_enabled, self.compile_mode = compile, str(compile_mode)
        self.compiled: CompiledForward | None = None

        self._init_metrics(self.num_classes)

    # -- augmentation on the device ---------------------------------------------------------------
    def _build_mixup(self, cfg: dict[str, Any] | None):
        cfg = {k: v for k, v in dict(cfg or {}).items() if v is not None}
        if not (cfg.get("mixup_alpha", 0) or cfg.get("cutmix_alpha", 0)):
            return None
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=float(cfg.get("mixup_alpha", 0.0)),
            cutmix_alpha=float(cfg.get("cutmix_alpha", 0.0)),
            prob=float(cfg.get("prob", 1.0)),
            switch_prob=float(cfg.get("switch_prob", 0.5)),
            label_smoothing=self.label_smoothing,
            num_classes=self.num_classes,
        )

    def _build_random_erasing(self, prob: float):
        if prob <= 0:
            return None
        from timm.data.random_erasing import RandomErasing

        return RandomErasing(probability=prob, mode="pixel", device="cpu")

    # -- forward ----------------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def net(self, x: torch.Tensor) -> torch.Tensor:
        """The network on normalised images: compiled when ``model.compile`` (and it compiled)."""
        if self.compiled is None:
            return network_logits(self.model, x, self.head_features)
        return self.compiled(x)

    def setup(self, stage: str) -> None:
        # model.compile applies to training runs (their validations included), not to eval.py/predict.
        if stage == "fit" and self.compile_enabled and self.compiled is None:
            if self.head_features is not None:  # a head on token features: timm's forward is not the network
                log.warning(
                    "model.compile: not compiled (the head sits on %s features); eager", self.head_features
                )
                self.compile_enabled = False
                return
            self.compiled = CompiledForward(self.model, mode=self.compile_mode)

    def _ema_target(self) -> torch.nn.Module:
        return self.model

    def _ema_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.ema.logits(self.normalize(x), lambda m, z: network_logits(m, z, self.head_features))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the linear head (the final-norm CLS token for a ViT)."""
        return pre_logits(self.model, self.normalize(x), self.head_features)

    def train(self, mode: bool = True) -> ViTClassifier:
        super().train(mode)
        if self.freeze_backbone:
            # A linear probe: the frozen backbone stays in eval mode (no dropout or drop-path).
            self.model.eval()
            for head in head_modules(self.model):
                head.train(mode)
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning keeps whatever mode modules are in; make sure a frozen backbone is in eval.
        self.train(True)

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of this batch was skipped as unusable
            return None
        x, y = batch
        x = self.normalize(x)
        if self.compiled is not None:
            self.compiled.probe(x)  # compile forward and backward once, or fall back to eager
        if self.random_erasing is not None:
            self.random_erasing.device = x.device
            x = self.random_erasing(x)
        if self.mixup_fn is not None and x.shape[0] % 2 == 0:
            x, y_soft = self.mixup_fn(x, y)
            logits = self.net(x)
            loss = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            self._log_train(loss, y, None)
        else:
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
            self._log_train(loss, y, logits)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).float().softmax(-1)

    # -- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        return self._optimizers_for(self.model)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[RECORD] = build_record(self.trainer.estimated_stepping_batches, lora=self.lora_info)
        if self.lora_info is not None:  # adapters + head (+ the base only when weights cannot rebuild it)
            if self.lora_info["base_omitted"]:
                drop_base(checkpoint["state_dict"])
        if self.ema is not None:
            ema_sd = self.ema.state_dict()
            if self.lora_info is not None and self.lora_info["base_omitted"]:
                drop_base(ema_sd, prefix="")  # the frozen base is the same in the EMA: rebuilt at load
            checkpoint["state_dict"].update({EMA_PREFIX + k: v for k, v in ema_sd.items()})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = feature_record(checkpoint, LORA_RECORD)
        if info and info.get("base_omitted"):  # the base was rebuilt from model.weights in __init__
            fill_base(checkpoint["state_dict"], self.model, info, self.lora_info, "the checkpoint")
        super().on_load_checkpoint(checkpoint)  # the EMA (over the filled base), the random states

    def _ema_restore(self, ema_state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> None:
        # A linear probe's checkpoint holds the EMA of the head only: the rest is the (frozen) network.
        sd = checkpoint["state_dict"]
        full = strip_prefix(sd, MODEL_PREFIX)
        self.ema.load_state_dict({**full, **ema_state})

    def use_ema_weights(self) -> bool:
        """Copy the EMA into the network for good (eval.py with ``model.ema.use_for=eval``); whether it did."""
        if self.ema is None or self.ema.missing:
            return False
        self.model.load_state_dict(self.ema.state_dict())
        self.ema = None
        return True


def load_classifier(path: str, map_location: str | torch.device = "cpu") -> ViTClassifier:
    """Load a vit-ft ``.ckpt`` (tensors and plain types only; no code runs from the file)."""
    import os

    if os.path.isdir(path):  # trainer=fsdp with state_dict_type=sharded writes folders
        raise ConfigError(
            f"ckpt_path={path!r} is a folder (a sharded FSDP checkpoint); make it one file first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path={path!r} does not exist; pass the path of a vit-ft .ckpt file")
    try:
        model = ViTClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
        if ema_chosen(model.hparams.get("ema"), "eval") and model.use_ema_weights():
            log.info("weights: the checkpoint's EMA weights (model.ema.use_for=eval)")
        return model
    except ConfigError:
        raise
    except Exception as e:  # truncated or foreign file
        raise ConfigError(
            f"ckpt_path={path!r} is not a readable vit-ft checkpoint ({type(e).__name__}: {e})"
        ) from None
