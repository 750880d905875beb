"""Export weights for other tools: ``python export.py ckpt_path=<run>/checkpoints/last.ckpt out=exported/my-vit``.

``ckpt_path`` (or its alias ``weights``) is anything vit-ft reads (a vit-ft ``.ckpt``, a transformers
directory or hub id, a timm tag or file, an ``.npz``). ``format=both`` (default) writes into ``out``
a transformers directory (``config.json`` with ``id2label``/``label2id``, ``model.safetensors``,
``preprocessor_config.json``) that ``ViTForImageClassification.from_pretrained(out)`` loads, plus
``out/timm_model.safetensors`` (timm keys; vit-ft's architecture, class names and preprocessing in its
metadata; timm reads it with ``pretrained_cfg_overlay=dict(file=...)``). ``format=hf`` writes the
transformers directory only, ``format=timm`` only ``out/model.safetensors`` (or ``out`` itself when it
ends in ``.safetensors``). ``format=onnx`` writes ``out`` when it ends in ``.onnx``, else
``out/model.onnx``: an ONNX file (``dtype=fp32`` or ``fp16``, ``opset=17`` or 18, dynamic batch axis)
verified by ONNX Runtime against the PyTorch network before it is kept, on images of the run's
validation set when the checkpoint sits in a run folder that names one, else on fixed random inputs,
with the preprocessing and class names in its metadata (:mod:`vit_ft.weights.onnx`; a network over
2 GB also gets ``model.onnx.data`` beside it, its weights as ONNX external data); a linear probe's
head on token features (``cls``, ``mean``, ``cls+mean``, ``last4``) exports too. ``img_size`` / ``num_classes`` / ``backbone`` are passed to the reader as in
training (``backbone`` is only needed for a plain timm state dict). Nothing but ``out`` is written (no
Hydra output folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from vit_ft.checkpoint_format import MULTILABEL_ATTR
from vit_ft.data.decode import BadImageError
from vit_ft.data.folder import find_images
from vit_ft.data.transforms import build_eval_transform
from vit_ft.errors import ConfigError
from vit_ft.labels import head_labels
from vit_ft.models.features import FeatureHeadNet, head_features
from vit_ft.preprocessing import Normalize, Preprocessing
from vit_ft.progress import heartbeat
from vit_ft.report.files import load_config
from vit_ft.settings_ranges import check_ranges
from vit_ft.tasks.cli import NoRunDirConfig
from vit_ft.tasks.publish import HubConfig, check_publish, finish_export
from vit_ft.tasks.run_lock import refuse_live_run
from vit_ft.weights import hf_export, load_weights, save_hf_pretrained, save_timm_safetensors
from vit_ft.weights.assemble import Backbone
from vit_ft.weights.io import check_weights_source
from vit_ft.weights.onnx import onnx_files, write_onnx
from vit_ft.weights.onnx_read import data_file, require
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
    dtype: str = "fp32"  # format=onnx: fp32 or fp16
    opset: int = 17  # format=onnx: 17 or 18
    card: bool = True  # README.md (model card) beside the export: vit_ft.publish.card
    license: str | None = None  # the card's license (a Hub license id: apache-2.0, mit, ...)
    push_to_hub: str | None = None  # org/name: upload the export (and its card) to the Hub
    hub: HubConfig = field(default_factory=HubConfig)  # hub.private, hub.revision


TIMM_FILE = "timm_model.safetensors"  # beside the transformers files with format=both
FORMATS = ("both", "hf", "timm", "onnx")
ONNX_FILE = "model.onnx"  # in out with format=onnx, unless out ends in .onnx
VERIFY_IMAGES = 8  # validation images the ONNX file is checked on


def verification_inputs(source: str, pre: Preprocessing) -> tuple[torch.Tensor, str]:
    """Normalised images to check an export on: up to :data:`VERIFY_IMAGES` of the run's validation
    set when ``source`` is ``<run>/checkpoints/*.ckpt`` and the run's config names an image folder,
    else 4 fixed random inputs (at least 2 either way, for the batch > 1 check)."""
    images: list[str] = []
    path = Path(source).expanduser()
    if path.is_file() and path.parent.name == "checkpoints":
        cfg, _ = load_config(path.parent.parent)  # config_resolved.yaml or .hydra/config.yaml
        data = (cfg or {}).get("data")
        root = data.get("root") if isinstance(data, dict) else None  # an image folder, ImageNet
        for split in ("val", "validation", "valid") if isinstance(root, str) else ():
            folder = Path(root).expanduser() / split
            if folder.is_dir():
                try:
                    images = find_images(str(folder))
                except ConfigError:
                    images = []
                break
    if images:
        step = max(1, len(images) // VERIFY_IMAGES)
        picked = images[::step][:VERIFY_IMAGES]
        transform = build_eval_transform(
            int(pre.img_size),
            interpolation=str(pre.interpolation),
            crop_pct=pre.crop_pct,
            crop_mode=pre.crop_mode,
        )
        batch = []
        for p in picked:
            try:
                batch.append(transform(p))
            except BadImageError:
                continue
        if len(batch) >= 2:
            x = Normalize(pre)(torch.stack(batch))
            return x, f"{len(batch)} images of {Path(picked[0]).parent.parent}"
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, pre.img_size, pre.img_size, generator=g), "4 fixed random inputs"


def export_onnx(bb: Backbone, out: Path, source: str, *, dtype: str, opset: int) -> Path:
    """``bb`` as a verified ONNX file at ``out`` (or ``out/model.onnx``); prints what the check saw."""
    target = out if out.suffix == ".onnx" else out / ONNX_FILE
    labels, note = head_labels(bb.num_classes, bb.class_names)
    if bb.num_classes < 1:
        raise ConfigError(f"ckpt_path={source!r} has no classification head; export a fine-tuned model")
    if note:
        print(f"weights: {note}")
    features = head_features(bb.arch)  # a linear probe's head on token features
    net = FeatureHeadNet(bb.model, features) if features else bb.model
    x, where = verification_inputs(source, bb.preprocessing)
    thresholds = getattr(bb.model, MULTILABEL_ATTR, None)  # a multi-label head's (predict.py reads them)
    target.parent.mkdir(parents=True, exist_ok=True)
    with heartbeat(f"export: writing and verifying {target}"):
        path, result, exporter = write_onnx(
            net,
            target,
            preprocessing=bb.preprocessing,
            class_names=labels,
            inputs=x,
            inputs_text=where,
            dtype=dtype,
            opset=opset,
            arch=bb.arch,
            extra_metadata={"thresholds": json.dumps(thresholds)} if thresholds else None,
        )
    for line in result.lines():
        print(line)
    data = data_file(path)
    beside = f"; its weights in {data.name} beside it, keep the two together" if data.is_file() else ""
    print(
        f"exported {source} -> {path} (ONNX opset {opset}, {dtype}, {exporter} exporter; "
        f"verified by ONNX Runtime on {where}{beside})"
    )
    return path


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
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not supported; use format=both, hf, timm or onnx")
    if cfg.format != "onnx" and str(cfg.get("dtype", "fp32")) != "fp32":
        raise ConfigError(
            f"dtype={cfg.dtype} applies to format=onnx only; format={cfg.format} writes the weights as trained"
        )
    if cfg.format == "onnx":
        require("onnx", "onnxruntime")
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
    if cfg.format == "onnx":
        # the .onnx, and its .onnx.data over 2 GB: the card lists and the push uploads both
        paths = onnx_files(export_onnx(bb, out, str(source), dtype=str(cfg.dtype), opset=int(cfg.opset)))
    else:
        paths = _write_weights(cfg, bb, out, str(source), "ckpt_path" if ckpt else "weights")
    finish_export(cfg, out, str(source), bb, paths)  # the model card, the Hub push (after the files exist)
    return paths


def _write_weights(cfg: DictConfig, bb: Backbone, out: Path, source: str, key: str) -> list[Path]:
    """format=both / hf / timm: the transformers directory and/or the timm safetensors file."""
    if cfg.format in ("both", "hf") and out.suffix == ".safetensors":
        raise ConfigError(
            f"out={cfg.out!r} is a file name but format={cfg.format} writes a directory; "
            "pass a directory, or format=timm for a single .safetensors file"
        )
    check_plain_head(bb.arch, f"{key}={source!r}")  # refuse before writing anything
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
    return paths
