"""Linear probes on frozen features, computed once and cached.

A probe never changes the backbone, so its features never change either: each split is passed
through the frozen network once, with the eval transform, and the head then trains on the stored
features for as many epochs as asked. The cache is keyed by a fingerprint of

* the weights — a hash of the backbone's state dict (head excluded) and its architecture,
* the data — per split: the file list, labels and each file's size and modification time,
* the preprocessing — image size, interpolation, normalisation, eval transform, feature type and
  numeric precision,

so any change of these gives a new key and new features; a cache file is only ever used when its
key matches and its contents check out (labels agree with the data), never silently otherwise.

Features live in memory (reused across the jobs of a Hydra sweep run in one process) and on disk
under ``probe.cache_dir`` as ``<key>.pt`` (written to ``.tmp`` and renamed). Under DDP each rank
extracts its share of every split; the shares are gathered with their sample indices and the
duplicates a distributed sampler may pad in are dropped, so every rank holds each image once.

The probe module (:class:`LinearProbe`) keeps the network under the same attribute as
:class:`~vit_ft.models.classifier.ViTClassifier`, logs the same metrics, and writes checkpoints
that load as a ``ViTClassifier`` (an optional BatchNorm in front of the head is folded into it), so
``eval.py ckpt_path=...`` works on a probe's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ClassifierSteps
from vit_ft.preprocessing import Normalize

log = logging.getLogger("vit_ft")

CACHE_FORMAT = 1
FEATURE_TYPES = ("cls", "mean")
FEWSHOT_KEYS = ("shots", "seeds", "l2_reg", "eval_split")
_MEMORY: OrderedDict[str, SplitFeatures] = OrderedDict()  # key -> features, most recent last
_MEMORY_ENTRIES = 6


# -- settings ----------------------------------------------------------------------------------------
@dataclass
class ProbeSettings:
    """The ``probe`` config node (see conf/experiment/linear_probe.yaml and fewshot.yaml)."""

    mode: str = "linear"  # linear | fewshot
    features: str = "cls"  # cls: final-norm CLS token; mean: mean of final-norm patch tokens
    batchnorm: bool = False  # BatchNorm1d without affine in front of the head (MAE recipe)
    cache: bool = True  # false: backbone in the loop (linear mode only)
    augment: bool = True  # cache=false only: train on the data's training augmentation
    cache_dir: str | None = None  # null: in memory only
    on_bad_cache: str = "error"  # error | rebuild
    extract_batch_size: int | None = None  # null: data.eval_batch_size or the per-device batch
    extra: dict[str, Any] = field(default_factory=dict)  # the mode's own keys (few-shot: shots, ...)

    @classmethod
    def from_config(cls, node: Any) -> ProbeSettings:
        d = dict(node or {})
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        s = cls(**{k: v for k, v in d.items() if k in known})
        s.extra = {k: v for k, v in d.items() if k not in known}
        if s.mode not in ("linear", "fewshot"):
            raise ConfigError(f"probe.mode={s.mode!r} must be linear or fewshot")
        allowed = FEWSHOT_KEYS if s.mode == "fewshot" else ()
        unknown = sorted(k for k in s.extra if k not in allowed)
        if unknown:
            raise ConfigError(
                f"probe.{unknown[0]} is not a setting of probe.mode={s.mode} "
                f"(known: {sorted(known | set(allowed))})"
            )
        if s.features not in FEATURE_TYPES:
            raise ConfigError(
                f"probe.features={s.features!r} must be cls (final-norm CLS token) or mean (mean of patch tokens)"
            )
        if s.on_bad_cache not in ("error", "rebuild"):
            raise ConfigError(f"probe.on_bad_cache={s.on_bad_cache!r} must be error or rebuild")
        if s.extract_batch_size is not None and (
            isinstance(s.extract_batch_size, bool) or int(s.extract_batch_size) < 1
        ):
            raise ConfigError(f"probe.extract_batch_size={s.extract_batch_size!r} must be a positive integer")
        if s.cache_dir is not None:
            s.cache_dir = os.path.expanduser(str(s.cache_dir))
        return s


# -- features of a network -------------------------------------------------------------------------
def use_feature_type(classifier: Any, features: str) -> None:
    """Make ``classifier.features`` (and its forward) pool the way ``probe.features`` says.

    ``mean`` switches timm's pooling to the average of the final-norm patch tokens and records it in
    the architecture stored with checkpoints (``global_pool=avg, fc_norm=False``: same parameters).
    """
    net = classifier.model
    if features == "cls":
        if getattr(net, "global_pool", "token") != "token":
            raise ConfigError(
                f"probe.features=cls but the model pools with global_pool={net.global_pool!r}; "
                "use probe.features=mean or a model with a CLS token"
            )
        return
    if not hasattr(net, "global_pool") or not isinstance(getattr(net, "fc_norm", None), nn.Identity):
        raise ConfigError(f"probe.features={features} needs a timm ViT with a final norm and no fc_norm")
    net.global_pool = "avg"
    arch = classifier.hparams.get("arch")
    if isinstance(arch, dict):
        arch.setdefault("kwargs", {}).update(global_pool="avg", fc_norm=False)


def _frozen_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.forward_head(net.forward_features(x), pre_logits=True)


def _hash_update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def weights_fingerprint(classifier: Any) -> str:
    """Hash of the backbone (every tensor but the head's) and of its architecture."""
    h = hashlib.blake2b(digest_size=16)
    arch = dict(classifier.hparams.get("arch") or {})
    kwargs = {k: v for k, v in dict(arch.get("kwargs") or {}).items() if k != "num_classes"}
    h.update(json.dumps({**arch, "kwargs": kwargs}, sort_keys=True, default=str).encode())
    head = classifier.model.get_classifier()
    head_ids = {id(p) for p in head.parameters()} | {id(b) for b in head.buffers()}
    for name, t in sorted(classifier.model.state_dict(keep_vars=True).items()):
        if id(t) in head_ids:
            continue
        h.update(name.encode())
        _hash_update_tensor(h, t)
    return h.hexdigest()


def records_fingerprint(records: Any) -> str:
    """Hash of a split's records: labels, file list and file stats (or the source's own fingerprint)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(records).__name__.encode())
    labels = np.asarray(records.labels, dtype=np.int64)
    h.update(labels.tobytes())
    h.update(repr(getattr(records, "draft_size", None)).encode())
    index = getattr(records, "index", None)
    if index is not None and hasattr(index, "paths"):
        h.update(str(getattr(index, "root", "")).encode())
        h.update(np.ascontiguousarray(index.paths).tobytes())
        stats = np.zeros((len(index), 2), dtype=np.int64)
        for i in range(len(index)):
            try:
                st = os.stat(index.path(i))
                stats[i] = (st.st_size, st.st_mtime_ns)
            except OSError:
                stats[i] = (-1, -1)
        h.update(stats.tobytes())
        return h.hexdigest()
    ds_fp = getattr(getattr(records, "ds", None), "_fingerprint", None)
    if ds_fp is not None:
        h.update(str(ds_fp).encode())
    own = getattr(records, "fingerprint", None)
    if own is not None:
        h.update(str(own() if callable(own) else own).encode())
    if ds_fp is None and own is None and hasattr(records, "name"):
        for i in range(len(records)):
            h.update(str(records.name(i)).encode() + b"\0")
    return h.hexdigest()


def preprocessing_fingerprint(classifier: Any, transform: Any, features: str, precision: str) -> dict:
    return {
        "format": CACHE_FORMAT,
        "preprocessing": classifier.preprocessing.to_dict(),
        "transform": repr(transform),
        "features": features,
        "precision": str(precision),
    }


def feature_key(weights_fp: str, records_fp: str, pre: dict) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"w": weights_fp, "d": records_fp, "p": pre}, sort_keys=True).encode())
    return h.hexdigest()


# -- the cache ---------------------------------------------------------------------------------------
@dataclass
class SplitFeatures:
    features: torch.Tensor  # float32 [N, D]
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N]: record index of each row (bad images skipped are absent)
    num_records: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"{key}.pt")


def save_features(path: str, key: str, split: str, feats: SplitFeatures, meta: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    payload = {
        "format": CACHE_FORMAT,
        "key": key,
        "split": split,
        "meta": json.dumps(meta, sort_keys=True, default=str),
        "features": feats.features.contiguous(),
        "labels": feats.labels,
        "indices": feats.indices,
        "num_records": int(feats.num_records),
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)


class BadCacheError(ConfigError):
    pass


def load_features(path: str, key: str, labels: np.ndarray) -> SplitFeatures:
    """Read and check one cache file; :class:`BadCacheError` when it is corrupt or stale."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, ...
        raise BadCacheError(f"feature cache {path} is corrupt ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT:
        raise BadCacheError(f"feature cache {path} is stale (not cache format {CACHE_FORMAT})")
    if obj.get("key") != key:
        raise BadCacheError(f"feature cache {path} is stale (it was written for another key)")
    f, y, idx = obj.get("features"), obj.get("labels"), obj.get("indices")
    n = int(obj.get("num_records", -1))
    ok = (
        isinstance(f, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and isinstance(idx, torch.Tensor)
        and f.dim() == 2
        and f.dtype == torch.float32
        and y.dtype == torch.int64
        and idx.dtype == torch.int64
        and len(f) == len(y) == len(idx)
        and n == len(labels)
    )
    if ok and len(idx):
        ok = bool(idx.min() >= 0 and idx.max() < n and torch.isfinite(f).all())
        ok = ok and np.array_equal(labels[idx.numpy()], y.numpy())
    if not ok:
        raise BadCacheError(f"feature cache {path} is stale (its contents do not match the data)")
    return SplitFeatures(f, y, idx, n)


# -- extraction ----------------------------------------------------------------------------------------
class _Indexed(Dataset):
    """``(index, image, label)`` of a split's dataset: indices let ranks' shares be merged exactly."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.ds[i]
        return None if item is None else (i, *item)


class FeatureExtractor(L.LightningModule):
    """Runs the frozen network over the splits given to ``trainer.predict``; gathers over ranks."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.model = classifier.model
        self.normalizer = Normalize(classifier.preprocessing)
        self.n_loaders = 1
        self._parts: dict[int, list] = {}
        self.result: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def on_predict_start(self) -> None:
        self.model.eval()
        self._parts = {}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch is None:
            return None
        idx, x, y = batch
        x = self.normalizer(x)
        with torch.no_grad():
            f = _frozen_features(self.model, x).float()
        self._parts.setdefault(dataloader_idx, []).append((idx.long(), f, y.long()))
        return None

    def _gather(self, t: torch.Tensor, n_max: int) -> torch.Tensor:
        pad = torch.zeros((n_max - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        out = self.all_gather(torch.cat([t, pad]))  # [world, n_max, ...]
        return out.reshape(-1, *t.shape[1:])

    def on_predict_epoch_end(self) -> None:
        dim = int(getattr(self.model, "num_features", 0) or getattr(self.model, "embed_dim", 0))
        world = int(self.trainer.world_size)
        for dl_idx in range(self.n_loaders):
            parts = self._parts.get(dl_idx, [])
            dev = self.device
            if parts:
                idx = torch.cat([p[0] for p in parts]).to(dev)
                f = torch.cat([p[1] for p in parts]).to(dev)
                y = torch.cat([p[2] for p in parts]).to(dev)
            else:
                idx = torch.zeros(0, dtype=torch.long, device=dev)
                f = torch.zeros(0, dim, device=dev)
                y = torch.zeros(0, dtype=torch.long, device=dev)
            if world > 1:
                counts = self.all_gather(torch.tensor([idx.shape[0]], device=dev)).reshape(-1)
                n_max = int(counts.max())
                valid = torch.cat([torch.arange(n_max, device=dev) < c for c in counts])
                idx = self._gather(idx, n_max)[valid]
                f = self._gather(f, n_max)[valid]
                y = self._gather(y, n_max)[valid]
            idx, f, y = idx.cpu(), f.cpu(), y.cpu()
            # Sort by record index and keep one row per index (samplers may pad with repeats).
            order = torch.argsort(idx, stable=True)
            idx, f, y = idx[order], f[order], y[order]
            keep = torch.ones_like(idx, dtype=torch.bool)
            keep[1:] = idx[1:] != idx[:-1]
            self.result[dl_idx] = (f[keep].contiguous(), y[keep], idx[keep])
        self._parts = {}


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
    settings: ProbeSettings,
    trainer: L.Trainer | None = None,
) -> tuple[dict[str, SplitFeatures], dict[str, dict]]:
    """Features of ``splits`` from memory, the disk cache, or one extraction pass; plus a report.

    Must be called on every rank (the extraction is collective); every rank gets every feature.
    """
    trainer = _extract_trainer(trainer)
    datamodule.setup()
    transform = datamodule._transform(False)
    pre = preprocessing_fingerprint(classifier, transform, settings.features, _precision_of(trainer))
    t0 = time.perf_counter()
    w_fp = weights_fingerprint(classifier)
    distributed = int(trainer.world_size) > 1
    out: dict[str, SplitFeatures] = {}
    report: dict[str, dict] = {}
    missing: list[tuple[str, str]] = []
    for split in splits:
        records = datamodule.splits[split]
        if isinstance(records, IterableDataset) or not hasattr(records, "__len__"):
            raise ConfigError(
                f"the {split} split is streamed; cached features need a map-style dataset (data.streaming=false)"
            )
        key = feature_key(w_fp, records_fingerprint(records), pre)
        labels = np.asarray(records.labels, dtype=np.int64)
        path = cache_path(settings.cache_dir, key) if settings.cache_dir else None
        hit = _MEMORY.get(key) if not distributed else None
        source = "memory"
        if hit is None and path and os.path.exists(path):
            try:
                hit = load_features(path, key, labels)
                source = "disk"
            except BadCacheError as e:
                if settings.on_bad_cache == "error":
                    raise ConfigError(
                        f"{e}; delete it (it is rebuilt on the next run) or set probe.on_bad_cache=rebuild"
                    ) from None
                log.warning("%s; rebuilding it", e)
        if hit is not None:
            out[split] = hit
            report[split] = {"images": len(hit), "source": source, "key": key, "path": path}
            _remember(key, hit)
        else:
            missing.append((split, key))
    log.info("features: fingerprinted weights and data in %.1fs", time.perf_counter() - t0)

    if missing:
        t1 = time.perf_counter()
        bs = settings.extract_batch_size or datamodule.eval_batch_size or datamodule.loader_batch_size
        loaders = []
        for split, _ in missing:
            ds = _Indexed(datamodule._dataset(split, transform, False))
            pin = torch.cuda.is_available() if datamodule.pin_memory is None else bool(datamodule.pin_memory)
            loaders.append(
                DataLoader(
                    ds,
                    batch_size=int(bs),
                    shuffle=False,
                    num_workers=datamodule.num_workers,
                    pin_memory=pin,
                    collate_fn=_collate_skipping_none,
                )
            )
        extractor = FeatureExtractor(classifier)
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
            _remember(key, feats)
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
    for split, r in report.items():
        if r["source"] != "extracted" and trainer.is_global_zero:
            log.info(
                "features: %s (%d images) from the %s cache %s", split, r["images"], r["source"], r["key"]
            )
    return out, report


def _remember(key: str, feats: SplitFeatures) -> None:
    _MEMORY[key] = feats
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > _MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)


def clear_memory_cache() -> None:
    _MEMORY.clear()


def _collate_skipping_none(batch: list) -> Any:
    from vit_ft.data.datamodule import collate_skipping_none

    return collate_skipping_none(batch)


# -- the probe -------------------------------------------------------------------------------------------
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
    """

    def __init__(self, classifier: Any, batchnorm: bool = False, in_loop: bool = False) -> None:
        super().__init__()
        self.model = classifier.model  # same state_dict keys as ViTClassifier
        self.normalizer = Normalize(classifier.preprocessing)
        self.preprocessing = classifier.preprocessing
        self.class_names = classifier.class_names
        self.num_classes = int(classifier.num_classes)
        self.in_loop = bool(in_loop)
        self.label_smoothing = float(classifier.label_smoothing)
        self.optimizer_cfg = dict(classifier.optimizer_cfg)
        self.scheduler_cfg = dict(classifier.scheduler_cfg)
        if not isinstance(self.head, nn.Linear) or not self.head.weight.numel():
            raise ConfigError(
                "the probe has nothing to train: the model has no linear head; give the data's classes a head "
                "(model.reset_head=true)"
            )
        dim = int(self.head.in_features)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if batchnorm else None
        for p in self.model.parameters():
            p.requires_grad = False
        for p in self.head.parameters():
            p.requires_grad = True
        hp = dict(classifier.hparams)
        hp["freeze_backbone"] = True
        self._classifier_hparams = hp
        self.save_hyperparameters(hp, logger=False)
        self._init_metrics(self.num_classes)

    @property
    def head(self) -> nn.Module:
        return self.model.get_classifier()

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
            return _frozen_features(self.model, x)

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
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self._log_train(loss, y, logits)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        if self.optimizer_cfg.get("layer_decay"):
            log.info("probe: optimizer.layer_decay does not apply to a linear head; ignored")
        return self._optimizers_for(self.head, layer_decay=None)

    # -- checkpoints: a ViTClassifier's, plus what resuming the probe needs ------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint["state_dict"]
        probe_state = {"in_loop": self.in_loop, "batchnorm": self.bn is not None}
        if self.bn is not None:
            raw = {k: v for k, v in sd.items() if k.startswith("bn.")}
            raw["model.head.weight"] = sd["model.head.weight"]
            raw["model.head.bias"] = sd["model.head.bias"]
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
            sd["model.head.weight"], sd["model.head.bias"] = w.cpu(), b.cpu()
        checkpoint["hyper_parameters"] = dict(self._classifier_hparams)
        checkpoint["vit_ft"] = {
            "format": 1,
            "total_steps": int(self.trainer.estimated_stepping_batches),
            "probe": probe_state,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        probe = (checkpoint.get("vit_ft") or {}).get("probe") or {}
        raw = probe.get("raw")
        if raw and self.bn is not None:
            checkpoint["state_dict"].update(raw)
        elif self.bn is not None:
            # A checkpoint without the unfolded head: start the BN as identity on the folded head.
            sd = checkpoint["state_dict"]
            for k, v in self.bn.state_dict().items():
                sd.setdefault(f"bn.{k}", v)


class FeatureDataModule(L.LightningDataModule):
    """Loaders over cached features, with the image DataModule's batch size, classes and splits."""

    def __init__(self, base: Any, features: dict[str, SplitFeatures]) -> None:
        super().__init__()
        self.base = base
        self.features = features
        self.class_names = base.class_names
        self.splits = {k: v for k, v in base.splits.items() if k in features}
        self.bad_image_report = base.bad_image_report

    def _loader(self, split: str, train: bool) -> DataLoader:
        f = self.features[split]
        bs = (
            self.base.loader_batch_size
            if train
            else (self.base.eval_batch_size or self.base.loader_batch_size)
        )
        return DataLoader(
            TensorDataset(f.features, f.labels),
            batch_size=int(bs),
            shuffle=train,
            drop_last=train and len(f) >= 2 * bs,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.features else "val", False)


def _no_augmentation(datamodule: Any) -> None:
    """Train on the eval transform (this instance only): an in-loop probe comparable to the cached one."""
    eval_transform = datamodule._transform

    def transform(train: bool) -> Any:
        return eval_transform(False)

    datamodule._transform = transform


def prepare_linear_probe(cfg: Any, classifier: Any, datamodule: Any, trainer: L.Trainer) -> tuple[Any, Any]:
    """Turn what ``run.build`` made into the probe's module and data (called by ``run.train``)."""
    settings = ProbeSettings.from_config(cfg.get("probe"))
    if settings.mode != "linear":
        raise ConfigError(f"probe.mode={settings.mode} is run by its own job, not as a linear probe")
    use_feature_type(classifier, settings.features)
    probe = LinearProbe(classifier, batchnorm=settings.batchnorm, in_loop=not settings.cache)
    if not settings.cache:
        if not settings.augment:
            _no_augmentation(datamodule)
        log.info("probe: backbone in the loop (probe.cache=false), augmentation %s", settings.augment)
        return probe, datamodule
    if cfg.get("ckpt_path"):
        log.info("probe: resuming the head from %s", cfg.ckpt_path)
    splits = [s for s in ("train", "val", "test") if s in datamodule.splits]
    if "test" in splits and not cfg.get("test"):
        splits.remove("test")
    feats, _ = split_features(classifier, datamodule, splits, settings, trainer)
    if len(feats["train"]) == 0:
        raise ConfigError(
            "the probe has nothing to train: the train split has no usable image; check data.root "
            "and the bad-image report"
        )
    return probe, FeatureDataModule(datamodule, feats)
