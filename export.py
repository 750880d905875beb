"""Export weights for other tools: ``python export.py weights=<run>/checkpoints/last.ckpt out=exported/my-vit``.

``weights`` is anything vit-ft reads (a vit-ft ``.ckpt``, a transformers directory or hub id, a timm
tag or file, an ``.npz``); ``format=hf`` (default) writes a transformers directory that
``ViTForImageClassification.from_pretrained(out)`` loads, ``format=timm`` one ``model.safetensors``
(timm keys; vit-ft's architecture, class names and preprocessing in its metadata). ``img_size`` /
``num_classes`` / ``backbone`` are passed to the reader as in training (``backbone`` is only needed
for a plain timm state dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from vit_ft.errors import ConfigError
from vit_ft.run import run_cli


@dataclass
class ExportConfig:
    weights: str | None = None
    out: str | None = None
    format: str = "hf"
    backbone: str | None = None
    img_size: int | None = None
    num_classes: int | None = None


ConfigStore.instance().store(name="export_cli", node=ExportConfig)


def export(cfg: DictConfig) -> Path:
    from vit_ft.models.export import save_hf_pretrained, save_timm_safetensors
    from vit_ft.models.weights import load_weights

    if not cfg.weights or not cfg.out:
        raise ConfigError(
            f"weights={cfg.weights!r} and out={cfg.out!r} are both required; "
            "e.g. python export.py weights=<run>/checkpoints/last.ckpt out=exported/my-vit"
        )
    if cfg.format not in ("hf", "timm"):
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=hf or format=timm")
    bb = load_weights(
        str(cfg.weights),
        backbone=cfg.backbone,
        img_size=cfg.img_size,
        num_classes=cfg.num_classes,
    )
    for note in bb.notes:
        print(f"weights: {note}")
    out = Path(str(cfg.out)).expanduser()
    if cfg.format == "hf":
        path = save_hf_pretrained(bb.model, bb.arch, bb.preprocessing, bb.class_names, out)
    else:
        target = out if out.suffix == ".safetensors" else out / "model.safetensors"
        path = save_timm_safetensors(
            bb.model, target, arch=bb.arch, preprocessing=bb.preprocessing, class_names=bb.class_names
        )
    print(f"exported {cfg.weights} -> {path} ({cfg.format})")
    return path


@hydra.main(version_base="1.3", config_path=None, config_name="export_cli")
def main(cfg: DictConfig) -> None:
    run_cli(export, cfg)


if __name__ == "__main__":
    main()
