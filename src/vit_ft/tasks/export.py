"""Export weights for other tools: ``python export.py ckpt_path=<run>/checkpoints/last.ckpt out=exported/my-vit``.

``ckpt_path`` (or its alias ``weights``) is anything vit-ft reads (a vit-ft ``.ckpt``, a transformers
directory or hub id, a timm tag or file, an ``.npz``). ``format=both`` (default) writes into ``out``
a transformers directory (``config.json`` with ``id2label``/``label2id``, ``model.safetensors``,
``preprocessor_config.json``) that ``ViTForImageClassification.from_pretrained(out)`` loads, plus
``out/timm_model.safetensors`` (timm keys; vit-ft's architecture, class names and preprocessing in its
metadata; timm reads it with ``pretrained_cfg_overlay=dict(file=...)``). ``format=hf`` writes the
transformers directory only, ``format=timm`` only ``out/model.safetensors`` (or ``out`` itself when it
ends in ``.safetensors``). ``img_size`` / ``num_classes`` / ``backbone`` are passed to the reader as in
training (``backbone`` is only needed for a plain timm state dict). Nothing but ``out`` is written (no
Hydra output folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from vit_ft.errors import ConfigError
from vit_ft.progress import heartbeat
from vit_ft.settings_ranges import check_ranges
from vit_ft.tasks.cli import NoRunDirConfig
from vit_ft.tasks.publish import HubConfig, check_publish, finish_export
from vit_ft.tasks.resume import refuse_live_run
from vit_ft.weights import hf_export, load_weights, save_hf_pretrained, save_timm_safetensors
from vit_ft.weights.io import check_weights_source
from vit_ft.weights.writers import check_plain_head


@dataclass
class ExportConfig(NoRunDirConfig):
    ckpt_path: str | None = None
    weights: str | None = None  # alias of ckpt_path
    out: str | None = None
    format: str = "both"
    backbone: str | None = None
    img_size: int | None = None
    num_classes: int | None = None
    card: bool = True  # README.md (model card) beside the export: vit_ft.publish.card
    license: str | None = None  # the card's license (a Hub license id: apache-2.0, mit, ...)
    push_to_hub: str | None = None  # org/name: upload the export (and its card) to the Hub
    hub: HubConfig = field(default_factory=HubConfig)  # hub.private, hub.revision


TIMM_FILE = "timm_model.safetensors"  # beside the transformers files with format=both


def export(cfg: DictConfig) -> list[Path]:
    check_ranges(cfg)
    ckpt, weights = cfg.get("ckpt_path"), cfg.get("weights")
    if ckpt and weights and str(ckpt) != str(weights):
        raise ConfigError(
            f"ckpt_path={ckpt!r} and weights={weights!r} name different sources; pass one of them"
        )
    source = ckpt or weights
    if not source or not cfg.out:
        raise ConfigError(
            f"ckpt_path={source!r} and out={cfg.out!r} are both required; "
            "e.g. python export.py ckpt_path=<run>/checkpoints/last.ckpt out=exported/my-vit"
        )
    refuse_live_run(str(cfg.out), "out")
    if cfg.format not in ("both", "hf", "timm"):
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=both, hf or timm")
    check_weights_source(str(source), "ckpt_path" if ckpt else "weights")
    check_publish(cfg)  # card and Hub options: refuse before reading or writing anything
    with heartbeat(f"export: reading {source}"):
        bb = load_weights(
            str(source),
            backbone=cfg.backbone,
            img_size=cfg.img_size,
            num_classes=cfg.num_classes,
            purpose="export",  # a vit-ft checkpoint's EMA weights unless model.ema.use_for=none
        )
    for note in bb.notes:
        print(f"weights: {note}")
    out = Path(str(cfg.out)).expanduser()
    if cfg.format in ("both", "hf") and out.suffix == ".safetensors":
        raise ConfigError(
            f"out={cfg.out!r} is a file name but format={cfg.format} writes a directory; "
            "pass a directory, or format=timm for a single .safetensors file"
        )
    check_plain_head(
        bb.arch, f"{'ckpt_path' if ckpt else 'weights'}={str(source)!r}"
    )  # refuse before writing anything
    hf_class = None
    if cfg.format in ("both", "hf"):  # refuse before writing anything
        hf_class = hf_export(bb.model, bb.class_names)[0]["architectures"][0]
    paths = []
    with heartbeat(f"export: writing {out}"):
        if cfg.format in ("both", "hf"):
            paths.append(save_hf_pretrained(bb.model, bb.arch, bb.preprocessing, bb.class_names, out))
        if cfg.format in ("both", "timm"):
            if cfg.format == "both":
                target = out / TIMM_FILE
            else:
                target = out if out.suffix == ".safetensors" else out / "model.safetensors"
            paths.append(
                save_timm_safetensors(
                    bb.model, target, arch=bb.arch, preprocessing=bb.preprocessing, class_names=bb.class_names
                )
            )
    if cfg.format in ("both", "hf"):
        print(f"exported {source} -> {paths[0]} (transformers: {hf_class}.from_pretrained)")
    if cfg.format in ("both", "timm"):
        print(f"exported {source} -> {paths[-1]} (timm safetensors)")
    finish_export(cfg, out, str(source), bb, paths)  # the model card, the Hub push
    return paths
