"""One pass of the frozen network over the splits whose features are not cached yet.

Under DDP each rank extracts its share of every split; the shares are gathered with their sample
indices and the duplicates a distributed sampler may pad in are dropped, so every rank holds each
image once, in record order.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import nullcontext
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset

from vit_ft.errors import ConfigError
from vit_ft.models.features import (
    check_feature_type,
    drop_head_features,
    feature_dim,
    token_features,
    use_head_features,
)
from vit_ft.models.predictions import gather_by_index
from vit_ft.preprocessing import Normalize
from vit_ft.probe.features import (
    BadCacheError,
    SplitFeatures,
    cache_lock,
    cache_path,
    feature_key,
    load_features,
    preprocessing_fingerprint,
    recall,
    records_fingerprint,
    remember,
    save_features,
    weights_fingerprint,
)
from vit_ft.probe.settings import FeatureSettings
from vit_ft.progress import Progress

log = logging.getLogger("vit_ft")
# the feature functions live in vit_ft.models.features (a probe's checkpoint computes them too)
__all__ = [
    "check_feature_type",
    "feature_dim",
    "frozen_features",
    "split_features",
    "token_features",
    "use_feature_type",
]


# -- features of a network (computed by vit_ft.models.features) ----------------------------------------
def _timm_pools(net: nn.Module) -> bool:
    """Whether timm's own pooling can be switched to the CLS token / the patch mean with the head's
    input being exactly that token (no distillation token, no fc_norm after the pooling)."""
    return (
        getattr(net, "dist_token", None) is None
        and hasattr(net, "global_pool")
        and isinstance(getattr(net, "fc_norm", None), nn.Identity)
    )


def use_feature_type(classifier: Any, features: str, *, head: bool = True) -> None:
    """Check ``probe.features`` against the network and, for a linear probe's sake, make its head's
    input the same features, so that its checkpoint predicts what the probe computed.

    ``cls`` / ``mean`` on a ViT whose head sits on one pooled token switch timm's pooling to the CLS
    token / the average of the final-norm patch tokens (attention pooling removed) and record it in the
    architecture stored with checkpoints (``global_pool``, ``fc_norm=False``: same parameters; such a
    probe exports as a plain model); ``pool`` keeps the model's own pooling. Every other feature (``cls+mean``,
    ``last4``, and ``cls`` / ``mean`` behind a distillation token or an fc_norm) gets a head of its
    width on :func:`token_features` (:func:`vit_ft.models.features.use_head_features`, recorded as
    ``arch["features"]``). ``head=False`` (k-NN, few-shot: no head is trained): only the check and
    timm's pooling switch (the features come from :func:`token_features` either way).
    """
    net = classifier.model
    check_feature_type(net, features)
    if head:  # weights of an earlier probe on token features: this probe decides afresh
        drop_head_features(classifier)
    if features in ("cls", "mean") and _timm_pools(net):
        _use_timm_pooling(classifier, features)
        return
    if not head:
        return
    if features == "pool":
        if getattr(net, "dist_token", None) is not None:
            raise ConfigError(
                "probe.features=pool: this distilled DeiT has two heads (class and distillation token); "
                "probe it with probe.features=cls, cls+mean or last4"
            )
        return
    use_head_features(classifier, features)


def _use_timm_pooling(classifier: Any, features: str) -> None:
    net = classifier.model
    pool = "token" if features == "cls" else "avg"
    if getattr(net, "global_pool", None) == pool and getattr(net, "attn_pool", None) is None:
        return
    net.global_pool = pool
    if getattr(net, "attn_pool", None) is not None:
        net.attn_pool = None  # timm builds none for global_pool != 'map': same parameters as the arch below
    arch = classifier.hparams.get("arch")
    if isinstance(arch, dict):
        arch.setdefault("kwargs", {}).update(global_pool=pool, fc_norm=False)


def frozen_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pre-logits features of normalised images ``x`` (what the head sees)."""
    return net.forward_head(net.forward_features(x), pre_logits=True)


# -- extraction ----------------------------------------------------------------------------------------
class FeatureExtractor(L.LightningModule):
    """Runs the frozen network over the splits given to ``trainer.predict``; gathers over ranks."""

    def __init__(self, classifier: Any, features: str = "pool") -> None:
        super().__init__()
        self.model = classifier.model
        self.features = features
        self.normalizer = Normalize(classifier.preprocessing)
        self.n_loaders = 1
        self.progress = Progress(None, "features", enabled=False)  # set per pass in on_predict_start
        self.parts: dict[int, list] = {}  # loader -> [(indices, features, labels)] of this rank
        self.result: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def on_predict_start(self) -> None:
        self.model.eval()
        self.parts = {}
        # Lightning's bar shows on a terminal; in a log (a batch job) a line every 10 s says how far it is.
        trainer = self.trainer
        bar_visible = trainer.progress_bar_callback is not None and sys.stdout.isatty()
        loaders = trainer.predict_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        images = sum(len(dl.dataset) for dl in loaders if hasattr(dl.dataset, "__len__"))
        self.progress = Progress(
            -(-images // max(1, trainer.world_size)),
            "features: extracting",
            unit="img",
            bar=False,
            enabled=trainer.is_global_zero and not bar_visible,
        )

    def on_predict_end(self) -> None:
        self.progress.close()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch is None:
            return None
        idx, x, y = batch
        self.progress.update(int(x.shape[0]))
        x = self.normalizer(x)
        with torch.no_grad():
            f = token_features(self.model, x, self.features).float()
        self.parts.setdefault(dataloader_idx, []).append((idx.long(), f, y.long()))
        return None

    def on_predict_epoch_end(self) -> None:
        self.merge(int(self.trainer.world_size))

    def merge(self, world: int) -> None:
        """``parts`` of every rank into ``result``: one row per record, sorted by record index."""
        dim = feature_dim(self.model, self.features)
        for dl_idx in range(self.n_loaders):
            parts = self.parts.get(dl_idx, [])
            dev = self.device
            if parts:
                idx = torch.cat([p[0] for p in parts]).to(dev)
                f = torch.cat([p[1] for p in parts]).to(dev)
                y = torch.cat([p[2] for p in parts]).to(dev)
            else:
                idx = torch.zeros(0, dtype=torch.long, device=dev)
                f = torch.zeros(0, dim, device=dev)
                y = torch.zeros(0, dtype=torch.long, device=dev)
            idx, f, y = gather_by_index(self.all_gather, world, idx, f, y)
            self.result[dl_idx] = (f.contiguous(), y, idx)
        self.parts = {}


def _extract_trainer(trainer: L.Trainer | None) -> L.Trainer:
    if trainer is not None:
        return trainer
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision="32-true",
    )


def _precision_of(trainer: L.Trainer) -> str:
    return str(getattr(trainer.precision_plugin, "precision", None) or trainer.precision)


def split_features(
    classifier: Any,
    datamodule: Any,
    splits: list[str],
    settings: FeatureSettings,
    trainer: L.Trainer | None = None,
) -> tuple[dict[str, SplitFeatures], dict[str, dict]]:
    """Features of ``splits`` from memory, the disk cache, or one extraction pass; plus a report.

    Must be called on every rank (the extraction is collective); every rank gets every feature.
    """
    trainer = _extract_trainer(trainer)
    datamodule.setup()
    transform = datamodule.transform(False)
    pre = preprocessing_fingerprint(classifier, transform, settings.features, _precision_of(trainer))
    t0 = time.perf_counter()
    w_fp = weights_fingerprint(classifier)
    distributed = int(trainer.world_size) > 1
    out: dict[str, SplitFeatures] = {}
    report: dict[str, dict] = {}
    missing: list[tuple[str, str]] = []

    def from_disk(split: str, key: str, labels: np.ndarray, path: str | None) -> bool:
        """Read ``split``'s features from the disk cache into ``out`` (False when absent or bad)."""
        if not path or not os.path.exists(path):
            return False
        try:
            hit = load_features(path, key, labels)
        except BadCacheError as e:
            if settings.on_bad_cache == "error":
                raise ConfigError(
                    f"{e}; delete it (it is rebuilt on the next run) or set probe.on_bad_cache=rebuild"
                ) from None
            log.warning("%s; rebuilding it", e)
            return False
        out[split] = hit
        report[split] = {"images": len(hit), "source": "disk", "key": key, "path": path}
        remember(key, hit)
        return True

    for split in splits:
        records = datamodule.splits[split]
        if isinstance(records, IterableDataset) or not hasattr(records, "__len__"):
            raise ConfigError(
                f"the {split} split is streamed; cached features need a map-style dataset (data.streaming=false)"
            )
        key = feature_key(w_fp, records_fingerprint(records), pre)
        labels = np.asarray(records.labels, dtype=np.int64)
        path = cache_path(settings.cache_dir, key) if settings.cache_dir else None
        hit = recall(key) if not distributed else None
        if hit is not None:
            out[split] = hit
            report[split] = {"images": len(hit), "source": "memory", "key": key, "path": path}
            remember(key, hit)
        elif not from_disk(split, key, labels, path):
            missing.append((split, key))
    log.info("features: fingerprinted weights and data in %.1fs", time.perf_counter() - t0)

    def extract_missing(missing: list[tuple[str, str]]) -> None:
        """One pass over the splits ``missing``; their features into ``out`` and the disk cache."""
        t1 = time.perf_counter()
        bs = datamodule.batch_for(False, settings.extract_batch_size)
        loaders = [datamodule.indexed_loader(split, batch_size=bs) for split, _ in missing]
        extractor = FeatureExtractor(classifier, settings.features)
        extractor.n_loaders = len(loaders)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*predict returned None.*")
            trainer.predict(extractor, dataloaders=loaders, return_predictions=False)
        seconds = time.perf_counter() - t1
        for i, (split, key) in enumerate(missing):
            f, y, idx = extractor.result[i]
            n = len(datamodule.splits[split])
            feats = SplitFeatures(f, y, idx, n)
            path = cache_path(settings.cache_dir, key) if settings.cache_dir else None
            if path and trainer.is_global_zero:
                meta = {"split": split, "weights": w_fp, "preprocessing": pre, "images": len(feats)}
                save_features(path, key, split, feats, meta)
            out[split] = feats
            remember(key, feats)
            report[split] = {"images": len(feats), "source": "extracted", "key": key, "path": path}
            report[split]["seconds"] = round(seconds, 3)
        if trainer.is_global_zero:
            log.info(
                "features: extracted %s in %.1fs%s",
                ", ".join(f"{s} ({len(out[s])} images)" for s, _ in missing),
                seconds,
                f"; cached in {settings.cache_dir}" if settings.cache_dir else " (kept in memory only)",
            )
        if distributed:
            trainer.strategy.barrier("vit_ft_features_written")

    # One job builds a cache file at a time: a second one waits for the lock, then reads the file the
    # first wrote (DDP ranks extract together and rank 0 writes: no lock there).
    locking = bool(missing and settings.cache_dir and not distributed)
    with cache_lock(settings.cache_dir, [k for _, k in missing]) if locking else nullcontext():
        if locking:
            missing = [
                (split, key)
                for split, key in missing
                if not from_disk(
                    split,
                    key,
                    np.asarray(datamodule.splits[split].labels, dtype=np.int64),
                    cache_path(settings.cache_dir, key),
                )
            ]
        if missing:
            extract_missing(missing)
    for split, r in report.items():
        if r["source"] != "extracted" and trainer.is_global_zero:
            log.info(
                "features: %s (%d images) from the %s cache %s", split, r["images"], r["source"], r["key"]
            )
    return out, report
