"""decode_device=cuda: workers plan, the batch decodes where it lands. The same code runs on the CPU here.

What needs a GPU and is not tested here: nvJPEG itself (torchvision's CUDA decode_jpeg), its handling
of damaged files, pinned-memory transfer, and the float resize running on CUDA (its arithmetic is
tested on the CPU through ``via_float=True``).
"""

from __future__ import annotations

import io
import logging
import os

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import bad_images, exif_rotated_jpeg, jpeg_bytes, photo, quiet_trainer, write
from vit_ft.data import ImageFolderDataModule
from vit_ft.data.bad_images import UnusableImageError
from vit_ft.data.decode import decode
from vit_ft.data.device_decode import PlannedBatch
from vit_ft.data.transforms import (
    PlannedJpeg,
    PlanOnly,
    build_eval_transform,
    build_train_transform,
    resize_uint8,
)
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing

SIZE = 32


def _folder(root: str, bad: bool = False) -> None:
    """train/ and val/ of 2 classes: JPEGs of several sizes (short sides < 8/7 x SIZE: no DCT scaling), an
    EXIF-rotated and a grayscale JPEG, and files the workers decode themselves (PNG, CMYK JPEG)."""
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog")):
            files = {
                f"{cls}_{i}.jpg": jpeg_bytes(photo(40 + 5 * i, 30 + 2 * i, seed=i + 7 * c)) for i in range(4)
            }
            files[f"{cls}_rot.jpg"] = exif_rotated_jpeg(6 + c, 50, 36)
            files[f"{cls}_gray.jpg"] = jpeg_bytes(photo(44, 33, seed=c).convert("L"))
            b = io.BytesIO()
            photo(36, 36, seed=9 + c).save(b, "PNG")
            files[f"{cls}_png.png"] = b.getvalue()
            files[f"{cls}_cmyk.jpg"] = jpeg_bytes(photo(48, 36, seed=c).convert("CMYK"))
            write(os.path.join(root, split, cls), files)
    if bad:
        write(os.path.join(root, "train", "dog"), {"truncated.jpg": bad_images()["truncated.jpg"]})


def _dm(root, batch_decode: bool, **kw) -> ImageFolderDataModule:
    args = dict(batch_size=8, num_workers=0, persistent_workers=False, pin_memory=False)
    args.update(kw)
    dm = ImageFolderDataModule(root=str(root), **args)
    dm.configure_preprocessing(Preprocessing(SIZE))
    dm.batch_decode = batch_decode
    return dm


def _batches(dm: ImageFolderDataModule, loader) -> list:
    out = []
    for batch in loader:
        if isinstance(batch, PlannedBatch):
            batch = dm.on_after_batch_transfer(batch.to("cpu"), 0)
        if batch is not None:
            out.append(batch)
    return out


def test_eval_pixels_match_the_cpu_workers(tmp_path):
    _folder(str(tmp_path))
    cpu = _batches(d := _dm(tmp_path, False), d.val_dataloader())
    dev = _dm(tmp_path, True)
    dev.max_decode_pixels = 5000  # several decode calls per batch
    loader = dev.val_dataloader()
    assert isinstance(loader.dataset.transform, PlanOnly)
    raw = next(iter(loader))
    assert isinstance(raw, PlannedBatch) and len(raw.plans) == 6 and raw.ready is not None
    got = _batches(dev, loader)
    assert len(got) == len(cpu)
    for (x0, y0), (x1, y1) in zip(cpu, got):
        assert x1.dtype == torch.uint8 and x1.shape == x0.shape == (len(y0), 3, SIZE, SIZE)
        assert torch.equal(y0, y1)
        assert (x0.int() - x1.int()).abs().max() <= 1  # same decoder, same uint8 resize kernel


def test_float_resize_as_on_cuda_is_within_one_level():
    t = torch.from_numpy(np.asarray(photo(70, 50))).permute(2, 0, 1)
    # torch's uint8 CPU kernels round between the two separable passes, and for bicubic also clamp
    # the overshoot there: at sharp edges that kernel is the one further from the exact result.
    for mode in ("bilinear", "bicubic"):
        for size in ((32, 32), (96, 80)):
            a = resize_uint8(t, size, mode, via_float=False).int()
            b = resize_uint8(t, size, mode, via_float=True).int()
            d = (a - b).abs()
            assert b.shape == a.shape and b.dtype == torch.int32 and d.float().mean() < 0.5
            assert d.max() <= 1 if mode == "bilinear" else (d > 2).float().mean() < 0.01


def test_large_jpeg_close_to_reduced_scale_cpu_path(tmp_path):
    """The CPU path decodes big JPEGs at 1/2..1/8 scale, the device path at full scale: close, not equal."""
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(photo(400, 300)))
    src = str(tmp_path / "big.jpg")
    planned = PlanOnly(build_eval_transform(SIZE))(src)
    assert isinstance(planned, PlannedJpeg) and planned.jpeg.box == (0, 0, 400, 300)
    batch = PlannedBatch([(planned, 0)], "val", (SIZE, SIZE))
    x, _ = _dm(tmp_path, True).decode_planned(batch)
    full = resize_uint8(decode(src), (SIZE, SIZE), "bilinear", via_float=False)
    assert (x[0].int() - full.int()).abs().max() <= 1  # == a full-scale decode + resize
    ref = build_eval_transform(SIZE)(src)  # 1/8-scale DCT decode: high frequencies differ a little
    assert (x[0].float() - ref.float()).abs().mean() < 8


def test_train_shapes_labels_and_flip_through_a_worker(tmp_path):
    _folder(str(tmp_path))
    dev = _dm(tmp_path, True, num_workers=1, batch_size=16)
    dev.setup()
    labels = sorted(dev.splits["train"].labels.tolist())
    got = _batches(dev, dev.train_dataloader())  # 24 images, batch 16: no drop_last
    assert sorted(torch.cat([y for _, y in got]).tolist()) == labels
    assert all(x.shape[1:] == (3, SIZE, SIZE) and x.dtype == torch.uint8 for x, _ in got)
    # a full-image "crop" flipped on the device == the eval transform flipped
    src = os.path.join(tmp_path, "train", "cat", "cat_0.jpg")  # 40x30
    tf = PlanOnly(build_train_transform(SIZE, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), hflip=1.0))
    planned = tf(src)
    assert planned.flip and planned.jpeg.box == (0, 0, 40, 30)
    x, _ = dev.decode_planned(PlannedBatch([(planned, 1)], "train", (SIZE, SIZE)))
    ref = build_eval_transform(SIZE)(src)
    assert (x[0].flip(-1).int() - ref.int()).abs().max() <= 1


def test_bad_jpeg_skip_counts_once_and_workers_then_skip_it(tmp_path, caplog):
    _folder(str(tmp_path), bad=True)
    dm = _dm(tmp_path, True, on_bad_image="skip", batch_size=32)
    with caplog.at_level(logging.WARNING):
        first = _batches(dm, dm.train_dataloader())
        second = _batches(dm, dm.train_dataloader())
    n = len(dm.splits["train"])
    assert sum(len(y) for _, y in first) == sum(len(y) for _, y in second) == n - 1
    report = dm.bad_image_report()
    assert report["count"] == 1 and report["files"][0].endswith("truncated.jpg")
    warned = [r for r in caplog.records if "truncated.jpg" in r.getMessage()]
    assert len(warned) == 1 and "truncated" in warned[0].getMessage()


def test_bad_jpeg_error_mode_is_one_line(tmp_path):
    _folder(str(tmp_path), bad=True)
    dm = _dm(tmp_path, True, batch_size=32)
    with pytest.raises(UnusableImageError) as e:
        _batches(dm, dm.train_dataloader())
    msg = str(e.value)
    assert "truncated.jpg" in msg and "data.on_bad_image=skip" in msg and "\n" not in msg


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.seen: list = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((x.dtype, tuple(x.shape), y.dtype))
        return torch.nn.functional.cross_entropy(self.lin(x.float().mean((2, 3)) / 255), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_calls_the_datamodule_hook(tmp_path):
    _folder(str(tmp_path))
    dm, model = _dm(tmp_path, True), _Tiny()
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert model.seen == [(torch.uint8, (8, 3, SIZE, SIZE), torch.int64)] * 2


def test_decode_device_config(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="must be 'cpu' or 'cuda'"):
        ImageFolderDataModule(root=str(tmp_path), decode_device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="decode_device=cuda needs a CUDA GPU") as e:
        ImageFolderDataModule(root=str(tmp_path), decode_device="cuda")
    assert "\n" not in str(e.value)
    assert ImageFolderDataModule(root=str(tmp_path)).batch_decode is False


def test_auto_augment_keeps_cpu_decoding(tmp_path):
    _folder(str(tmp_path))
    dm = _dm(tmp_path, True, auto_augment="rand-m9-mstd0.5")
    loader = dm.train_dataloader()
    assert not isinstance(loader.dataset.transform, PlanOnly)
    x, y = next(iter(loader))
    assert x.shape[1:] == (3, SIZE, SIZE)
    assert isinstance(dm.val_dataloader().dataset.transform, PlanOnly)


def test_non_jpeg_and_cmyk_are_decoded_in_the_worker(tmp_path):
    _folder(str(tmp_path))
    tf = PlanOnly(build_eval_transform(SIZE))
    for name in ("cat_png.png", "cat_cmyk.jpg"):
        out = tf(os.path.join(tmp_path, "val", "cat", name))
        assert isinstance(out, torch.Tensor) and out.shape == (3, SIZE, SIZE)
    assert Image.open(os.path.join(tmp_path, "val", "cat", "cat_gray.jpg")).mode == "L"
    assert isinstance(tf(os.path.join(tmp_path, "val", "cat", "cat_gray.jpg")), PlannedJpeg)
