"""transformers SigLIP (``SiglipModel`` / ``SiglipVisionModel`` / ``SiglipForImageClassification``) <->
timm ``vit_*_siglip_*`` (no class token; the attention-pooling head is timm's ``attn_pool``)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from vit_ft.weights.families.clip import (
    VISION_TOWER,
    read_vision_tower,
    split_vision_tower,
    write_vision_tower,
)
from vit_ft.weights.families.common import (
    Family,
    is_a,
    refuse,
    timm_to_table,
    two_tower_classifier,
    vision_config,
    vision_kwargs,
)

DEFAULTS = {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True}


def _arch(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    v = vision_config(cfg, where, DEFAULTS, nested=("siglip",))
    kwargs = vision_kwargs(v, where, f"complete {cfg.get('model_type')} config")
    kwargs.update(class_token=False, global_pool="map")
    if "SiglipForImageClassification" in (cfg.get("architectures") or []) or not v.get(
        "vision_use_head", True
    ):
        kwargs.update(global_pool="avg", fc_norm=False)  # the mean final-norm token (its classifier's input)
    return {
        "name": "vit_base_patch16_siglip_224",
        "kwargs": kwargs,
        "layer_norm_eps": float(v["layer_norm_eps"]),
    }


def _split_in_proj(sd: dict[str, torch.Tensor], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The pooling head keeps q, k and v in one ``in_proj``; timm's attn_pool has q and kv."""
    width, out = int(kwargs["embed_dim"]), {}
    for k, v in sd.items():
        m = re.match(r"^(.*head\.attention\.)in_proj_(weight|bias)$", k)
        if m is None:
            out[k] = v
            continue
        out[f"{m.group(1)}q_in.{m.group(2)}"] = v[:width]
        out[f"{m.group(1)}kv_in.{m.group(2)}"] = v[width:]
    return out


def _merge_in_proj(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for k in [k for k in out if k.endswith(("head.attention.q_in.weight", "head.attention.q_in.bias"))]:
        kind = k.rsplit(".", 1)[1]
        base = k[: -len(f"q_in.{kind}")]
        out[f"{base}in_proj_{kind}"] = torch.cat([out.pop(k), out.pop(f"{base}kv_in.{kind}")], dim=0)
    return out


def _export(model: nn.Module, class_names: list[str] | None) -> tuple[dict[str, Any], dict]:
    """A ``SiglipVisionModel`` (attention pool or none, no head) or a ``SiglipForImageClassification``
    (its head averages the final-norm tokens)."""
    has_head = bool(getattr(model, "num_classes", 0))
    sd, heads, vision = split_vision_tower(model, class_names, "siglip")
    pool = getattr(model, "global_pool", "token")
    if has_head and not (pool == "avg" and not is_a(model.norm, "Identity")):
        raise refuse(
            model,
            f"global_pool={pool!r} with a head: transformers' SiglipForImageClassification averages the "
            "final-norm tokens instead of its attention pool",
        )
    if not has_head:
        vision.update(model_type="siglip_vision_model", architectures=["SiglipVisionModel"])
        vision["vision_use_head"] = pool == "map"
        return vision, _merge_in_proj(write_vision_tower(timm_to_table(FAMILY, sd, prefix="", what="siglip")))
    out = _merge_in_proj(write_vision_tower(timm_to_table(FAMILY, sd, prefix="vision_model.", what="siglip")))
    arch = "SiglipForImageClassification"
    return two_tower_classifier(model, class_names, "siglip", arch, vision, out, heads, vision_use_head=False)


FAMILY = Family(
    name="siglip",
    model_types=("siglip", "siglip_vision_model"),
    timm_names=("*_siglip_*",),
    arch_from_hf=_arch,
    finish_read=lambda r: read_vision_tower(r, "siglip"),
    exports=lambda model: (
        getattr(model, "attn_pool", None) is not None or getattr(model, "cls_token", 1) is None
    ),
    export=_export,
    dropped=("text_model.", "logit_scale", "logit_bias"),
    defaults=DEFAULTS,
    prepare=_split_in_proj,
    **VISION_TOWER,
)
