"""transformers DINOv2, with and without registers (``Dinov2[WithRegisters]Model`` /
``...ForImageClassification``) <-> timm ``vit_*_patch14[_reg4]_dinov2`` (LayerScale; registers
without position embeddings)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.weights.families.common import (
    Family,
    ReadResult,
    is_a,
    labels,
    refuse,
    split_export,
    timm_to_table,
    vision_config,
    vision_kwargs,
)

DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "mlp_ratio": 4, "layerscale_value": 1.0}
REGISTERS = "dinov2_with_registers"


def _arch(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    model_type = str(cfg.get("model_type"))
    v = vision_config(cfg, where, DEFAULTS)
    kwargs = vision_kwargs(v, where, f"complete {model_type} config", hidden_key="mlp_ratio")
    if v.get("use_swiglu_ffn"):
        raise ConfigError(
            f"{where}: use_swiglu_ffn=true (DINOv2 giant) is not supported; use the timm tag "
            "vit_giant_patch14_dinov2.lvd142m instead"
        )
    name = "vit_base_patch14_dinov2"
    kwargs["init_values"] = float(v.get("layerscale_value", 1.0))
    if model_type == REGISTERS:
        name = "vit_base_patch14_reg4_dinov2"
        kwargs.update(reg_tokens=int(v.get("num_register_tokens", 4)), no_embed_class=True)
    return {"name": name, "kwargs": kwargs, "layer_norm_eps": float(v["layer_norm_eps"])}


def _finish_read(r: ReadResult) -> dict[str, torch.Tensor]:
    """Registers: the class position folded into the class token (timm adds none to prefix tokens).
    A classifier is kept only when it reads the class token alone (its mean-patch half zero)."""
    sd = r.sd
    if r.kwargs.get("reg_tokens") and "pos_embed" in sd and "cls_token" in sd:
        pos = sd["pos_embed"]
        sd["cls_token"] = sd["cls_token"] + pos[:, :1]
        sd["pos_embed"] = pos[:, 1:]
    if not r.heads:
        return sd
    w, b = r.heads["classifier.weight"], r.heads["classifier.bias"]
    width = w.shape[1] // 2
    if torch.count_nonzero(w[:, width:]) == 0:
        sd.update({"head.weight": w[:, :width].contiguous(), "head.bias": b})
    else:
        r.notes.append(
            f"dropped {r.model_type}'s classifier: it reads the class token and the mean patch token, which "
            "timm's head does not; a new head is trained (model.num_classes)"
        )
    return sd


def _export(model: nn.Module, class_names: list[str] | None) -> tuple[dict[str, Any], dict]:
    has_head = bool(getattr(model, "num_classes", 0))
    family = REGISTERS if getattr(model, "num_reg_tokens", 0) else "dinov2"
    sd, heads, base = split_export(model, FAMILY.head_names)
    pool = getattr(model, "global_pool", "token")
    if pool != "token" or is_a(model.norm, "Identity"):
        raise refuse(model, f"global_pool={pool!r}; transformers' DINOv2 reads the final-norm tokens")
    width = int(model.embed_dim)
    cfg = {**base, **labels(model, class_names), "model_type": family}
    cfg["qkv_bias"] = model.blocks[0].attn.qkv.bias is not None
    hidden = cfg.pop("intermediate_size")
    if hidden % width:
        raise refuse(
            model, f"an MLP of {hidden} units for width {width} (transformers' DINOv2: a whole ratio)"
        )
    cfg["mlp_ratio"] = hidden // width
    cfg.update(layerscale_value=1.0, use_swiglu_ffn=False, apply_layernorm=True)
    prefix = f"{family}." if has_head else ""
    if family == REGISTERS:
        cfg["num_register_tokens"] = int(model.num_reg_tokens)
        # timm folds the class position into the class token; transformers adds one: zero
        sd["pos_embed"] = torch.cat([torch.zeros_like(sd["pos_embed"][:, :1]), sd["pos_embed"]], dim=1)
    cls = "Dinov2WithRegisters" if family == REGISTERS else "Dinov2"
    cfg["architectures"] = [f"{cls}ForImageClassification" if has_head else f"{cls}Model"]
    out = timm_to_table(FAMILY, sd, prefix=prefix, what=family)
    out[f"{prefix}embeddings.mask_token"] = torch.zeros(1, width)
    if has_head:  # the mean-patch half of transformers' [CLS, mean patch] input is not read: zero
        w = heads["head.weight"]
        out["classifier.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
        out["classifier.bias"] = heads["head.bias"]
    return cfg, out


FAMILY = Family(
    name="dinov2",
    model_types=("dinov2", REGISTERS),
    timm_names=("*_dinov2*",),
    head_names=("head",),
    table=(
        ("embeddings.cls_token", "cls_token"),
        ("embeddings.register_tokens", "reg_token"),
        ("embeddings.position_embeddings", "pos_embed"),
        ("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
        ("encoder.layer.{i}.norm1.{p}", "blocks.{i}.norm1.{p}"),
        ("encoder.layer.{i}.attention.attention.{qkv}.{p}", "blocks.{i}.attn.qkv.{p}"),
        ("encoder.layer.{i}.attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
        ("encoder.layer.{i}.layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
        ("encoder.layer.{i}.norm2.{p}", "blocks.{i}.norm2.{p}"),
        ("encoder.layer.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
        ("encoder.layer.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
        ("encoder.layer.{i}.layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
        ("layernorm.{p}", "norm.{p}"),
    ),
    prefixes=("dinov2.", f"{REGISTERS}."),
    arch_from_hf=_arch,
    finish_read=_finish_read,
    exports=lambda model: not is_a(getattr(model.blocks[0], "ls1", None), "Identity", "NoneType"),
    export=_export,
    dropped=("embeddings.mask_token",),
    defaults=DEFAULTS,
    pos_antialias=(REGISTERS,),  # transformers antialiases when resampling the registers model only
)
