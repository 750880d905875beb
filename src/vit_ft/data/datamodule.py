"""LightningDataModules: one generic loader/transform layer, one subclass per kind of source.

A source provides, per split, *records*: ``len(records)``, ``records.load(i) -> PIL RGB image`` and
``records.labels`` (int64 numpy array). The generic layer adds transforms, bad-image handling and
DataLoaders. ``batch_size`` is the global batch of one optimizer step; the loader batch is
``batch_size / (devices × nodes × accumulate_grad_batches)`` (set by :meth:`configure_batch`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from vit_ft.data.decode import BadImageError, load_image
from vit_ft.data.folder import FileIndex, index_image_folder
from vit_ft.data.transforms import build_eval_transform, build_train_transform
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)


class FileRecords:
    """Records backed by a :class:`FileIndex` of image paths."""

    def __init__(self, index: FileIndex, draft_size: int | None = None) -> None:
        self.index = index
        self.labels = index.labels
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.index)

    def source(self, i: int) -> str:
        """What the transforms decode: here the path (they read and decode it themselves)."""
        return self.index.path(i)

    def load(self, i: int):
        return load_image(self.index.path(i), draft_size=self.draft_size)

    def name(self, i: int) -> str:
        return self.index.path(i)


class UnusableImageError(ConfigError):
    """A bad image in ``on_bad_image=error`` mode: one line naming the file and the way out.

    DataLoader workers re-raise an exception in the main process as ``type(msg)`` where ``msg`` holds
    the worker's whole traceback; this class keeps only the original one-line message.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            message = last.split(": ", 1)[1] if last.startswith(("vit_ft.", "UnusableImageError")) else last
        super().__init__(message)


def unusable_message(path: str, reason: str) -> str:
    return f"unusable image {path}: {reason}; fix or remove it, or set data.on_bad_image=skip"


class TransformedDataset(Dataset):
    """``records`` + ``transform``; bad images raise one clear error or are skipped and flagged.

    ``bad`` is a uint8 tensor in shared memory, one flag per record, written by whichever worker
    process meets a bad file: the main process reads it for :meth:`ImageDataModule.bad_image_report`,
    each bad file is logged once (the first time), and later epochs skip it without reading it.
    """

    def __init__(
        self, records: Any, transform: Any, on_bad_image: str = "error", bad: torch.Tensor | None = None
    ) -> None:
        self.records, self.transform, self.on_bad_image = records, transform, on_bad_image
        self.bad = bad if bad is not None else torch.zeros(len(records), dtype=torch.uint8).share_memory_()
        self._source = getattr(records, "source", None)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        if self.bad[i]:
            return None
        try:
            if self._source is not None:
                x = self.transform(self._source(i))
            else:
                x = self.transform(self.records.load(i))
        except BadImageError as e:
            name = self.records.name(i) if hasattr(self.records, "name") else e.path
            if self.on_bad_image == "skip":
                self.bad[i] = 1
                log.warning("skipping unusable image %s (%s)", name, e.reason)
                return None
            raise UnusableImageError(unusable_message(name, e.reason)) from None
        return x, int(self.records.labels[i])


def collate_skipping_none(batch: list) -> Any:
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return default_collate(batch)


class ImageDataModule(L.LightningDataModule):
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
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer (e.g. 512)")
        if num_workers is None or int(num_workers) < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be 0 or more")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction!r} must be in [0, 1), e.g. 0.1")
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image={on_bad_image!r} must be 'error' or 'skip'")
        self.batch_size = batch_size
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.on_bad_image = on_bad_image
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self.train_scale = tuple(train_scale)
        self.hflip = hflip
        self.auto_augment = auto_augment
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.img_size = 224
        self.interpolation = "bilinear"
        self.loader_batch_size = batch_size
        self.class_names: list[str] | None = None
        self.splits: dict[str, Any] | None = None
        self._bad_flags: dict[str, torch.Tensor] = {}

    # -- configuration from the run -------------------------------------------------------------
    def configure_preprocessing(self, img_size: int, interpolation: str) -> None:
        self.img_size, self.interpolation = int(img_size), str(interpolation)

    def configure_batch(self, world_size: int, accumulate_grad_batches: int = 1) -> int:
        """Split the global batch over devices and accumulation steps; return the loader batch."""
        div = int(world_size) * int(accumulate_grad_batches)
        if self.batch_size % div != 0:
            raise ConfigError(
                f"data.batch_size={self.batch_size} does not divide over {world_size} device(s) x "
                f"{accumulate_grad_batches} accumulation step(s); use a multiple of {div}"
            )
        self.loader_batch_size = self.batch_size // div
        return self.loader_batch_size

    # -- sources --------------------------------------------------------------------------------
    def load_splits(self) -> tuple[list[str], dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            self.class_names, self.splits = self.load_splits()
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

    # -- loaders --------------------------------------------------------------------------------
    def _transform(self, train: bool) -> Any:
        if train:
            return build_train_transform(
                self.img_size,
                interpolation=self.interpolation,
                scale=self.train_scale,
                hflip=self.hflip,
                auto_augment=self.auto_augment,
            )
        return build_eval_transform(self.img_size, interpolation=self.interpolation)

    def _dataset(self, split: str, transform: Any, train: bool) -> Dataset:
        """The torch Dataset of one split (map-style here; the streaming source overrides this)."""
        records = self.splits[split]
        if split not in self._bad_flags:
            self._bad_flags[split] = torch.zeros(len(records), dtype=torch.uint8).share_memory_()
        return TransformedDataset(records, transform, self.on_bad_image, self._bad_flags[split])

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        if split not in self.splits:
            raise ConfigError(f"this data has no {split!r} split (it has {sorted(self.splits)})")
        ds = self._dataset(split, self._transform(train), train)
        pin = torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)
        bs = self.loader_batch_size if train else (self.eval_batch_size or self.loader_batch_size)
        iterable = isinstance(ds, IterableDataset)
        return DataLoader(
            ds,
            batch_size=bs,
            shuffle=train and not iterable,
            drop_last=train and not iterable and len(ds) >= 2 * bs,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_skipping_none,
            worker_init_fn=_seed_worker,
        )

    @property
    def bad_images(self) -> list[str]:
        """Files left out so far (``on_bad_image=skip``), over all splits and worker processes."""
        out = []
        for split, flags in self._bad_flags.items():
            records = self.splits[split]
            for i in torch.nonzero(flags).flatten().tolist():
                out.append(records.name(i) if hasattr(records, "name") else f"{split}[{i}]")
        return out

    def bad_image_report(self) -> dict:
        """``{"count": n, "by_split": {...}, "files": [...]}`` for metrics.json (files capped at 1000)."""
        by_split = {k: int(v.sum()) for k, v in self._bad_flags.items()}
        files = self.bad_images
        return {"count": len(files), "by_split": by_split, "files": files[:1000]}

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in (self.splits or {}) else "val", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


class ImageFolderDataModule(ImageDataModule):
    """Your own folder: ``root/{train,val[,test]}/<class>/*`` or ``root/<class>/*``."""

    def __init__(self, root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        class_names, index = index_image_folder(self.root, self.val_fraction, self.seed)
        return class_names, {k: FileRecords(v, draft_size=self.img_size) for k, v in index.items()}


class QuickstartDataModule(ImageFolderDataModule):
    """The generated quickstart set (see :mod:`vit_ft.data.quickstart`), made on first use."""

    def prepare_data(self) -> None:
        from vit_ft.data.quickstart import make_quickstart_dataset

        make_quickstart_dataset(os.path.expanduser(str(self.root)))

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        self.prepare_data()
        return super().load_splits()
