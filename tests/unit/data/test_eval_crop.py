"""Evaluation preprocessing follows the checkpoint (issue 13): timm's resize + centre crop by
``crop_pct``, its interpolation and mean/std, compared with timm's own
``create_transform(**resolve_data_config({}, model=m))`` on images of several shapes.

Two claims, tested separately:
* the geometry (resized size, crop box) is timm's to the pixel: our :func:`eval_geometry` with PIL's
  resize gives tensors ``torch.equal`` to timm's;
* the project's eval dataset (decode, torch's SIMD uint8 antialiased resize, crop) differs from timm's
  PIL resize only by the two kernels' fixed-point rounding: at most 2 levels, 0.1 on average.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from tests.helpers import jpeg_bytes, photo
from vit_ft.data import ImageFolderDataModule
from vit_ft.data.device_decode import PlannedBatch
from vit_ft.data.transforms import PlanOnly, build_eval_transform, eval_geometry, parse_eval_crop
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing, preprocessing_from_timm

SIZE = 32
SHAPES = [(50, 40), (37, 90), (64, 64), (20, 30), (333, 251), (41, 41)]  # (w, h): landscape, portrait, up
MODELS = {  # timm architectures with the pretrained configs of their families (tiny, random, no download)
    "deit": ("deit_tiny_patch16_224", {"crop_pct": 0.875, "interpolation": "bicubic"}),
    "dinov2": ("vit_small_patch14_dinov2", {}),  # crop_pct 1.0, bicubic, ImageNet mean/std
    "clip_squash": ("vit_base_patch16_clip_224.openai", {"crop_mode": "squash", "crop_pct": 0.95}),
    "vit_bilinear": ("vit_tiny_patch16_224", {"interpolation": "bilinear"}),  # crop_pct 0.9
}


def _model(name: str, overlay: dict):
    cfg = {"input_size": (3, SIZE, SIZE), **overlay}
    return timm.create_model(
        name, img_size=SIZE, patch_size=8, embed_dim=32, depth=1, num_heads=2, pretrained_cfg_overlay=cfg
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i, (w, h) in enumerate(SHAPES):
                small = rng.integers(0, 256, (h // 3 + 1, w // 3 + 1, 3), dtype=np.uint8)
                Image.fromarray(small).resize((w, h), Image.BILINEAR).save(d / f"{i}.png")
    return root


def _timm_reference(model, path) -> torch.Tensor:
    tf = create_transform(**resolve_data_config({}, model=model), use_prefetcher=True)  # uint8, no normalise
    return torch.as_tensor(np.asarray(tf(Image.open(path).convert("RGB"))))


@pytest.mark.parametrize("family", sorted(MODELS))
def test_eval_tensors_match_timm_create_transform(folder, family):
    model = _model(*MODELS[family])
    cfg = resolve_data_config({}, model=model)
    pre = preprocessing_from_timm(model, SIZE)
    assert (pre.crop_pct, pre.crop_mode, pre.interpolation) == (
        cfg["crop_pct"],
        cfg["crop_mode"],
        cfg["interpolation"],
    )
    assert (pre.mean, pre.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    dm = ImageFolderDataModule(root=str(folder), batch_size=5, num_workers=0, persistent_workers=False)
    dm.setup()
    dm.configure_preprocessing(pre)
    ours = {}
    for idx, x, _ in dm.indexed_loader("val"):
        ours.update(zip(idx.tolist(), x))
    records = dm.splits["val"]
    filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[pre.interpolation]
    for i in range(len(records)):
        path = records.index.path(i)
        ref = _timm_reference(model, path)
        # 1. the geometry is timm's exactly: our resize size and crop box, PIL's filter
        img = Image.open(path).convert("RGB")
        rh, rw, top, left = eval_geometry(*img.size, SIZE, pre.crop_pct, pre.crop_mode)
        box = (left, top, left + SIZE, top + SIZE)
        same = torch.as_tensor(np.asarray(img.resize((rw, rh), filt).crop(box))).permute(2, 0, 1)
        assert torch.equal(same, ref), (family, img.size)
        # 2. the project's eval dataset: torch's uint8 resize rounds a little differently from PIL's
        d = (ours[i].int() - ref.int()).abs()
        assert ours[i].shape == ref.shape == (3, SIZE, SIZE)
        assert d.max() <= 2 and d.float().mean() < 0.3, (family, img.size, int(d.max()))


def test_none_and_fraction_override_the_weights_and_the_seed_keeps_its_plain_resize(folder):
    path = str(next((folder / "val" / "a").glob("1.png")))  # 37x90 portrait
    base = dict(root=str(folder), batch_size=4, num_workers=0, persistent_workers=False)
    plain = build_eval_transform(SIZE, interpolation="bicubic")(path)
    half = build_eval_transform(SIZE, interpolation="bicubic", crop_pct=0.5)(path)
    assert not torch.equal(half, plain)
    for crop, want in (("none", plain), (None, plain), (0.5, half), ("0.5", half)):
        dm = ImageFolderDataModule(eval_crop=crop, **base)
        weights = Preprocessing(SIZE, interpolation="bicubic", crop_pct=0.875)  # the weights say 0.875
        dm.configure_preprocessing(weights)
        assert torch.equal(dm.transform(False)(path), want), crop
    # the seed's transformers directory states no crop: auto = the paper's plain resize
    seed = Preprocessing(SIZE, (0.5,) * 3, (0.5,) * 3, "bilinear")
    assert Preprocessing.from_dict(seed.to_dict()) == seed and seed.crop_pct is None
    dm = ImageFolderDataModule(**base)
    dm.configure_preprocessing(seed)
    assert repr(dm.transform(False)) == "DecodeResize(size=(32, 32), interpolation=bilinear)"
    assert torch.equal(dm.transform(False)(path), build_eval_transform(SIZE)(path))
    # an old checkpoint's preprocessing (no crop keys) reads as no crop
    assert Preprocessing.from_dict({"img_size": 8, "mean": [0] * 3, "std": [1] * 3}).crop_pct is None


@pytest.mark.parametrize("value", ["full", 0, 1.5, True, "-0.2"])
def test_bad_eval_crop_is_one_line(value):
    with pytest.raises(ConfigError) as e:
        ImageFolderDataModule(root="x", eval_crop=value)
    msg = str(e.value)
    assert msg.startswith(f"data.eval_crop={value!r} must be auto") and "\n" not in msg
    assert parse_eval_crop("auto") == "auto" and parse_eval_crop("0.9") == 0.9 and parse_eval_crop(1) == 1.0


def test_device_decode_path_crops_like_the_cpu_path(tmp_path):
    """decode_device=cuda's plan + finish (run on the CPU here) == the CPU eval transform, crop included."""
    src = io.BytesIO(jpeg_bytes(photo(40, 70, seed=3))).getvalue()  # short side < 8/7 x 36: no DCT scaling
    tf = build_eval_transform(SIZE, interpolation="bicubic", crop_pct=0.875)
    planned = PlanOnly(tf)(src)
    assert planned.crop == eval_geometry(40, 70, SIZE, 0.875) == (63, 36, 16, 2)
    dm = ImageFolderDataModule(root=str(tmp_path), batch_size=2, num_workers=0, persistent_workers=False)
    x, _ = dm.decode_planned(PlannedBatch([(planned, 0)], "val", (SIZE, SIZE)))
    assert torch.equal(x[0], tf(src))
