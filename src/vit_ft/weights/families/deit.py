"""transformers DeiT (``DeiTForImageClassification[WithTeacher]`` / ``DeiTModel``) <-> timm's distilled
ViT (``VisionTransformerDistilled``: a class and a distillation token, heads ``head`` and ``head_dist``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_ft.weights.families.common import (
    Family,
    ReadResult,
    labels,
    split_export,
    timm_to_table,
    vision_config,
    vision_kwargs,
)
from vit_ft.weights.families.vit import HF_VIT_KEY_TABLE

DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12}
HEADS = ("head", "head_dist")  # timm's pretrained_cfg["classifier"] of the distilled DeiTs


def _arch(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    v = vision_config(cfg, where, DEFAULTS)
    kwargs = vision_kwargs(v, where, f"complete {cfg.get('model_type')} config")
    name = "deit_base_distilled_patch16_224"  # transformers' DeiT always has the distillation token
    return {"name": name, "kwargs": kwargs, "layer_norm_eps": float(v["layer_norm_eps"])}


def _finish_read(r: ReadResult) -> dict[str, torch.Tensor]:
    """Both heads where transformers has both; a one-head classifier as timm's two averaged heads."""
    sd, heads = r.sd, r.heads
    if not heads:
        return sd
    if "cls_classifier.weight" in heads:  # DeiTForImageClassificationWithTeacher
        sd.update({f"head.{p}": heads[f"cls_classifier.{p}"] for p in ("weight", "bias")})
        sd.update({f"head_dist.{p}": heads[f"distillation_classifier.{p}"] for p in ("weight", "bias")})
        return sd
    # DeiTForImageClassification reads the class token only; timm averages two heads: 2W and a zero one
    w, b = heads["classifier.weight"], heads["classifier.bias"]
    sd.update({"head.weight": 2 * w, "head.bias": 2 * b})
    sd.update({"head_dist.weight": torch.zeros_like(w), "head_dist.bias": torch.zeros_like(b)})
    r.notes.append("DeiTForImageClassification's head: timm's class-token head (x2), distillation head zero")
    return sd


def _export(model: nn.Module, class_names: list[str] | None) -> tuple[dict[str, Any], dict]:
    has_head = bool(getattr(model, "num_classes", 0))
    sd, heads, base = split_export(model, HEADS)
    cfg = {**base, **labels(model, class_names), "model_type": "deit"}
    cfg["qkv_bias"] = model.blocks[0].attn.qkv.bias is not None
    cfg["architectures"] = ["DeiTForImageClassificationWithTeacher" if has_head else "DeiTModel"]
    out = timm_to_table(FAMILY, sd, prefix="deit." if has_head else "", what="deit")
    if has_head:
        out.update({f"cls_classifier.{p}": heads[f"head.{p}"] for p in ("weight", "bias")})
        out.update({f"distillation_classifier.{p}": heads[f"head_dist.{p}"] for p in ("weight", "bias")})
    return cfg, out


FAMILY = Family(
    name="deit",
    model_types=("deit",),
    timm_names=("deit*_distilled_*",),
    head_names=HEADS,
    table=(*HF_VIT_KEY_TABLE, ("embeddings.distillation_token", "dist_token")),
    prefixes=("deit.",),
    arch_from_hf=_arch,
    finish_read=_finish_read,
    exports=lambda model: getattr(model, "dist_token", None) is not None,
    export=_export,
    hf_heads=("cls_classifier", "distillation_classifier", "classifier"),
    dropped=("pooler.", "embeddings.mask_token"),
    defaults=DEFAULTS,
)
