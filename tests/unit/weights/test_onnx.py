"""ONNX export in process: every family vit-ft trains (tiny random models of the same timm classes),
at two image sizes, compared with PyTorch by ONNX Runtime at several batch sizes; fp16; a linear probe's
head on token features; the metadata round trip; refusals (over tolerance, foreign or corrupted file,
missing package) as one line with nothing left behind."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.helpers import SHAPE_CLASSES
from vit_ft.errors import ConfigError, RunFault
from vit_ft.models.features import FeatureHeadNet, feature_dim
from vit_ft.preprocessing import Preprocessing
from vit_ft.weights import load_weights, save_timm_safetensors
from vit_ft.weights import onnx as vonnx
from vit_ft.weights import onnx_read as vread
from vit_ft.weights.onnx_verify import RTOL

pytest.importorskip("onnxruntime")

# family -> (timm model, size A, size B); all built with TINY_KW
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", 32, 48),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", 32, 48),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", 28, 42),
    "clip": ("vit_base_patch16_clip_quickgelu_224", 32, 48),
    "siglip": ("vit_base_patch16_siglip_224", 32, 48),
    "eva02": ("eva02_tiny_patch14_224", 28, 42),
    "beit": ("beit_base_patch16_224", 32, 48),
}
TINY_KW = {"depth": 2, "embed_dim": 32, "num_heads": 2}
NAMES = ["cat", "dog", "émeu"]


def _model(name: str, size: int, num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(
        name, pretrained=False, img_size=size, num_classes=num_classes, **TINY_KW
    ).eval()
    with torch.no_grad():  # non-trivial heads, LayerScale and biases
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _x(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _pre(size: int) -> Preprocessing:
    return Preprocessing(size, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25), "bicubic", 0.9, "center")


def _write(net, path, size, **kw):
    return vonnx.write_onnx(net, path, preprocessing=_pre(size), class_names=NAMES, inputs=_x(3, size), **kw)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_every_family_exports_and_matches_pytorch(fam, tmp_path):
    """Two image sizes per family (the ONNX input size is fixed at export; position embeddings, BEiT's
    bias tables and EVA's RoPE are built for it), each checked at batch 1 and 3 by the export itself and
    here again at batch 5 (the batch axis is dynamic)."""
    name, *sizes = FAMILIES[fam]
    for size in sizes:
        net = _model(name, size)
        path, result, exporter = _write(net, tmp_path / f"{fam}-{size}.onnx", size)
        assert exporter == "torchscript" and result.ok and [r["batch"] for r in result.rows] == [1, 3]
        assert all(r["top1_agree"] == r["batch"] for r in result.rows)
        onnx_net, pre, names = vread.open_onnx(path, device="cpu")
        assert names == NAMES and pre == _pre(size)
        x = _x(5, size, seed=2)
        with torch.no_grad():
            ref = net(x)
        out = onnx_net(x)
        assert out.shape == (5, 3)
        assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{fam}-{s}.onnx" for s in sizes)


@pytest.mark.parametrize("fam", ["vit", "eva02"])
def test_fp16(fam, tmp_path):
    name, size, _ = FAMILIES[fam]
    net = _model(name, size)
    path, result, _ = _write(net, tmp_path / "m.onnx", size, dtype="fp16")
    assert result.rtol == RTOL["fp16"] and result.ok
    assert max(r["max_abs_dlogit"] / r["scale"] for r in result.rows) > 1e-6  # really half precision
    onnx_net, _, _ = vread.open_onnx(path, device="cpu")
    assert onnx_net.input_dtype == np.float16
    x = _x(4, size, seed=3)
    with torch.no_grad():
        ref = net(x)
    assert float((onnx_net(x) - ref).abs().max()) <= 1e-2 * float(ref.abs().max())
    assert next(net.parameters()).dtype == torch.float32  # the caller's network is left in fp32


@pytest.mark.parametrize("features", ["cls", "mean", "cls+mean", "last4"])
def test_probe_heads_on_token_features(features, tmp_path):
    """A linear probe's head on cls / mean / cls+mean / last4 (DINOv2's linear evaluation) exports as
    the logits the probe computes."""
    net = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=4, embed_dim=32, num_heads=2
    )
    net.reset_classifier(0)
    net.head = torch.nn.Linear(feature_dim(net, features), 3)
    net.num_classes = 3
    probe = FeatureHeadNet(net.eval(), features)
    _, result, _ = _write(probe, tmp_path / "p.onnx", 32)
    assert result.ok


def test_metadata_round_trip_and_info(tmp_path, capsys):
    from vit_ft.onnx_info import main

    net = _model("vit_tiny_patch16_224", 32)
    path, _, _ = _write(net, tmp_path / "m.onnx", 32, arch={"name": "vit_tiny_patch16_224"}, opset=18)
    meta, _ = vread.read_metadata(path)
    assert set(meta) == set(vread.META_KEYS) - {"thresholds"}
    assert meta["vit_ft_version"] and meta["dtype"] == "fp32" and meta["crop_pct"] == "0.9"
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("cat, dog, émeu", "img_size       : 32", "[0.4, 0.5, 0.6] / [0.2, 0.3, 0.25]", "bicubic"):
        assert text in out
    assert "0.9 (center)" in out and "['batch', 3, 32, 32]" in out and "top-1 3/3" in out
    import onnx

    assert onnx.load(str(path)).opset_import[0].version == 18


def test_export_task_from_other_weight_sources(hf_dir, tmp_path, capsys):
    """export.py's job on a transformers directory and a timm file (backbone=): verified on fixed random
    inputs, preprocessing and class names from the source."""
    from vit_ft.tasks.export import ExportConfig, export

    cfg = OmegaConf.merge(
        OmegaConf.structured(ExportConfig),
        {"ckpt_path": str(hf_dir), "out": str(tmp_path / "hf"), "format": "onnx"},
    )
    [path] = export(cfg)
    assert path == tmp_path / "hf" / "model.onnx"
    out = capsys.readouterr().out
    assert (
        "verify batch 1: max |dlogit|" in out and "verify batch 4" in out and "4 fixed random inputs" in out
    )
    _, pre, names = vread.open_onnx(path, device="cpu")
    assert names == SHAPE_CLASSES and pre.mean == (0.4, 0.5, 0.6) and pre.img_size == 32

    net = _model("deit_tiny_distilled_patch16_224", 32, num_classes=3)
    file = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(file))
    bb = load_weights(str(file), backbone="deit_tiny_distilled_patch16_224", timm_kwargs=TINY_KW)
    timm_file = save_timm_safetensors(
        bb.model,
        tmp_path / "timm" / "model.safetensors",
        arch=bb.arch,
        preprocessing=_pre(32),
        class_names=NAMES,
    )
    cfg = OmegaConf.merge(
        OmegaConf.structured(ExportConfig),
        {"weights": str(timm_file), "out": str(tmp_path / "deit.onnx"), "format": "onnx", "dtype": "fp16"},
    )
    [path] = export(cfg)
    assert "fp16" in capsys.readouterr().out
    onnx_net, pre, names = vread.open_onnx(path, device="cpu")
    assert names == NAMES and pre == _pre(32) and onnx_net.input_dtype == np.float16


def test_over_tolerance_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(RTOL, "fp32", 0.0)
    net = _model("vit_tiny_patch16_224", 32)
    with pytest.raises(RunFault, match=r"does not match PyTorch: max \|dlogit\| .* nothing was written"):
        _write(net, tmp_path / "m.onnx", 32)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(vonnx, "MAX_BYTES", 1000)  # over 2 GB: external data, the same rule
    with pytest.raises(RunFault, match=r"does not match PyTorch: max \|dlogit\| .* nothing was written"):
        _write(net, tmp_path / "m.onnx", 32)
    assert list(tmp_path.iterdir()) == []


def test_over_2gb_the_weights_go_to_one_external_data_file(tmp_path, monkeypatch, capsys):
    """A network over MAX_BYTES (lowered here so a tiny ViT is one): ``m.onnx`` + ``m.onnx.data``, nothing
    else left beside them, verified by ONNX Runtime from the path; the same logits and metadata as the
    one-file export, still read after the pair moves; a missing data file and a failed export are one
    line with nothing left."""
    import onnx

    for d in ("one", "big", "moved", "failed"):
        (tmp_path / d).mkdir()
    net = _model("vit_tiny_patch16_224", 32)
    one, _, _ = _write(net, tmp_path / "one" / "m.onnx", 32)
    monkeypatch.setattr(vonnx, "MAX_BYTES", 1000)
    (tmp_path / "big" / "m.onnx.data").write_bytes(b"an older export's weights")  # replaced
    path, result, exporter = _write(net, tmp_path / "big" / "m.onnx", 32)
    assert exporter == "torchscript" and result.ok and [r["batch"] for r in result.rows] == [1, 3]
    data = vread.data_file(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert vonnx.onnx_files(path) == [path, data] and vonnx.onnx_files(one) == [one]
    assert data.stat().st_size > 4 * path.stat().st_size  # the weights are in the data file
    graph = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}  # relative: the pair moves together
    meta_one, _ = vread.read_metadata(one)
    meta_big, _ = vread.read_metadata(path)
    assert meta_big == meta_one  # the same verification on the same inputs, the same preprocessing
    moved = tmp_path / "moved"
    for f in (path, data):
        f.rename(moved / f.name)
    x = _x(5, 32, seed=2)
    ref, _, _ = vread.open_onnx(one, device="cpu")
    big, pre, names = vread.open_onnx(moved / "m.onnx", device="cpu")
    assert names == NAMES and pre == _pre(32)
    torch.testing.assert_close(big(x), ref(x), rtol=0, atol=0)
    from vit_ft.onnx_info import main

    assert main([str(moved / "m.onnx")]) == 0 and "top-1 3/3" in capsys.readouterr().out
    (moved / "m.onnx.data").unlink()
    with pytest.raises(ConfigError, match=r"keeps its weights in .*m\.onnx\.data, which is missing") as e:
        vread.open_onnx(moved / "m.onnx")
    assert "\n" not in str(e.value)
    assert main([str(moved / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.onnx.data, which is missing" in err[0]
    monkeypatch.setitem(RTOL, "fp32", 0.0)  # a failed export: nothing at the target, nothing beside it
    with pytest.raises(RunFault, match="does not match PyTorch"):
        _write(net, tmp_path / "failed" / "m.onnx", 32)
    assert list((tmp_path / "failed").iterdir()) == []


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning"
)  # the plain torch.onnx.export of a foreign file
def test_foreign_and_corrupted_files_are_one_line(tmp_path):
    net = _model("vit_tiny_patch16_224", 32)
    good, _, _ = _write(net, tmp_path / "good.onnx", 32)
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(vonnx._Forward(net), (_x(1, 32),), str(foreign), dynamo=False, input_names=["x"])
    with pytest.raises(ConfigError, match="holds no vit-ft metadata") as e:
        vread.open_onnx(foreign)
    assert "\n" not in str(e.value)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for bad in (broken, tmp_path / "text.onnx"):
        if bad.name == "text.onnx":
            bad.write_text("not a model")
        with pytest.raises(ConfigError, match="is not a readable ONNX model") as e:
            vread.open_onnx(bad)
        assert "\n" not in str(e.value)


def test_missing_package_names_the_extra(monkeypatch):
    real = builtins.__import__

    def no_ort(name, *a, **kw):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(
        ConfigError, match=r'onnxruntime package, which is not installed; run pip install -e "\.\[onnx\]"'
    ):
        vread.require("onnx", "onnxruntime")


def test_verification_inputs_come_from_the_runs_val_folder(image_folder, tmp_path):
    """A checkpoint in ``<run>/checkpoints/`` whose run config names an image folder: 8 of its val
    images, normalised with the weights' preprocessing; anywhere else: 4 fixed random inputs."""
    from vit_ft.tasks.export import verification_inputs

    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    (tmp_path / "run" / "config_resolved.yaml").write_text(f"data:\n  root: {image_folder}\n")
    x, where = verification_inputs(str(ckpt), _pre(32))
    assert x.shape == (8, 3, 32, 32) and where == f"8 images of {image_folder / 'val'}"
    assert float(x.min()) < -1.5 and float(x.max()) > 1.5  # (x/255 - mean) / std with std 0.2..0.3
    (tmp_path / "run" / "config_resolved.yaml").write_text("data:\n  name: some/hf-dataset\n")
    x, where = verification_inputs(str(ckpt), _pre(32))
    assert x.shape == (4, 3, 32, 32) and where == "4 fixed random inputs"
    assert torch.equal(x, verification_inputs(str(tmp_path / "elsewhere.ckpt"), _pre(32))[0])
