"""libjpeg-turbo region decoding: the region, scale and orientation are right, and nothing else changes."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg

from tests.helpers import jpeg_bytes, photo
from vit_ft.data import turbo
from vit_ft.data.decode import BadImageError, decode
from vit_ft.data.transforms import build_train_transform

pytestmark = pytest.mark.skipif(not turbo.available(), reason="no libturbojpeg 3 (turbojpeg wheel)")


def full_decode(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


@pytest.mark.parametrize("kind", ["444", "420", "gray", "progressive"], ids=lambda k: f"jpeg-{k}")
def test_region_equals_the_slice_of_a_full_decode(kind):
    img = photo(203, 157, seed=3)
    kw = {"444": {"subsampling": 0}, "420": {"subsampling": 2}, "progressive": {"progressive": True}}
    data = jpeg_bytes(img.convert("L") if kind == "gray" else img, **kw.get(kind, {}))
    full = full_decode(data)
    info = turbo.read_header(data)
    assert (info.width, info.height) == (203, 157)
    for box in [(0, 0, 203, 157), (17, 5, 90, 61), (33, 100, 203, 157), (0, 40, 1, 41), (150, 0, 203, 30)]:
        got = turbo.decode_region(data, info, box)
        want = full[:, box[1] : box[3], box[0] : box[2]]
        assert got.shape == want.shape, box
        diff = (got.int() - want.int()).abs()
        if kind in ("444", "gray"):  # no chroma upsampling: bit-identical
            assert diff.max() == 0, box
        else:  # chroma upsampling at the region's edges may differ by a few levels
            assert diff.float().mean() < 0.5, box


def test_scaled_region_is_a_good_downscale():
    data = jpeg_bytes(photo(640, 480, seed=1))
    info = turbo.read_header(data)
    decoded = Image.fromarray(full_decode(data).permute(1, 2, 0).numpy())
    for k in range(1, 8):
        got = turbo.decode_region(data, info, (0, 0, 640, 480), k).float()
        h, w = -(-480 * k // 8), -(-640 * k // 8)
        assert got.shape == (3, h, w), k
        ref = torch.from_numpy(np.array(decoded.resize((w, h), Image.BOX))).permute(2, 0, 1).float()
        err, mirrored = (got - ref).abs().mean(), (got - ref.flip(-1)).abs().mean()
        assert err < 8 and err < mirrored / 3, (k, err, mirrored)
    # a box at 3/8: edges rounded outwards, so the region is never smaller than box * k / 8
    got = turbo.decode_region(data, info, (101, 33, 333, 250), 3)
    assert got.shape[1] >= (250 - 33) * 3 / 8 and got.shape[2] >= (333 - 101) * 3 / 8


def test_scale_for_keeps_the_region_at_least_the_output():
    assert turbo.scale_for(4000, 3000, 384, 384) == 2  # 2/8: 1000x750; 1/8 would be 500x375 < 384
    assert turbo.scale_for(500, 375, 384, 384) == 8
    assert turbo.scale_for(1200, 1200, 384, 384) == 3  # 450
    assert turbo.scale_for(50, 40, 384, 384) == 8  # never upscales in the decoder
    for bw, bh in [(777, 555), (3001, 2999), (390, 1000)]:
        k = turbo.scale_for(bw, bh, 384, 384)
        assert bw * k / 8 >= 384 and bh * k / 8 >= 384
        assert k == 1 or min(bw, bh) * (k - 1) / 8 < 384


def test_harmless_warnings_are_ignored_but_truncation_is_not():
    data = jpeg_bytes(photo(64, 48))
    # junk before the end-of-image marker: libjpeg warns ("extraneous bytes"), the pixels are whole
    junk = data[:-2] + b"\x00\x17\x00" + data[-2:]
    assert torch.equal(decode(junk), full_decode(data))
    with pytest.raises(BadImageError, match="truncated"):
        decode(data[: len(data) // 2])


def test_other_files_fall_back_to_the_general_decoder():
    p = photo(40, 30)
    for img, fmt in [(p.convert("CMYK"), "JPEG"), (p, "PNG"), (p, "WEBP")]:
        b = io.BytesIO()
        img.save(b, fmt)
        data = b.getvalue()
        if fmt == "JPEG":
            assert turbo.read_header(data) is None  # CMYK: PIL converts it
        t = decode(data)
        assert t.shape == (3, 30, 40) and t.dtype == torch.uint8
        want = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        assert (t.int() - want.int()).abs().max() <= 2, fmt  # the pixels PIL gives, not just the shape


class _Files(torch.utils.data.Dataset):
    def __init__(self, blobs):
        self.blobs, self.tf = blobs, build_train_transform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0)

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        return self.tf(self.blobs[i])


def test_forked_workers_decode_like_the_parent():
    """Each process (and thread) gets its own decompressor: a handle made before fork is not reused."""
    blobs = [jpeg_bytes(photo(48, 48, seed=s)) for s in range(8)]
    ds = _Files(blobs)
    parent = torch.stack([ds[i] for i in range(len(ds))])  # the parent has a handle now
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    assert torch.equal(torch.cat(list(loader)), parent)


def test_library_choice(monkeypatch, caplog):
    lib_path = turbo.library_path()
    assert lib_path and os.path.exists(lib_path)
    monkeypatch.setattr(turbo, "_PATH", None)  # _load() records what it loads; put it back afterwards
    monkeypatch.setenv("VIT_FT_LIBTURBOJPEG", lib_path)
    assert turbo._load() is not None and turbo._PATH == lib_path
    # a wrong path the user set: one warning line naming it and the way out; decoding still works
    monkeypatch.setenv("VIT_FT_LIBTURBOJPEG", "/nonexistent/libturbojpeg.so")
    with caplog.at_level(logging.WARNING, logger="vit_ft.data.turbo"):
        assert turbo._load() is None
    (rec,) = [r for r in caplog.records if r.name == "vit_ft.data.turbo"]
    msg = rec.getMessage()
    assert "/nonexistent/libturbojpeg.so" in msg and "unset it" in msg and "\n" not in msg
    caplog.clear()
    monkeypatch.setenv("VIT_FT_LIBTURBOJPEG", "")  # off, silently
    with caplog.at_level(logging.WARNING, logger="vit_ft.data.turbo"):
        assert turbo._load() is None
    assert not caplog.records
