"""Decoding: every unusual-but-valid image loads as RGB; every unusable file is one named error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.helpers import bad_images, exif_rotated_jpeg, jpeg_bytes, photo, unusual_images, write
from vit_ft.data import turbo
from vit_ft.data.decode import BadImageError, check_image, decode, load_image
from vit_ft.data.transforms import build_eval_transform, build_train_transform


@pytest.fixture(params=["turbo", "torchvision"])
def decoder(request, monkeypatch):
    """Run a test with libjpeg-turbo's region decoding and again with the fallback path without it."""
    if request.param == "turbo":
        assert turbo.available(), "the turbojpeg wheel (a dependency) should provide libturbojpeg 3"
    else:
        monkeypatch.setattr(turbo, "_LIB", None)
        monkeypatch.setattr(turbo, "_LOADED", True)
    return request.param


@pytest.fixture(scope="module")
def unusual(tmp_path_factory):
    return write(str(tmp_path_factory.mktemp("unusual")), unusual_images())


def test_unusual_images_load_as_rgb(unusual, decoder):
    train, ev = build_train_transform(32, auto_augment=None), build_eval_transform(32)
    for path in unusual:
        img = load_image(path)
        assert img.mode == "RGB", path
        t = decode(path)
        assert t.dtype == torch.uint8 and t.shape[0] == 3 and t.shape[1:] == (img.height, img.width), path
        for tf in (train, ev):
            out = tf(path)
            assert out.shape == (3, 32, 32) and out.dtype == torch.uint8, path
        with open(path, "rb") as f:  # bytes (as from a Hugging Face data set) take the same path
            assert ev(f.read()).shape == (3, 32, 32)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (200, 10, 10, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    rgba.save(tmp_path / "a.png")
    t = decode(str(tmp_path / "a.png"))
    assert t[:, 0, 0].tolist() == [255, 255, 255]
    assert t[:, 1, 1].tolist() == [200, 10, 10]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 65535, np.uint16)
    arr[0, 0] = 0
    Image.fromarray(arr).save(tmp_path / "s.png")
    t = decode(str(tmp_path / "s.png"))
    assert t[:, 1, 1].tolist() == [255, 255, 255] and t[:, 0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation, decoder):
    data = exif_rotated_jpeg(orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = decode(data).permute(1, 2, 0).numpy()
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2
    # a crop box is taken in the oriented image, whatever the stored pixels' orientation
    box = (5, 3, 31, 20)
    crop = decode(data, plan=lambda w, h: box).permute(1, 2, 0).numpy()
    want = expected[box[1] : box[3], box[0] : box[2]]
    assert crop.shape == want.shape
    assert np.abs(crop.astype(int) - want.astype(int)).mean() < 1.5


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_files_raise_one_named_error(tmp_path, name, decoder):
    (path,) = write(str(tmp_path), {name: bad_images()[name]})
    for fn in (load_image, decode, build_train_transform(32), build_eval_transform(32)):
        with pytest.raises(BadImageError) as e:
            fn(path)
        assert e.value.path == path and e.value.reason and "\n" not in str(e.value)
    assert check_image(path)
    if name == "empty.jpg":
        assert e.value.reason == "empty file"
    if name == "truncated.jpg":
        assert "truncated" in e.value.reason


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_decompression_bomb(tmp_path, monkeypatch, ext, decoder):
    photo(200, 200).save(tmp_path / f"big.{ext}")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for fn in (decode, build_train_transform(32), build_eval_transform(32)):
        with pytest.raises(BadImageError, match="decompression bomb"):
            fn(str(tmp_path / f"big.{ext}"))


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="not found"):
        decode(str(tmp_path / "nope.jpg"))


def test_large_jpeg_decodes_at_reduced_scale(tmp_path, decoder):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(photo(1600, 1200)))
    t = decode(str(path), out_size=(64, 64))
    assert t.shape == (3, 150, 200)  # 1/8 scale: still >= 64 on both sides
    t = decode(str(path), out_size=(384, 384))
    # libjpeg-turbo scales by any k/8: 3/8 (450 >= 384); PIL's draft only by 1/2, 1/4, 1/8: 1/2
    assert t.shape == ((3, 450, 600) if decoder == "turbo" else (3, 600, 800))
    # a crop box: the region comes back at the reduced scale, never smaller than the output
    t = decode(str(path), out_size=(64, 64), plan=lambda w, h: (0, 0, w // 2, h // 2))
    assert min(t.shape[1:]) >= 64 and t.shape[1:] == (75, 100)
    t = decode(str(path), out_size=(100, 100), plan=lambda w, h: (400, 300, 1000, 800))
    assert t.shape[1:] == (125, 150)  # the 600x500 box at 1/4
    assert build_eval_transform(64)(str(path)).shape == (3, 64, 64)


def test_eval_transform_matches_a_plain_resize(tmp_path):
    img = photo(120, 90)
    img.save(tmp_path / "p.png")
    got = build_eval_transform(64)(str(tmp_path / "p.png")).float()
    ref = torch.from_numpy(np.asarray(img.resize((64, 64), Image.BILINEAR))).permute(2, 0, 1).float()
    assert (got - ref).abs().mean() < 3


def test_train_transform_randaugment_and_flip(tmp_path):
    (tmp_path / "p.jpg").write_bytes(jpeg_bytes(photo(80, 60)))
    tf = build_train_transform(32, auto_augment="rand-m9-mstd0.5", interpolation="random")
    outs = {tuple(tf(str(tmp_path / "p.jpg")).flatten()[:50].tolist()) for _ in range(5)}
    assert len(outs) > 1
    tf = build_train_transform(32, scale=(1.0, 1.0), ratio=(80 / 60, 80 / 60), hflip=1.0)
    flipped = tf(str(tmp_path / "p.jpg"))
    plain = build_eval_transform(32)(str(tmp_path / "p.jpg"))
    assert (flipped.flip(-1).float() - plain.float()).abs().mean() < 2
