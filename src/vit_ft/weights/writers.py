"""Write a vit-ft network in the two formats other tools read.

* :func:`save_hf_pretrained`: a transformers model directory (``config.json`` with ``id2label`` /
  ``label2id``, ``model.safetensors``, ``preprocessor_config.json``) that
  ``ViTForImageClassification.from_pretrained(dir)`` (or the class of the network's own family,
  :mod:`vit_ft.weights.families`) loads to the same logits. transformers is not needed to write it.
* :func:`save_timm_safetensors`: the timm state dict as safetensors (what ``timm.create_model(...,
  pretrained_cfg_overlay=dict(file=...))`` and :func:`vit_ft.weights.load_weights` read); with
  ``arch`` given, the architecture, class names and preprocessing travel in its metadata so that
  ``load_weights`` rebuilds the network without being told the backbone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from vit_ft.checkpoint_format import MULTILABEL_ATTR
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import PIL_FILTER_CODES, Preprocessing
from vit_ft.weights.families import for_network
from vit_ft.weights.families.common import is_a, refuse, tensors
from vit_ft.weights.families.vit import hf_vit_config
from vit_ft.weights.io import METADATA_KEY

__all__ = [
    "save_hf_pretrained",
    "save_timm_safetensors",
    "hf_vit_config",
    "hf_export",
    "hf_preprocessor_config",
]


def check_plain_head(arch: dict[str, Any] | None, what: str = "this network") -> None:
    """One line when ``arch``'s head sits on a linear probe's token features (``arch["features"]``,
    e.g. last4): timm's and transformers' models compute their head on their own pooling only."""
    features = (arch or {}).get("features")
    if features:
        raise ConfigError(
            f"{what} is a linear probe whose head sits on probe.features={features}, which a plain timm "
            "or transformers model cannot compute, so it cannot be exported; export a fine-tuned "
            "checkpoint or a probe trained with probe.features=pool instead (eval.py and predict.py "
            "take this checkpoint as it is)"
        )


def save_timm_safetensors(
    model: nn.Module,
    path: str | Path,
    *,
    arch: dict[str, Any] | None = None,
    preprocessing: Preprocessing | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """The timm state dict of ``model`` as safetensors at ``path`` (parents created)."""
    check_plain_head(arch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}
    if arch is not None:
        info = {
            "arch": arch,
            "class_names": list(class_names) if class_names else None,
            "preprocessing": preprocessing.to_dict() if preprocessing is not None else None,
        }
        thresholds = getattr(model, MULTILABEL_ATTR, None)
        if thresholds is not None:  # a multi-label head: sigmoid, each class over its own threshold
            info["thresholds"] = list(thresholds)
        meta[METADATA_KEY] = json.dumps(info)
    save_file(tensors(model), str(path), metadata=meta)
    return path


def hf_preprocessor_config(preprocessing: Preprocessing) -> dict[str, Any]:
    """The ``preprocessor_config.json`` dict that feeds the network as vit-ft evaluates: a
    ``ViTImageProcessor`` (square resize), or with ``crop_pct`` a ``CLIPImageProcessor`` (shorter side
    to ``img_size / crop_pct``, centre crop ``img_size``)."""
    crop = getattr(preprocessing, "crop_pct", None)
    if crop:
        img = int(preprocessing.img_size)
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": int(round(img / float(crop)))},
            "do_center_crop": True,
            "crop_size": {"height": img, "width": img},
            "resample": PIL_FILTER_CODES.get(preprocessing.interpolation, 3),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "image_mean": [float(v) for v in preprocessing.mean],
            "image_std": [float(v) for v in preprocessing.std],
        }
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": int(preprocessing.img_size), "width": int(preprocessing.img_size)},
        "resample": PIL_FILTER_CODES.get(preprocessing.interpolation, 2),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in preprocessing.mean],
        "image_std": [float(v) for v in preprocessing.std],
    }


def hf_export(
    model: nn.Module, class_names: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``config.json`` dict, transformers tensors) of a timm network, as its own transformers type
    (:func:`~vit_ft.weights.families.for_network`: ViT, DeiT, DINOv2 (with registers), CLIP or SigLIP;
    each family file writes its own). Raises :class:`ConfigError` (one line) for what transformers
    cannot express."""
    if not is_a(model, "VisionTransformer", "VisionTransformerDistilled"):
        raise refuse(
            model,
            "vit-ft writes transformers ViT, DeiT, DINOv2, CLIP and SigLIP models; timm's "
            f"{type(model).__name__} is none of them",
        )
    return for_network(model).export(model, class_names)


def save_hf_pretrained(
    backbone_model: nn.Module,
    arch: dict[str, Any] | None,
    preprocessing: Preprocessing,
    class_names: list[str] | None,
    out_dir: str | Path,
) -> Path:
    """A transformers model directory in ``out_dir``: ``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``, of the network's own transformers type (:func:`hf_export`). A
    network without head is written as the bare model (``ViTModel``, ``Dinov2Model``,
    ``CLIPVisionModel``...; a pooler timm lacks is left to transformers' initialisation). ``arch`` is
    recorded for reference."""
    check_plain_head(arch)
    cfg, tensors = hf_export(backbone_model, class_names)
    thresholds = getattr(backbone_model, MULTILABEL_ATTR, None)
    if (
        thresholds is not None
    ):  # transformers then uses sigmoid + BCE; the thresholds are vit-ft's (val max-F1)
        cfg["problem_type"] = "multi_label_classification"
        cfg["thresholds"] = [float(t) for t in thresholds]
    if arch is not None:
        cfg["vit_ft_arch"] = arch
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps(hf_preprocessor_config(preprocessing), indent=2) + "\n"
    )
    return out
