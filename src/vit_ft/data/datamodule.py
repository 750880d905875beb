"""LightningDataModules: one generic loader/transform layer, one subclass per kind of source.

A source provides, per split, *records*: ``len(records)``, ``records.load(i) -> PIL RGB image`` and
``records.labels`` (int64 numpy array). The generic layer adds transforms, bad-image handling
(:mod:`vit_ft.data.bad_images`), decoding on the device (:mod:`vit_ft.data.device_decode`) and
DataLoaders (:mod:`vit_ft.data.loader_policy`). ``batch_size`` is the global batch of one optimizer
step; the loader batch is ``batch_size / (devices × nodes × accumulate_grad_batches)`` (set by
:meth:`configure_batch`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vit_ft.data.bad_images import BadImageLedger
from vit_ft.data.device_decode import PlannedBatch, check_decode_device, decode_planned, plan_in_workers
from vit_ft.data.folder import index_image_folder, stratified_split
from vit_ft.data.loader_policy import LoaderPolicy, eval_share_sampler, loader_batch, per_device_batch
from vit_ft.data.manifest import BadRows, ManifestRecords, decide_task, index_manifests
from vit_ft.data.quickstart import make_quickstart_dataset
from vit_ft.data.records import FileRecords, IndexedDataset, TransformedDataset, collate_skipping_none
from vit_ft.data.resumable import SAMPLERS, ResumableOrder
from vit_ft.data.scan import imbalance_summary
from vit_ft.data.transforms import build_eval_transform, build_train_transform, parse_eval_crop
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing

log = logging.getLogger(__name__)


def check_sampler(sampler: Any, samples_per_epoch: Any) -> tuple[str, int | None]:
    """``data.sampler`` and ``data.samples_per_epoch``, checked."""
    sampler = "none" if sampler is None else str(sampler)
    if sampler not in SAMPLERS:
        raise ConfigError(f"data.sampler={sampler!r} is not one of {', '.join(SAMPLERS)}; pick one of them")
    if samples_per_epoch is not None:
        if (
            isinstance(samples_per_epoch, bool)
            or not isinstance(samples_per_epoch, int)
            or samples_per_epoch < 1
        ):
            raise ConfigError(
                f"data.samples_per_epoch={samples_per_epoch!r} must be a positive integer or null"
            )
        if sampler == "none":
            raise ConfigError(
                f"data.samples_per_epoch={samples_per_epoch} needs a drawn order (data.sampler=balanced or "
                "sqrt); with data.sampler=none an epoch is one pass over the data"
            )
    return sampler, samples_per_epoch


class ImageDataModule(ResumableOrder, L.LightningDataModule):
    """Loaders and transforms shared by every source; subclasses implement :meth:`load_splits`."""

    def __init__(
        self,
        batch_size: int = 512,
        num_workers: int = 8,
        val_fraction: float = 0.1,
        on_bad_image: str = "error",
        seed: int = 0,
        eval_batch_size: int | None = None,
        train_scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        auto_augment: str | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        decode_device: str = "cpu",
        eval_crop: Any = "auto",
        sampler: str = "none",
        samples_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.sampler, self.samples_per_epoch = check_sampler(sampler, samples_per_epoch)
        self.eval_crop = parse_eval_crop(eval_crop)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer (e.g. 512)")
        if num_workers is None or int(num_workers) < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be 0 or more")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction!r} must be in [0, 1), e.g. 0.1")
        self.ledger = BadImageLedger(on_bad_image)  # the bad images met, wherever they were met
        check_decode_device(decode_device)
        self.decode_device = decode_device
        # Decode JPEGs in batch in the main process, on the device the batch is moved to (not in the
        # workers). On for decode_device=cuda; tests turn it on to run the same code on the CPU.
        self.batch_decode = decode_device == "cuda"
        # Most pixels one batched decode call may hold (decoded, full resolution) at once.
        self.max_decode_pixels = 64 * 2**20
        self.batch_size = batch_size
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.train_scale = tuple(train_scale)
        self.hflip = hflip
        self.auto_augment = auto_augment
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.augment_train = True  # false: train splits use the eval transform (train_with_eval_transform)
        self.img_size = 224
        self.interpolation = "bilinear"
        self.crop_pct: float | None = None  # the weights' (Preprocessing.crop_pct); data.eval_crop decides
        self.crop_mode = "center"
        self.loader_batch_size = batch_size
        self.class_names: list[str] | None = None
        self.splits: dict[str, Any] | None = None
        self.task = "single"  # or multilabel: set once by configure_task (model.task)

    # -- configuration from the run -------------------------------------------------------------
    @property
    def on_bad_image(self) -> str:
        return self.ledger.on_bad_image

    def configure_preprocessing(self, preprocessing: Preprocessing) -> None:
        """The network's input: size, resize filter, and the evaluation crop its weights state.

        Called once the model is built, which is after :meth:`setup` (the model needs the classes):
        records already loaded get the real size too (it is part of the probe's feature-cache key)."""
        pre = preprocessing
        self.img_size, self.interpolation = int(pre.img_size), str(pre.interpolation)
        self.crop_pct = None if pre.crop_pct is None else float(pre.crop_pct)
        self.crop_mode = str(pre.crop_mode or "center")
        self._size_records()

    def _size_records(self) -> None:
        """Let file records decode large JPEGs at a reduced scale no smaller than the input size."""
        for records in (self.splits or {}).values():
            if isinstance(records, FileRecords):
                records.draft_size = self.img_size

    @property
    def eval_crop_pct(self) -> float | None:
        """The evaluation crop in use: the weights' (``data.eval_crop=auto``), none, or the one asked."""
        if self.eval_crop == "auto":
            crop = self.crop_pct
            if crop is not None and not 0.0 < crop <= 1.0:
                raise ConfigError(
                    f"the weights' preprocessing has crop_pct={crop} (outside (0, 1]); set data.eval_crop "
                    "to a fraction such as 0.875, or none"
                )
            return crop
        return None if self.eval_crop == "none" else float(self.eval_crop)

    def configure_batch(self, world_size: int, accumulate_grad_batches: int = 1) -> int:
        """Split the global batch over devices and accumulation steps; return the loader batch."""
        self.loader_batch_size = per_device_batch(self.batch_size, world_size, accumulate_grad_batches)
        return self.loader_batch_size

    def batch_for(self, train: bool, asked: int | None = None) -> int:
        """The batch of a training loader, or of an evaluation pass (``asked``, else ``eval_batch_size``)."""
        return loader_batch(self.loader_batch_size, self.eval_batch_size, train=train, asked=asked)

    @property
    def loader_policy(self) -> LoaderPolicy:
        return LoaderPolicy(self.num_workers, self.pin_memory, self.persistent_workers, int(self.seed))

    # -- sources --------------------------------------------------------------------------------
    def load_splits(self) -> tuple[list[str], dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.class_names, self.splits = self.load_splits()
            self._size_records()
            sizes = ", ".join(
                f"{k} {len(v) if hasattr(v, '__len__') else '(streamed)'}" for k, v in self.splits.items()
            )
            log.info("data: %d classes; %s images", len(self.class_names), sizes)
            if len(self.class_names) < 2:
                raise ConfigError(
                    f"data has {len(self.class_names)} class ({self.class_names}); a classifier needs at least 2"
                )
            val = self.splits.get("val", ())
            if hasattr(val, "__len__") and len(val) == 0:
                raise ConfigError(
                    "the validation split is empty; add a val/ folder or raise data.val_fraction (e.g. 0.1)"
                )
            counts = self.class_counts("train")
            if counts is not None:
                log.info("%s", imbalance_summary(counts, self.class_names))

    def class_counts(self, split: str = "train") -> np.ndarray | None:
        """Images per class (int64 ``[num_classes]``) of ``split``; None for a streamed one (no labels
        up front)."""
        labels = getattr((self.splits or {}).get(split), "labels", None)
        if labels is None or self.class_names is None:
            return None
        labels = np.asarray(labels)
        return np.bincount(labels[labels >= 0], minlength=len(self.class_names)).astype(np.int64)

    def configure_task(self, asked: str = "auto") -> str:
        """``single`` or ``multilabel`` (``model.task``; ``auto``: multilabel when a row has two labels),
        decided once from the data; a multi-label task makes every split's target multi-hot."""
        self.setup()
        multi = {k: v for k, v in self.splits.items() if hasattr(v, "multi_hot")}
        task = decide_task(asked, [v.label_counts() for v in multi.values()])
        if task == "multilabel":
            if len(multi) < len(self.splits):
                raise ConfigError(
                    "model.task=multilabel needs label sets: use data=manifest (image, labels columns) "
                    "or an HF label column that is a Sequence(ClassLabel)"
                )
            for records in multi.values():
                records.multilabel = True
        else:
            self.single_label_rows()
        self.task = task
        return task

    def single_label_rows(self) -> None:
        """Hook: a source whose rows may lack a label leaves them out of a single-label task."""

    # -- loaders --------------------------------------------------------------------------------
    def train_with_eval_transform(self) -> None:
        """Train on the eval transform from now on (an in-loop probe comparable to a cached one)."""
        self.augment_train = False

    def transform(self, train: bool) -> Any:
        """The transform of a training (``train=True``) or evaluation split."""
        if train and self.augment_train:
            return build_train_transform(
                self.img_size,
                interpolation=self.interpolation,
                scale=self.train_scale,
                hflip=self.hflip,
                auto_augment=self.auto_augment,
            )
        return build_eval_transform(
            self.img_size,
            interpolation=self.interpolation,
            crop_pct=self.eval_crop_pct,
            crop_mode=self.crop_mode,
        )

    def dataset(self, split: str, transform: Any, train: bool) -> Dataset:
        """The torch Dataset of one split with ``transform`` (map-style here; streaming overrides this)."""
        records = self.splits[split]
        return TransformedDataset(
            records, transform, self.on_bad_image, self.ledger.record_flags(split, len(records))
        )

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        if split not in self.splits:
            raise ConfigError(f"this data has no {split!r} split (it has {sorted(self.splits)})")
        transform, collate = self.transform(train), collate_skipping_none
        if self.batch_decode:  # the workers plan, the batch decodes where it lands
            transform, collate = plan_in_workers(transform, collate, split)
        ds = self.dataset(split, transform, train)
        bs = self.batch_for(train)
        if train and isinstance(ds, IterableDataset) and self.sampler != "none":
            raise ConfigError(
                f"data.sampler={self.sampler} needs a data set of known size; a streamed one is read in "
                "its own order: use data.sampler=none or data.streaming=false"
            )
        if not (train and not isinstance(ds, IterableDataset)):  # evaluation: unpadded shares under DDP
            sampler = None if train else eval_share_sampler(ds)
            return self.loader_policy.loader(ds, bs, train=train, sampler=sampler, collate_fn=collate)
        labels = getattr(self.splits[split], "labels", None) if self.sampler != "none" else None
        sampler = self.epoch_sampler(ds, bs, labels=labels)
        return self.loader_policy.loader(
            ds, bs, train=train, sampler=sampler, collate_fn=collate, epoch_size=self.epoch_size(ds)
        )

    def indexed_loader(self, split: str, batch_size: int | None = None) -> DataLoader | None:
        """``(record index, image, label)`` batches of ``split`` with the eval transform, in record order,
        for one pass whose shares are merged over ranks (features, predictions); ``None`` for a streamed
        split (no record indices). ``batch_size``: per device, by default the evaluation batch."""
        self.setup()
        if split not in self.splits:
            raise ConfigError(f"this data has no {split!r} split (it has {sorted(self.splits)})")
        ds = self.dataset(split, self.transform(False), False)
        if isinstance(ds, IterableDataset):
            return None
        return self.loader_policy.loader(
            IndexedDataset(ds), self.batch_for(False, batch_size), collate_fn=collate_skipping_none, once=True
        )

    # -- bad images and decode_device=cuda ---------------------------------------------------------
    @property
    def bad_images(self) -> list[str]:
        """Files left out so far (``on_bad_image=skip``), over all splits and worker processes."""
        return self.ledger.files(self.splits or {})

    def bad_image_report(self) -> dict:
        """``{"count": n, "by_split": {...}, "files": [...]}`` for metrics.json (files capped at 1000)."""
        return self.ledger.report(self.splits or {})

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, PlannedBatch):
            return self.decode_planned(batch)
        return batch

    def decode_planned(self, batch: PlannedBatch) -> Any:
        """A batch planned in the workers, decoded on its device (see :func:`decode_planned`)."""
        records = (self.splits or {}).get(batch.split)

        def on_bad(plan: Any, reason: str, data: Any) -> None:
            self.ledger.found_on_device(batch.split, records, plan.index, plan.jpeg.name, reason, data)

        return decode_planned(batch, max_pixels=self.max_decode_pixels, on_bad=on_bad)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in (self.splits or {}) else "val", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class ImageFolderDataModule(ImageDataModule):
    """Your own folder: ``root/{train,val[,test]}/<class>/*`` or ``root/<class>/*``."""

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        class_names, index = index_image_folder(self.root, self.val_fraction, self.seed)
        return class_names, {k: FileRecords(v) for k, v in index.items()}


class QuickstartDataModule(ImageFolderDataModule):
    """The generated quickstart set (see :mod:`vit_ft.data.quickstart`), made on first use."""

    def prepare_data(self) -> None:
        make_quickstart_dataset(os.path.expanduser(str(self.root)))

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        self.prepare_data()
        return super().load_splits()


class ManifestDataModule(ImageDataModule):
    """CSV/JSONL manifests (see :mod:`vit_ft.data.manifest`): ``train``, ``val`` (``None``: split off
    train by ``val_fraction``), ``test``; ``classes``: the class list (default: the sorted union)."""

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.manifests = {"train": train, "val": val, "test": test}
        self.classes = list(classes) if classes else None
        self.bad_rows = BadRows()

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        class_names, index, self.bad_rows = index_manifests(self.manifests, self.classes, self.on_bad_image)
        if "val" not in index:
            tr, va = stratified_split(index["train"].labels, self.val_fraction, self.seed)
            index["train"], index["val"] = index["train"].subset(tr), index["train"].subset(va)
        k = len(class_names)
        return class_names, {s: ManifestRecords(index[s], k) for s in ("train", "val", "test") if s in index}

    def single_label_rows(self) -> None:
        for split, records in list(self.splits.items()):
            none = np.flatnonzero(records.labels < 0)
            if not len(none):
                continue
            first = records.name(int(none[0]))
            if self.on_bad_image != "skip":
                raise ConfigError(
                    f"data.{split}: {len(none)} row(s) have no label, first {first}; a single-label task needs one "
                    "per row: label them, set data.on_bad_image=skip, or model.task=multilabel"
                )
            for i in none:
                self.bad_rows.add(split, records.name(int(i)), "no label")
            log.warning("data.%s: %d row(s) without a label left out, first %s", split, len(none), first)
            keep = np.flatnonzero(records.labels >= 0)
            self.splits[split] = ManifestRecords(records.index.subset(keep), records.num_classes)
        self._size_records()

    def bad_image_report(self) -> dict:
        return self.bad_rows.merge_into(super().bad_image_report())
