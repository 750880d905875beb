"""Export round trips: transformers directory -> ``from_pretrained``, timm safetensors -> ``load_weights``.

export.py itself: tests/unit/tasks/test_export.py (bad input) and tests/cli/test_export_cli.py."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from tests.helpers import assert_close_rel
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing
from vit_ft.weights import load_weights, save_hf_pretrained, save_timm_safetensors

transformers = pytest.importorskip("transformers")

TIMM_KW = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def _x(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _model(**kw) -> torch.nn.Module:
    model = timm.create_model("vit_base_patch32_384", num_classes=4, **{**TIMM_KW, **kw})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _hf_logits(path, size: int = 32) -> torch.Tensor:
    hf = transformers.ViTForImageClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(pixel_values=_x(size)).logits


def test_timm_model_to_transformers(tmp_path):
    model = _model()
    names = ["apple", "banana", "cherry", "date"]
    prep = Preprocessing(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    arch = {"name": "vit_base_patch32_384", "kwargs": {**TIMM_KW, "num_classes": 4}, "layer_norm_eps": None}
    out = save_hf_pretrained(model, arch, prep, names, tmp_path / "export")
    with torch.no_grad():
        ours = model(_x())
    assert_close_rel(_hf_logits(out), ours)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["id2label"]["2"] == "cherry" and cfg["label2id"]["date"] == 3
    proc = transformers.ViTImageProcessor.from_pretrained(out)
    assert proc.size == {"height": 32, "width": 32} and list(proc.image_mean) == [0.485, 0.456, 0.406]
    assert int(proc.resample) == 3
    # ... and back: the exported directory is itself a weight source
    bb = load_weights(str(out))
    assert_close_rel(bb.model(_x()), ours, rtol=1e-6)
    assert bb.class_names == names and bb.preprocessing == prep and bb.arch["layer_norm_eps"] == 1e-6


def test_transformers_checkpoint_round_trip(tmp_path):
    cfg = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        image_size=32,
        patch_size=8,
        num_labels=2,
        qkv_bias=False,
    )
    src = transformers.ViTForImageClassification(cfg).eval()
    src.save_pretrained(tmp_path / "src")
    bb = load_weights(str(tmp_path / "src"), img_size=64)  # fine-tune resolution
    assert bb.class_names is None  # transformers' LABEL_i placeholders are no class names
    out = save_hf_pretrained(bb.model, bb.arch, bb.preprocessing, bb.class_names, tmp_path / "out")
    with torch.no_grad():
        assert_close_rel(_hf_logits(out, 64), bb.model(_x(64)))
    saved = json.loads((out / "config.json").read_text())
    assert saved["image_size"] == 64 and saved["qkv_bias"] is False and saved["layer_norm_eps"] == 1e-12


def test_timm_safetensors_carries_its_arch(tmp_path):
    model = _model()
    arch = {"name": "vit_base_patch32_384", "kwargs": {**TIMM_KW, "num_classes": 4}, "layer_norm_eps": None}
    prep = Preprocessing(32, (0.1, 0.2, 0.3), (0.3, 0.2, 0.1), "bilinear")
    path = save_timm_safetensors(
        model, tmp_path / "w" / "model.safetensors", arch=arch, preprocessing=prep, class_names=list("abcd")
    )
    bb = load_weights(str(path))  # no backbone needed: the file states it
    with torch.no_grad():
        assert_close_rel(bb.model(_x()), model(_x()), rtol=1e-6)
    assert bb.arch == arch and bb.class_names == list("abcd") and bb.preprocessing == prep
    # a plain one (no metadata) is read by timm itself
    plain = save_timm_safetensors(model, tmp_path / "plain.safetensors")
    again = timm.create_model(
        "vit_base_patch32_384",
        pretrained=True,
        num_classes=4,
        pretrained_cfg_overlay={"file": str(plain), "num_classes": 4},
        **TIMM_KW,
    )
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_export_refuses_what_transformers_cannot_express(tmp_path):
    model = _model(reg_tokens=2, global_pool="avg", fc_norm=False)
    with pytest.raises(
        ConfigError, match="cannot be written as a transformers ViT.*register tokens.*timm safetensors"
    ):
        save_hf_pretrained(model, None, Preprocessing(32), None, tmp_path / "x")
    with pytest.raises(ConfigError, match="3 class names for a 4-class head"):
        save_hf_pretrained(_model(), None, Preprocessing(32), ["a", "b", "c"], tmp_path / "y")
