"""transformers CLIP (``CLIPModel`` / ``CLIPVisionModel`` / ``CLIPForImageClassification``) <-> timm
``vit_*_clip_*`` (the vision tower: a pre-norm, quick-GELU). SigLIP shares the vision-tower table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vit_ft.weights.families.common import (
    Family,
    ReadResult,
    is_a,
    labels,
    refuse,
    split_export,
    timm_to_table,
    two_tower_classifier,
    vision_config,
    vision_kwargs,
)

# CLIP's and SigLIP's vision towers (SigLIP adds the attention-pooling head: timm's attn_pool)
VISION_TOWER_TABLE: tuple[tuple[str, str], ...] = (
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding.weight", "pos_embed"),
    ("embeddings.patch_embedding.{p}", "patch_embed.proj.{p}"),
    ("pre_layrnorm.{p}", "norm_pre.{p}"),
    ("encoder.layers.{i}.layer_norm1.{p}", "blocks.{i}.norm1.{p}"),
    ("encoder.layers.{i}.self_attn.{qkv}.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("encoder.layers.{i}.self_attn.out_proj.{p}", "blocks.{i}.attn.proj.{p}"),
    ("encoder.layers.{i}.layer_norm2.{p}", "blocks.{i}.norm2.{p}"),
    ("encoder.layers.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layers.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("post_layernorm.{p}", "norm.{p}"),
    ("head.probe", "attn_pool.latent"),
    ("head.attention.q_in.{p}", "attn_pool.q.{p}"),  # SigLIP's in_proj split in two on reading
    ("head.attention.kv_in.{p}", "attn_pool.kv.{p}"),
    ("head.attention.out_proj.{p}", "attn_pool.proj.{p}"),
    ("head.layernorm.{p}", "attn_pool.norm.{p}"),
    ("head.mlp.fc1.{p}", "attn_pool.mlp.fc1.{p}"),
    ("head.mlp.fc2.{p}", "attn_pool.mlp.fc2.{p}"),
)
VISION_QKV = ("q_proj", "k_proj", "v_proj")
# The Family fields CLIP and SigLIP share: the vision tower's keys, its prefix in the full models, the head
VISION_TOWER: dict[str, Any] = {
    "head_names": ("head",),
    "table": VISION_TOWER_TABLE,
    "prefixes": ("vision_model.",),
    "qkv": VISION_QKV,
}
DEFAULTS = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}


def read_vision_tower(r: ReadResult, family: str) -> dict[str, torch.Tensor]:
    """What CLIP and SigLIP share on reading: the parts the arch's pooling leaves out dropped, a note
    for an unused text tower, the classifier as timm's ``head``."""
    sd = r.sd
    if r.kwargs.get("global_pool") != "map":
        sd = {k: v for k, v in sd.items() if not k.startswith("attn_pool.")}
    if r.kwargs.get("final_norm") is False:
        sd = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    if r.model_type == family and any(k.startswith("text_model.") for k in r.raw):
        r.notes.append(f"read the vision tower of a {family} model (its text tower is not used)")
    if r.heads:
        sd.update({"head.weight": r.heads["classifier.weight"], "head.bias": r.heads["classifier.bias"]})
    return sd


def write_vision_tower(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' vision-tower shapes: a ``[D]`` class embedding, ``[N, D]`` positions."""
    for k in list(out):
        if k.endswith("embeddings.class_embedding"):
            out[k] = out[k].reshape(-1)
        elif k.endswith("embeddings.position_embedding.weight"):
            out[k] = out[k].reshape(out[k].shape[-2], out[k].shape[-1])
    return out


def split_vision_tower(
    model: nn.Module, class_names: list[str] | None, family: str
) -> tuple[dict, dict, dict]:
    """What CLIP's and SigLIP's exports begin with: (backbone tensors, head tensors, vision config) of
    a network whose attention has q/k/v biases (transformers' always has), its class names checked."""
    if any(b.attn.qkv.bias is None for b in model.blocks):
        raise refuse(model, f"attention without q/k/v biases, which transformers' {family} always has")
    sd, heads, vision = split_export(model, VISION_TOWER["head_names"])
    labels(model, class_names)  # checks the names against the head
    return sd, heads, vision


def _arch(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    v = vision_config(cfg, where, DEFAULTS, nested=("clip",))
    kwargs = vision_kwargs(v, where, f"complete {cfg.get('model_type')} config")
    kwargs.update(class_token=True, pre_norm=True, global_pool="token")
    if "CLIPForImageClassification" in (cfg.get("architectures") or []):
        # its head reads the mean patch token, unnormalised
        kwargs.update(global_pool="avg", fc_norm=False, final_norm=False)
    return {
        "name": "vit_base_patch16_clip_224",
        "kwargs": kwargs,
        "layer_norm_eps": float(v["layer_norm_eps"]),
    }


def _export(model: nn.Module, class_names: list[str] | None) -> tuple[dict[str, Any], dict]:
    """A ``CLIPVisionModel`` (class-token pooling, no head) or a ``CLIPForImageClassification``
    (its head averages the unnormalised patch tokens)."""
    has_head = bool(getattr(model, "num_classes", 0))
    sd, heads, vision = split_vision_tower(model, class_names, "clip")
    pool = getattr(model, "global_pool", "token")
    final_norm = not is_a(model.norm, "Identity")
    averaged = pool == "avg" and not final_norm
    if not (pool == "token" and final_norm and not has_head) and not (averaged and has_head):
        raise refuse(
            model,
            "transformers' CLIPVisionModel has no head and CLIPForImageClassification averages the "
            "unnormalised patch tokens; a class-token head has no transformers class",
        )
    if not has_head:
        cfg = {**vision, "model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"]}
        return cfg, write_vision_tower(timm_to_table(FAMILY, sd, prefix="", what="clip"))
    sd["norm.weight"], sd["norm.bias"] = torch.ones(model.embed_dim), torch.zeros(model.embed_dim)  # unused
    out = write_vision_tower(timm_to_table(FAMILY, sd, prefix="vision_model.", what="clip"))
    return two_tower_classifier(model, class_names, "clip", "CLIPForImageClassification", vision, out, heads)


FAMILY = Family(
    name="clip",
    model_types=("clip", "clip_vision_model"),
    timm_names=("*_clip_*",),
    arch_from_hf=_arch,
    finish_read=lambda r: read_vision_tower(r, "clip"),
    exports=lambda model: not is_a(getattr(model, "norm_pre", None), "Identity", "NoneType"),
    export=_export,
    dropped=("text_model.", "visual_projection.", "text_projection.", "logit_scale"),
    defaults=DEFAULTS,
    **VISION_TOWER,
)
