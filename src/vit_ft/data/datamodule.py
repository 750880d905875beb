"""LightningDataModules: one generic loader/transform layer, one subclass per kind of source.

A source provides, per split, *records*: ``len(records)``, ``records.load(i) -> PIL RGB image`` and
``records.labels`` (int64 numpy array). The generic layer adds transforms, bad-image handling and
DataLoaders. ``batch_size`` is the global batch of one optimizer step; the loader batch is
``batch_size / (devices × nodes × accumulate_grad_batches)`` (set by :meth:`configure_batch`).
"""

from __future__ import annotations

import functools
import logging
import os
import zlib
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from vit_ft.data.decode import BadImageError, decode
from vit_ft.data.folder import index_image_folder
from vit_ft.data.quickstart import make_quickstart_dataset
from vit_ft.data.records import (
    FileRecords,
    IndexedDataset,
    TransformedDataset,
    UnusableImageError,
    collate_skipping_none,
    seed_worker,
    unusable_message,
)
from vit_ft.data.resumable import ResumableOrder
from vit_ft.data.transforms import (
    PlannedJpeg,
    PlanOnly,
    build_eval_transform,
    build_train_transform,
    finish_on_device,
    parse_eval_crop,
    supports_device_decode,
)
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)


class PlannedBatch:
    """A collated batch whose JPEGs are still encoded (``decode_device=cuda``).

    Built in the DataLoader worker by :func:`collate_planned`: the JPEG bytes of the whole batch in
    one buffer (one shared-memory segment and one pinned copy per batch, not one per image), the
    per-image plan (crop box, orientation, flip, interpolation), and the images that were decoded in
    the worker (non-JPEG files) already at the output size. Lightning moves it with :meth:`to` and
    :meth:`ImageDataModule.on_after_batch_transfer` decodes it on that device.
    """

    def __init__(self, items: list[tuple[Any, int]], split: str, size: tuple[int, int]) -> None:
        self.split, self.size, self.device = split, (int(size[0]), int(size[1])), torch.device("cpu")
        self.labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        planned = [(k, x) for k, (x, _) in enumerate(items) if isinstance(x, PlannedJpeg)]
        ready = [(k, x) for k, (x, _) in enumerate(items) if not isinstance(x, PlannedJpeg)]
        self.ready_pos = [k for k, _ in ready]
        self.ready = torch.stack([x for _, x in ready]) if ready else None
        self.planned_pos = [k for k, _ in planned]
        self.data = torch.cat([x.jpeg.data for _, x in planned])
        lengths = torch.tensor([x.jpeg.data.numel() for _, x in planned], dtype=torch.int64)
        self.offsets = [0, *torch.cumsum(lengths, 0).tolist()]
        self.plans = [x._replace(jpeg=x.jpeg._replace(data=None)) for _, x in planned]

    def __len__(self) -> int:
        return len(self.labels)

    def jpeg(self, j: int) -> torch.Tensor:
        """The bytes of the ``j``-th planned JPEG (a view of the batch buffer)."""
        return self.data[self.offsets[j] : self.offsets[j + 1]]

    def to(self, device: Any, non_blocking: bool = False, **_: Any) -> PlannedBatch:
        # The JPEG bytes stay on the host: nvJPEG reads them from (pinned) host memory.
        self.device = torch.device(device)
        self.labels = self.labels.to(device, non_blocking=non_blocking)
        if self.ready is not None:
            self.ready = self.ready.to(device, non_blocking=non_blocking)
        return self

    def pin_memory(self, *_: Any) -> PlannedBatch:
        self.data = self.data.pin_memory()
        self.labels = self.labels.pin_memory()
        if self.ready is not None:
            self.ready = self.ready.pin_memory()
        return self

    def __repr__(self) -> str:
        return (
            f"PlannedBatch({len(self)} images, {len(self.plans)} encoded, {self.data.numel()} bytes, "
            f"split={self.split!r}, device={self.device})"
        )


def collate_planned(batch: list, split: str = "train", size: tuple[int, int] = (224, 224)) -> Any:
    """Collate for ``decode_device=cuda``: a :class:`PlannedBatch` when any JPEG is still encoded."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    if not any(isinstance(x, PlannedJpeg) for x, _ in batch):
        return default_collate(batch)
    return PlannedBatch(batch, split, size)


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
    ) -> None:
        super().__init__()
        self.eval_crop = parse_eval_crop(eval_crop)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer (e.g. 512)")
        if num_workers is None or int(num_workers) < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be 0 or more")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ConfigError(f"data.val_fraction={val_fraction!r} must be in [0, 1), e.g. 0.1")
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_image={on_bad_image!r} must be 'error' or 'skip'")
        if decode_device not in ("cpu", "cuda"):
            raise ConfigError(f"data.decode_device={decode_device!r} must be 'cpu' or 'cuda'")
        if decode_device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "data.decode_device=cuda needs a CUDA GPU (nvJPEG through torchvision) and none is "
                "available here; use data.decode_device=cpu"
            )
        self.decode_device = decode_device
        # Decode JPEGs in batch in the main process, on the device the batch is moved to (not in the
        # workers). On for decode_device=cuda; tests turn it on to run the same code on the CPU.
        self.batch_decode = decode_device == "cuda"
        # Most pixels one batched decode call may hold (decoded, full resolution) at once.
        self.max_decode_pixels = 64 * 2**20
        self._stream_device_bad: dict[str, int] = {}
        self._seen_bad: set = set()
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
        self.augment_train = True  # false: train splits use the eval transform (train_with_eval_transform)
        self.img_size = 224
        self.interpolation = "bilinear"
        self.crop_pct: float | None = None  # the weights' (Preprocessing.crop_pct); data.eval_crop decides
        self.crop_mode = "center"
        self.loader_batch_size = batch_size
        self.class_names: list[str] | None = None
        self.splits: dict[str, Any] | None = None
        self._bad_flags: dict[str, torch.Tensor] = {}

    # -- configuration from the run -------------------------------------------------------------
    def configure_preprocessing(
        self, img_size: int, interpolation: str, crop_pct: float | None = None, crop_mode: str = "center"
    ) -> None:
        """The network's input: size, resize filter, and the evaluation crop its weights state."""
        self.img_size, self.interpolation = int(img_size), str(interpolation)
        self.crop_pct = None if crop_pct is None else float(crop_pct)
        self.crop_mode = str(crop_mode or "center")

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
        if split not in self._bad_flags:
            self._bad_flags[split] = torch.zeros(len(records), dtype=torch.uint8).share_memory_()
        return TransformedDataset(records, transform, self.on_bad_image, self._bad_flags[split])

    def _loader(self, split: str, train: bool) -> DataLoader:
        self.setup()
        if split not in self.splits:
            raise ConfigError(f"this data has no {split!r} split (it has {sorted(self.splits)})")
        transform, collate = self.transform(train), collate_skipping_none
        if self.batch_decode:
            if supports_device_decode(transform):
                transform = PlanOnly(transform)
                collate = functools.partial(collate_planned, split=split, size=transform.size)
            else:
                log.info(
                    "data.decode_device: %r needs PIL augmentations; decoding its JPEGs on the CPU", transform
                )
        ds = self.dataset(split, transform, train)
        pin = torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)
        bs = self.loader_batch_size if train else (self.eval_batch_size or self.loader_batch_size)
        iterable = isinstance(ds, IterableDataset)
        sampler = self.epoch_sampler(ds, bs) if train and not iterable else None
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=sampler,
            drop_last=train and not iterable and len(ds) >= 2 * bs,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate,
            worker_init_fn=seed_worker,
            # Worker seeds come from here, not from torch's global generator (the model's).
            generator=torch.Generator().manual_seed(int(self.seed)) if train else None,
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
        pin = torch.cuda.is_available() if self.pin_memory is None else bool(self.pin_memory)
        return DataLoader(
            IndexedDataset(ds),
            batch_size=int(batch_size or self.eval_batch_size or self.loader_batch_size),
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=pin,
            collate_fn=collate_skipping_none,
            worker_init_fn=seed_worker,
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
        count = len(files)
        for split, n in self._stream_device_bad.items():  # streamed, found when decoding on the device
            by_split[split] = by_split.get(split, 0) + n
            count += n
        return {"count": count, "by_split": by_split, "files": files[:1000]}

    # -- decode_device=cuda: batched decoding where the batch lands --------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, PlannedBatch):
            return self.decode_planned(batch)
        return batch

    def decode_planned(self, batch: PlannedBatch) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(uint8 [B, 3, H, W], labels)`` on ``batch.device``, as the CPU workers would have made them.

        JPEGs are decoded with ``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on
        CUDA), in chunks of at most ``max_decode_pixels`` decoded pixels, then oriented, cropped,
        resized (antialiased) and flipped one by one. When a chunk fails, its images are decoded one
        at a time; one that fails on the device is tried with the CPU decoder, and one that fails
        there too is a bad image (``data.on_bad_image``). ``None`` when every image was bad.
        """
        from torchvision.io import ImageReadMode, decode_jpeg

        device, (h, w), n = batch.device, batch.size, len(batch)
        out = torch.empty(n, 3, h, w, dtype=torch.uint8, device=device)
        keep = torch.ones(n, dtype=torch.bool)
        if batch.ready is not None:
            out[torch.tensor(batch.ready_pos, device=device)] = batch.ready
        for chunk in self._chunks(batch):
            try:
                imgs = decode_jpeg([batch.jpeg(j) for j in chunk], mode=ImageReadMode.RGB, device=device)
                done = [(img, False) for img in imgs]
            except (RuntimeError, ValueError):
                done = [self._decode_one(batch, j) for j in chunk]
            for j, (img, oriented) in zip(chunk, done):
                k = batch.planned_pos[j]
                if img is None:
                    keep[k] = False
                    continue
                out[k] = finish_on_device(img, batch.plans[j], (h, w), oriented=oriented)
        if bool(keep.all()):
            return out, batch.labels
        if not bool(keep.any()):
            return None
        keep = keep.to(device)
        return out[keep], batch.labels[keep]

    def _chunks(self, batch: PlannedBatch) -> list[list[int]]:
        chunks, cur, pixels = [], [], 0
        for j, plan in enumerate(batch.plans):
            p = plan.jpeg.size[0] * plan.jpeg.size[1]
            if cur and pixels + p > self.max_decode_pixels:
                chunks.append(cur)
                cur, pixels = [], 0
            cur.append(j)
            pixels += p
        return chunks + [cur] if cur else chunks

    def _decode_one(self, batch: PlannedBatch, j: int) -> tuple[torch.Tensor | None, bool]:
        """One JPEG on the device; failing that on the CPU (oriented); failing that, a bad image."""
        from torchvision.io import ImageReadMode, decode_jpeg

        data = batch.jpeg(j)
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=batch.device), False
        except (RuntimeError, ValueError):
            pass
        plan = batch.plans[j]
        try:
            return decode(bytes(data.cpu().numpy()), name=plan.jpeg.name).to(batch.device), True
        except BadImageError as e:
            self._bad_on_device(batch.split, plan, e.reason, data)
            return None, False

    def _bad_on_device(self, split: str, plan: PlannedJpeg, reason: str, data: torch.Tensor) -> None:
        records = (self.splits or {}).get(split)
        if plan.index >= 0 and hasattr(records, "name"):
            name = records.name(plan.index)
        else:
            name = f"{split} ({plan.jpeg.name})"
        if self.on_bad_image != "skip":
            raise UnusableImageError(unusable_message(name, reason))
        if plan.index >= 0 and split in self._bad_flags:
            flags = self._bad_flags[split]
            first = not bool(flags[plan.index])
            flags[plan.index] = 1  # shared memory: the workers leave it out from now on
        else:  # streamed: no index; count each file once (by name, or by content for raw bytes)
            key = (split, plan.jpeg.name if plan.jpeg.name != "<bytes>" else zlib.crc32(data.cpu().numpy()))
            first = key not in self._seen_bad
            self._seen_bad.add(key)
            if first:
                self._stream_device_bad[split] = self._stream_device_bad.get(split, 0) + 1
        if first:
            log.warning("skipping unusable image %s (%s)", name, reason)

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
        return class_names, {k: FileRecords(v, draft_size=self.img_size) for k, v in index.items()}


class QuickstartDataModule(ImageFolderDataModule):
    """The generated quickstart set (see :mod:`vit_ft.data.quickstart`), made on first use."""

    def prepare_data(self) -> None:
        make_quickstart_dataset(os.path.expanduser(str(self.root)))

    def load_splits(self) -> tuple[list[str], dict[str, Any]]:
        self.prepare_data()
        return super().load_splits()
