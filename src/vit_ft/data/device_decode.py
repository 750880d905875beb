"""``data.decode_device=cuda``: DataLoader workers only plan each JPEG (crop box, orientation, flip);
the batch is decoded where it lands, by nvJPEG through ``torchvision.io.decode_jpeg``.

:func:`plan_in_workers` turns a split's transform and collate into planning ones,
:class:`PlannedBatch` carries the still-encoded JPEGs of one batch to the device, and
:func:`decode_planned` decodes it there into what the CPU workers would have made. The same code runs
on the CPU in the tests (a batch moved to ``cpu``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import default_collate

from vit_ft.data.decode import BadImageError, decode
from vit_ft.data.transforms import PlannedJpeg, PlanOnly, finish_on_device, supports_device_decode
from vit_ft.errors import ConfigError

log = logging.getLogger(__name__)

DECODE_DEVICES = ("cpu", "cuda")


def check_decode_device(decode_device: str) -> None:
    """``data.decode_device`` is ``cpu``, or ``cuda`` on a machine with a CUDA GPU."""
    if decode_device not in DECODE_DEVICES:
        raise ConfigError(f"data.decode_device={decode_device!r} must be 'cpu' or 'cuda'")
    if decode_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "data.decode_device=cuda needs a CUDA GPU (nvJPEG through torchvision) and none is "
            "available here; use data.decode_device=cpu"
        )


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


def plan_in_workers(transform: Any, collate: Any, split: str) -> tuple[Any, Any]:
    """The transform and collate of ``split`` when the device decodes: workers plan, the collate makes
    a :class:`PlannedBatch`. A transform with PIL augmentations keeps decoding on the CPU (unchanged)."""
    if not supports_device_decode(transform):
        log.info("data.decode_device: %r needs PIL augmentations; decoding its JPEGs on the CPU", transform)
        return transform, collate
    planned = PlanOnly(transform)
    return planned, functools.partial(collate_planned, split=split, size=planned.size)


# Called with (plan, reason, bytes) of a JPEG no decoder could read.
OnBadImage = Callable[[PlannedJpeg, str, torch.Tensor], None]


def decode_planned(
    batch: PlannedBatch, *, max_pixels: int, on_bad: OnBadImage
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(uint8 [B, 3, H, W], labels)`` on ``batch.device``, as the CPU workers would have made them.

    JPEGs are decoded with ``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on
    CUDA), in chunks of at most ``max_pixels`` decoded pixels, then oriented, cropped, resized
    (antialiased) and flipped one by one. When a chunk fails, its images are decoded one at a time;
    one that fails on the device is tried with the CPU decoder, and one that fails there too is a bad
    image, handed to ``on_bad`` (which raises, or lets it be left out). ``None`` when every image was bad.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    device, (h, w), n = batch.device, batch.size, len(batch)
    out = torch.empty(n, 3, h, w, dtype=torch.uint8, device=device)
    keep = torch.ones(n, dtype=torch.bool)
    if batch.ready is not None:
        out[torch.tensor(batch.ready_pos, device=device)] = batch.ready
    for chunk in _chunks(batch, max_pixels):
        try:
            imgs = decode_jpeg([batch.jpeg(j) for j in chunk], mode=ImageReadMode.RGB, device=device)
            done = [(img, False) for img in imgs]
        except (RuntimeError, ValueError):
            done = [_decode_one(batch, j, on_bad) for j in chunk]
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


def _chunks(batch: PlannedBatch, max_pixels: int) -> list[list[int]]:
    chunks, cur, pixels = [], [], 0
    for j, plan in enumerate(batch.plans):
        p = plan.jpeg.size[0] * plan.jpeg.size[1]
        if cur and pixels + p > max_pixels:
            chunks.append(cur)
            cur, pixels = [], 0
        cur.append(j)
        pixels += p
    return chunks + [cur] if cur else chunks


def _decode_one(batch: PlannedBatch, j: int, on_bad: OnBadImage) -> tuple[torch.Tensor | None, bool]:
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
        on_bad(plan, e.reason, data)
        return None, False
