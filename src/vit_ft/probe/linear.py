"""Linear probes on frozen features, computed once and cached.

Each split is passed through the frozen network once, with the eval transform
(:func:`vit_ft.probe.extract.split_features`), and the head then trains on the stored features for
as many epochs as asked. The probe module (:class:`LinearProbe`) keeps the network under the same
attribute as :class:`~vit_ft.models.classifier.ViTClassifier`, logs the same metrics, and writes
checkpoints that load as a ``ViTClassifier`` (an optional BatchNorm in front of the head is folded
into it), so ``eval.py ckpt_path=...`` works on a probe's checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vit_ft.checkpoint_format import (
    HEAD_PREFIX,
    MODEL_PREFIX,
    PROBE_RECORD,
    RECORD,
    build_record,
    feature_record,
    strip_prefix,
)
from vit_ft.data.datamodule import ImageDataModule
from vit_ft.data.loader_policy import LoaderPolicy, eval_share_sampler
from vit_ft.data.resumable import ResumableOrder
from vit_ft.errors import ConfigError
from vit_ft.models.ema import build_ema
from vit_ft.models.features import linear_head, token_features
from vit_ft.models.steps import ClassifierSteps
from vit_ft.preprocessing import Normalize
from vit_ft.probe.extract import split_features, use_feature_type
from vit_ft.probe.features import SplitFeatures
from vit_ft.probe.settings import LinearProbeSettings

HEAD_KEYS = (
    f"{MODEL_PREFIX}{HEAD_PREFIX}weight",
    f"{MODEL_PREFIX}{HEAD_PREFIX}bias",
)  # the probe's head in the state_dict
log = logging.getLogger("vit_ft")


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``head(BN(x))`` with a non-affine BN in eval mode, as one linear layer."""
    inv = torch.rsqrt(var.float() + eps)
    w = weight.float() * inv[None, :]
    b = bias.float() - w @ mean.float()
    return w.to(weight.dtype), b.to(bias.dtype)


class LinearProbe(ClassifierSteps):
    """A linear head (optionally after a non-affine BatchNorm) on the frozen network's features.

    ``in_loop=False``: batches are ``(features, labels)`` from the cache. ``in_loop=True``: batches are
    uint8 images and the frozen network runs on them each step (no gradients through it).
    Checkpoints hold the whole network with the trained head and load as a ``ViTClassifier``.
    ``features``: the ``probe.features`` the head sits on (set up by
    :func:`~vit_ft.probe.extract.use_feature_type`; the in-loop features are computed as the cached ones).
    """

    def __init__(
        self, classifier: Any, batchnorm: bool = False, in_loop: bool = False, features: str = "pool"
    ) -> None:
        super().__init__()
        self.model = classifier.model  # same state_dict keys as ViTClassifier
        self.feature_type = features
        # A head on token features (arch["features"]) is net.head; else timm's own classifier.
        self.on_token_features = bool(getattr(classifier, "head_features", None))
        self.normalizer = Normalize(classifier.preprocessing)
        self.preprocessing = classifier.preprocessing
        self.class_names = classifier.class_names
        self.num_classes = int(classifier.num_classes)
        self.in_loop = bool(in_loop)
        self.label_smoothing = float(classifier.label_smoothing)
        self.loss = classifier.loss  # models/losses.py: label smoothing and model.class_weights
        self.optimizer_cfg = dict(classifier.optimizer_cfg)
        self.scheduler_cfg = dict(classifier.scheduler_cfg)
        if not isinstance(self.head, nn.Linear) or not self.head.weight.numel():
            raise ConfigError(
                "the probe has nothing to train: the model has no linear head; give the data's classes a head "
                "(model.reset_head=true)"
            )
        dim = int(self.head.in_features)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else None
        size = int(self.preprocessing.img_size)
        # What a batch holds (images in the loop, else cached features): real sizes and FLOPs in the summary.
        self.example_input_array = (
            torch.zeros(1, 3, size, size, dtype=torch.uint8) if self.in_loop else torch.zeros(1, dim)
        )
        for p in self.model.parameters():
            p.requires_grad = False
        for p in self.head.parameters():
            p.requires_grad = True
        hp = dict(classifier.hparams)
        hp["freeze_backbone"] = True
        self._classifier_hparams = hp
        self.save_hyperparameters(hp, logger=False)
        self.ema = build_ema(self.head, hp.get("ema"))  # model.ema: the EMA of the head
        self.ml_loss = getattr(classifier, "ml_loss", None)  # multi-label: the classifier's BCE/ASL
        self._init_steps(self.num_classes, getattr(classifier, "task", "single"))

    @property
    def head(self) -> nn.Module:
        return linear_head(self.model) if self.on_token_features else self.model.get_classifier()

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.model.eval()  # frozen: no dropout, no drop-path, ever
        self.head.train(mode)
        return self

    def on_train_epoch_start(self) -> None:
        self.train(True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(x)
        with torch.no_grad():
            return token_features(self.model, x, self.feature_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from features (``in_loop=False``) or images (``in_loop=True``)."""
        f = self.features(x) if self.in_loop else x
        if self.bn is not None:
            f = self.bn(f)
        return self.head(f)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:
            return None
        x, y = batch
        logits = self(x)
        if self.ml_loss is not None:  # multi-label: multi-hot targets
            loss = self.ml_loss(logits, y)
            self._log_train(loss, y, None)
            return loss
        loss = self.loss(logits, y)
        self._log_train(loss, y, logits)
        return loss

    def _ema_target(self) -> nn.Module:
        return self.head

    def _ema_logits(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x) if self.in_loop else x
        return self.ema.logits(self.bn(f) if self.bn is not None else f)

    def _ema_state(self, ema_state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> dict[str, Any]:
        raw = feature_record(checkpoint, PROBE_RECORD).get("raw_ema")
        if raw and self.bn is not None:  # the head before the BatchNorm was folded into it
            return raw
        return strip_prefix(ema_state, HEAD_PREFIX)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_cfg.get("layer_decay"):
            log.info("probe: optimizer.layer_decay does not apply to a linear head; ignored")
        return self._optimizers_for(self.head, layer_decay=None)

    # -- checkpoints: a ViTClassifier's, plus what resuming the probe needs ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        sd = checkpoint["state_dict"]
        probe_state = {"in_loop": self.in_loop, "batchnorm": self.bn is not None}
        if self.bn is not None:
            raw = {k: v for k, v in sd.items() if k.startswith("bn.")}
            for k in HEAD_KEYS:
                raw[k] = sd[k]
            probe_state["raw"] = raw
            w, b = fold_batchnorm(
                self.head.weight.detach(),
                self.head.bias.detach(),
                self.bn.running_mean,
                self.bn.running_var,
                self.bn.eps,
            )
            for k in list(sd):
                if k.startswith("bn."):
                    del sd[k]
            sd[HEAD_KEYS[0]], sd[HEAD_KEYS[1]] = w.cpu(), b.cpu()
        if self.ema is not None:  # the EMA of the head as model_ema.head.* (BatchNorm folded in)
            ema = {k: v.detach() for k, v in self.ema.state_dict().items()}
            if self.bn is not None:
                probe_state["raw_ema"] = ema
                w, b = fold_batchnorm(
                    ema["weight"], ema["bias"], self.bn.running_mean, self.bn.running_var, self.bn.eps
                )
                ema = {"weight": w, "bias": b}
            self.ema.save_entries(sd, weights={k: v.cpu() for k, v in ema.items()}, under=HEAD_PREFIX)
        checkpoint["hyper_parameters"] = dict(self._classifier_hparams)
        checkpoint[RECORD] = build_record(
            self.trainer.estimated_stepping_batches, probe=probe_state, multilabel=self.multilabel_record()
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # the EMA's entries
        probe = feature_record(checkpoint, PROBE_RECORD)
        raw = probe.get("raw")
        if raw and self.bn is not None:
            checkpoint["state_dict"].update(raw)
        elif self.bn is not None:
            # A checkpoint without the unfolded head: start the BN as identity on the folded head.
            sd = checkpoint["state_dict"]
            for k, v in self.bn.state_dict().items():
                sd.setdefault(f"bn.{k}", v)


class FeatureDataModule(ResumableOrder, L.LightningDataModule):
    """Loaders over cached features, with the image DataModule's batch size, classes, splits and training
    order (the same permutation per epoch, which travels in checkpoints)."""

    def __init__(self, base: ImageDataModule, features: dict[str, SplitFeatures]) -> None:
        super().__init__()
        self.base = base
        self.seed = base.seed
        self.sampler, self.samples_per_epoch = base.sampler, base.samples_per_epoch  # data.sampler
        self.features = features
        self.class_names = base.class_names
        self.splits = {k: v for k, v in base.splits.items() if k in features}
        self.bad_image_report = base.bad_image_report

    def labels(self, split: str) -> torch.Tensor:
        """The cached split's targets: its labels, or multi-hot from the records for a multi-label task
        (read from the data, not the cache: the cache's key holds each row's first label only)."""
        f = self.features[split]
        if getattr(self.base, "task", "single") != "multilabel":
            return f.labels
        hot = self.base.splits[split].multi_hot_all()
        return torch.from_numpy(hot[f.indices.numpy()]).float()

    def _loader(self, split: str, train: bool) -> DataLoader:
        f, bs = self.features[split], self.base.batch_for(train)
        ds = TensorDataset(f.features, self.labels(split))
        if not train:  # in memory: no workers; unpadded shares under DDP
            return LoaderPolicy().loader(ds, bs, sampler=eval_share_sampler(ds))
        sampler = self.epoch_sampler(ds, bs, with_seeds=False, labels=f.labels)
        return LoaderPolicy().loader(ds, bs, train=True, sampler=sampler, epoch_size=self.epoch_size(ds))

    def indexed_loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """``(record index, features, label)`` batches of ``split`` (the image DataModule's method, on
        the cached features: a probe's predictions need no pass over the images)."""
        f = self.features[split]
        ds = TensorDataset(f.indices, f.features, self.labels(split))
        return LoaderPolicy().loader(ds, self.base.batch_for(False, batch_size), once=True)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.features else "val", False)


def prepare_linear_probe(
    settings: LinearProbeSettings,
    classifier: Any,
    datamodule: ImageDataModule,
    trainer: L.Trainer | None,
    *,
    ckpt_path: str | None = None,
    with_test: bool = False,
) -> tuple[LinearProbe, L.LightningDataModule]:
    """The probe's module and data, from the classifier and image data built for the run.

    ``ckpt_path``: the checkpoint the run resumes from (only logged: the Trainer restores the head);
    ``with_test``: extract the test split's features too (the run tests after fitting).
    """
    if getattr(classifier, "lora_spec", None) is not None:
        raise ConfigError(
            f"model.lora.rank={classifier.lora_spec.rank} with a linear probe: the probe trains the head only; "
            "set model.lora.rank=null (or probe a LoRA run's checkpoint with model.weights=<its .ckpt>)"
        )
    use_feature_type(classifier, settings.features)
    probe = LinearProbe(
        classifier, batchnorm=settings.batchnorm, in_loop=not settings.cache, features=settings.features
    )
    if not settings.cache:
        if not settings.augment:
            datamodule.train_with_eval_transform()
        log.info("probe: backbone in the loop (probe.cache=false), augmentation %s", settings.augment)
        return probe, datamodule
    if ckpt_path:
        log.info("probe: resuming the head from %s", ckpt_path)
    splits = [s for s in ("train", "val", "test") if s in datamodule.splits]
    if "test" in splits and not with_test:
        splits.remove("test")
    feats, _ = split_features(classifier, datamodule, splits, settings, trainer)
    if len(feats["train"]) == 0:
        raise ConfigError(
            "the probe has nothing to train: the train split has no usable image; check data.root "
            "and the bad-image report"
        )
    return probe, FeatureDataModule(datamodule, feats)
