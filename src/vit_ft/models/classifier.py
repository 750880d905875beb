"""The LightningModule: a timm ViT, a linear head on the CLS token, the paper's training step.

Batches arrive as uint8 images and are normalised here, on the device, in one fused op. Checkpoints
carry ``arch`` (rebuilds the network offline), ``preprocessing`` and ``class_names``, so a ``.ckpt``
is self-describing: ``ViTClassifier.load_from_checkpoint(path)`` needs no network and no data
(:func:`~vit_ft.models.load_checkpoint.load_classifier` is that load, checked: what eval.py runs).
The module holds the steps and the optimizer (the eval steps shared with the linear probe in
:mod:`~vit_ft.models.steps`); each other concern has its home and is only called: the network
(:mod:`~vit_ft.models.backbone`), the metrics (:mod:`~vit_ft.models.metrics`), augmentation
(:mod:`~vit_ft.models.augment`), the EMA (:mod:`~vit_ft.models.ema`), LoRA's checkpoint entries
(:mod:`vit_ft.weights.lora`) and the random state of a resume (:mod:`vit_ft.training.rng`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from vit_ft.checkpoint_format import MODEL_PREFIX, RECORD, build_record, strip_prefix
from vit_ft.errors import ConfigError
from vit_ft.models.augment import DeviceAugment
from vit_ft.models.backbone import build_network
from vit_ft.models.compile import CompiledForward
from vit_ft.models.ema import build_ema
from vit_ft.models.features import network_logits, pre_logits
from vit_ft.models.losses import build_loss
from vit_ft.models.multilabel_loss import MultiLabelLoss, settle_task
from vit_ft.models.steps import ClassifierSteps
from vit_ft.preprocessing import Normalize
from vit_ft.weights.assemble import head_modules
from vit_ft.weights.lora import restore_lora_entries, save_lora_entries

log = logging.getLogger(__name__)


class ViTClassifier(ClassifierSteps):
    """A timm ViT (:func:`~vit_ft.models.backbone.build_network` builds it from the ``model.*`` settings,
    which are also the hyper-parameters a checkpoint rebuilds it from) and the paper's training step."""

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
        class_weights: list[float] | str | None = None,
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
        task: str = "single",
        loss: str = "default",
        asl: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        task = settle_task(task, loss)  # auto (no data decided it): single
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"model.label_smoothing={label_smoothing!r} must be in [0, 1)")
        if not isinstance(compile, bool):
            raise ConfigError(f"model.compile={compile!r} must be true or false")
        net = build_network(
            backbone,
            weights,
            img_size,
            num_classes,
            class_names,
            freeze_backbone=freeze_backbone,
            reset_head=reset_head,
            drop_path_rate=drop_path_rate,
            timm_kwargs=timm_kwargs,
            preprocessing_override=preprocessing_override,
            arch=arch,
            preprocessing=preprocessing,
            grad_checkpointing=grad_checkpointing,
            lora=lora,
        )
        self.model, self.head_features, self.num_classes = net.model, net.head_features, net.num_classes
        self.class_names, self.preprocessing = net.class_names, net.preprocessing
        self.lora_spec, self.lora_info = net.lora_spec, net.lora_info
        if self.lora_info is not None and self.lora_info["base_omitted"]:
            self.strict_loading = False  # checkpoints omit the base: on_load_checkpoint checks the rest
        # What a checkpoint needs to rebuild this exact model offline:
        self.save_hyperparameters(ignore=["arch", "preprocessing", "class_names", "num_classes"])
        self.hparams["arch"] = net.arch
        self.hparams["preprocessing"] = net.preprocessing.to_dict()
        self.hparams["class_names"] = self.class_names
        self.hparams["num_classes"] = self.num_classes

        self.normalizer = Normalize(net.preprocessing)  # uint8 batches -> normalised floats, on the device
        # One uint8 image: Lightning's model summary shows input/output sizes and real FLOPs (not 0).
        size = net.preprocessing.img_size
        self.example_input_array = torch.zeros(1, 3, size, size, dtype=torch.uint8)
        self.freeze_backbone = bool(freeze_backbone)
        self.label_smoothing = float(label_smoothing)
        # optimizer.* and scheduler.* come from the config (conf/optimizer, conf/scheduler): no recipe here.
        self.optimizer_cfg, self.scheduler_cfg = dict(optimizer or {}), dict(scheduler or {})
        ml = task == "multilabel"
        self.augment = DeviceAugment(
            mixup, random_erasing, self.label_smoothing, self.num_classes, multi_label=ml
        )
        # the loss: softmax cross-entropy (models/losses.py), or sigmoid + BCE/ASL on multi-hot targets
        self.ml_loss = MultiLabelLoss(loss, self.label_smoothing, asl) if ml else None
        self.loss = build_loss(self.num_classes, self.label_smoothing, class_weights)
        # The EMA copies the network as it is now, so this stays after every change to it.
        self.ema = build_ema(self.model, ema)
        self.compile_enabled, self.compile_mode = compile, str(compile_mode)
        self.compiled: CompiledForward | None = None
        self._init_steps(self.num_classes, task)

    @property
    def mixup_fn(self) -> Any:
        """timm's Mixup when ``model.mixup`` asks for one, else None."""
        return self.augment.mixup

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
        x, soft = self.augment(x, y)  # random erasing, then mixup/cutmix (soft targets)
        logits = self.net(x)
        if self.ml_loss is not None:  # multi-label: no train/acc1
            loss = self.ml_loss(logits, y if soft is None else soft, smoothed=soft is not None)
        else:
            loss = self.loss(logits, y, soft)
        self._log_train(loss, y, logits if soft is None and self.ml_loss is None else None)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self(x).float()
        return logits.sigmoid() if self.multilabel else logits.softmax(-1)

    def configure_optimizers(self) -> dict[str, Any]:
        return self._optimizers_for(self.model)

    # -- checkpoints: the record, LoRA's and the EMA's entries (each built by its owner) -------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[RECORD] = build_record(
            self.trainer.estimated_stepping_batches, lora=self.lora_info, multilabel=self.multilabel_record()
        )
        save_lora_entries(checkpoint["state_dict"], self.lora_info)
        if self.ema is not None:
            self.ema.save_entries(checkpoint["state_dict"], lora=self.lora_info)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_lora_entries(checkpoint, self.model, self.lora_info)  # the base rebuilt in __init__
        super().on_load_checkpoint(checkpoint)  # the EMA (over the filled base), the random states

    def _ema_state(self, ema_state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> dict[str, Any]:
        # A linear probe's checkpoint holds the EMA of the head only: the rest is the (frozen) network.
        return {**strip_prefix(checkpoint["state_dict"], MODEL_PREFIX), **ema_state}

    def use_ema_weights(self) -> bool:
        """Copy the EMA into the network for good (eval.py with ``model.ema.use_for=eval``); whether it did."""
        if self.ema is None or self.ema.missing:
            return False
        self.model.load_state_dict(self.ema.state_dict())
        self.ema = None
        return True
