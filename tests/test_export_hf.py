"""Export round trips: transformers directory -> ``from_pretrained``, timm safetensors -> ``load_weights``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from tests.conftest import quiet_trainer
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


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())), (a - b).abs().max()


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
    _close(_hf_logits(out), ours)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_norm_eps"] == 1e-6 and cfg["id2label"]["2"] == "cherry" and cfg["label2id"]["date"] == 3
    proc = transformers.ViTImageProcessor.from_pretrained(out)
    assert proc.size == {"height": 32, "width": 32} and list(proc.image_mean) == [0.485, 0.456, 0.406]
    assert int(proc.resample) == 3
    # ... and back: the exported directory is itself a weight source
    bb = load_weights(str(out))
    _close(bb.model(_x()), ours, rtol=1e-6)
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
        _close(_hf_logits(out, 64), bb.model(_x(64)))
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
        _close(bb.model(_x()), model(_x()), rtol=1e-6)
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


def _vit_ft_checkpoint(path: Path, names: list[str]) -> Path:
    """A real vit-ft checkpoint: a tiny ViTClassifier trained one step, saved by Lightning."""
    from torch.utils.data import DataLoader, TensorDataset

    from vit_ft.models.classifier import ViTClassifier

    model = ViTClassifier(
        backbone="vit_tiny_patch16_224",
        weights=None,
        img_size=32,
        num_classes=len(names),
        class_names=names,
        timm_kwargs={"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2},
        preprocessing_override={"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25], "interpolation": "bicubic"},
        optimizer={"name": "adamw", "lr": 0.05},
        scheduler={"warmup_steps": 0, "decay": "cosine"},
    )
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(4) % len(names)
    )
    trainer = quiet_trainer(max_steps=2)
    trainer.fit(model, DataLoader(data, batch_size=2))
    trainer.save_checkpoint(path)
    return path


def _load_export_cli():
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("export_cli_entry", root / "export.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_export_cli_from_a_vit_ft_checkpoint(tmp_path):
    """ckpt_path= of a trained vit-ft .ckpt -> transformers dir (same logits) + timm safetensors."""
    from vit_ft.models.classifier import load_classifier

    names = ["wren", "xerus", "yak", "zebu"]
    ckpt = _vit_ft_checkpoint(tmp_path / "last.ckpt", names)
    ours = load_classifier(str(ckpt)).eval()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, str(root / "export.py"), f"ckpt_path={ckpt}", f"out={out}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "last.ckpt"]  # no Hydra folder
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "timm_model.safetensors",
    ]
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    mean, std = (
        torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1),
        torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1),
    )
    hf = transformers.ViTForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = ours(x)
        assert expected.std() > 0.01  # a trained head, not the zero one
        _close(hf(pixel_values=(x.float() / 255 - mean) / std).logits, expected)
    assert hf.config.id2label == dict(enumerate(names)) and hf.config.label2id["yak"] == 2
    proc_cfg = transformers.ViTImageProcessor.from_pretrained(out)
    assert proc_cfg.size == {"height": 32, "width": 32} and int(proc_cfg.resample) == 3
    assert [round(v, 6) for v in proc_cfg.image_std] == [0.2, 0.3, 0.25]
    # the timm file: vit-ft reads it without being told the architecture, timm reads it as weights
    bb = load_weights(str(out / "timm_model.safetensors"))
    assert bb.class_names == names and bb.preprocessing == ours.preprocessing
    with torch.no_grad():
        _close(bb.model.eval()((x.float() / 255 - mean) / std), expected, rtol=1e-6)
    again = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(out / "timm_model.safetensors"), "num_classes": 4},
        num_classes=4,
        img_size=32,
        patch_size=8,
        depth=1,
        embed_dim=32,
        num_heads=2,
    )
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), bb.model.state_dict().values()))


def test_export_cli_bad_input(tmp_path, capsys):
    from omegaconf import OmegaConf

    from vit_ft.tasks.cli import run_cli

    entry = _load_export_cli()

    def error(**kw) -> str:
        cfg = OmegaConf.merge(OmegaConf.structured(entry.ExportConfig), kw)
        with pytest.raises(SystemExit) as e:
            run_cli(entry.export, cfg)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        return err[0]

    assert error(weights="./missing.ckpt", out="x").startswith(
        "error: weights file './missing.ckpt' does not exist"
    )
    assert error(ckpt_path="./missing.ckpt", out="x").startswith(
        "error: weights file './missing.ckpt' does not"
    )
    assert "are both required" in error(out="x")
    assert "name different sources" in error(ckpt_path="a.ckpt", weights="b.ckpt", out="x")
    assert "format='onnx'" in error(ckpt_path="a.ckpt", out="x", format="onnx")
