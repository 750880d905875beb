"""export.py through the real CLI: a trained vit-ft checkpoint -> a transformers directory and a timm file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from tests.helpers import ROOT, assert_close_rel, quiet_trainer
from vit_ft.weights import load_weights

transformers = pytest.importorskip("transformers")


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


def test_export_cli_from_a_vit_ft_checkpoint(tmp_path):
    """ckpt_path= of a trained vit-ft .ckpt -> transformers dir (same logits) + timm safetensors."""
    from vit_ft.models.load_checkpoint import load_classifier

    names = ["wren", "xerus", "yak", "zebu"]
    ckpt = _vit_ft_checkpoint(tmp_path / "last.ckpt", names)
    ours = load_classifier(str(ckpt)).eval()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "export.py"), f"ckpt_path={ckpt}", f"out={out}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "last.ckpt"]  # no Hydra folder
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",  # the model card (card=true by default; tests/cli/test_card_cli.py)
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
        assert_close_rel(hf(pixel_values=(x.float() / 255 - mean) / std).logits, expected)
    assert hf.config.id2label == dict(enumerate(names)) and hf.config.label2id["yak"] == 2
    proc_cfg = transformers.ViTImageProcessor.from_pretrained(out)
    assert proc_cfg.size == {"height": 32, "width": 32} and int(proc_cfg.resample) == 3
    assert [round(v, 6) for v in proc_cfg.image_std] == [0.2, 0.3, 0.25]
    # the timm file: vit-ft reads it without being told the architecture, timm reads it as weights
    bb = load_weights(str(out / "timm_model.safetensors"))
    assert bb.class_names == names and bb.preprocessing == ours.preprocessing
    with torch.no_grad():
        assert_close_rel(bb.model.eval()((x.float() / 255 - mean) / std), expected, rtol=1e-6)
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
