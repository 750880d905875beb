"""transformers ViT (``ViTForImageClassification`` / ``ViTModel``) <-> timm ``VisionTransformer``.

The same :data:`HF_VIT_KEY_TABLE` reads transformers checkpoints (:func:`hf_to_timm`) and writes
them (:func:`timm_to_hf`), so an export reads back to exactly the weights it was written from. This
family also writes any plain timm ViT no other family claims.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.weights.arch import HF_LAYER_NORM_EPS, timm_name_for
from vit_ft.weights.families.common import (
    Family,
    ReadResult,
    compile_key,
    hidden_act,
    labels,
    side,
    table_to_timm,
    tensors,
    vision_config,
    vision_kwargs,
)

# Left: transformers key without the "vit." prefix of ViTForImageClassification; right: timm
# VisionTransformer key. {i} is a block index, {p} weight|bias; {qkv} names the three transformers
# projections stacked (q, k, v) into timm's qkv.
HF_VIT_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
    ("encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
    ("encoder.layer.{i}.attention.attention.{qkv}.{p}", "blocks.{i}.attn.qkv.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
    ("encoder.layer.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("layernorm.{p}", "norm.{p}"),
)
HF_HEAD = ("classifier.{p}", "head.{p}")  # outside the "vit." prefix
# transformers >= 5 names its modules differently in memory (it still saves the names above);
# a raw state_dict() of such a model is renamed to the saved names first.
HF_V5_ALIASES = (
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.layernorm_", r"encoder.layer.\1.layernorm_"),
)
DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": HF_LAYER_NORM_EPS}


def arch_from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """vit-ft ``arch`` (timm name + kwargs + LayerNorm eps) of a transformers ``ViTConfig`` dict."""
    v = vision_config(cfg, where, DEFAULTS)
    kwargs = vision_kwargs(v, where, "transformers ViT config")
    kwargs.update(class_token=True, global_pool="token")
    name = timm_name_for(
        kwargs["patch_size"], kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"], kwargs["img_size"]
    )
    return {"name": name, "kwargs": kwargs, "layer_norm_eps": float(v["layer_norm_eps"])}


def is_hf_vit_state_dict(sd: dict[str, Any]) -> bool:
    """True when ``sd`` has transformers ViT keys (with or without the ``vit.`` prefix)."""
    return any(
        k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "embeddings.cls_token")) for k in sd
    )


def hf_to_timm(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """transformers ViT keys (``ViTForImageClassification`` or ``ViTModel``) -> timm keys.

    Returns the timm state dict and the transformers keys that have no timm counterpart (the
    ``pooler`` of ``ViTModel``, a ``mask_token``)."""
    with_head = dataclasses.replace(FAMILY, table=(*HF_VIT_KEY_TABLE, HF_HEAD), hf_heads=(), dropped=())
    out, _, unused = table_to_timm(with_head, "transformers", sd)
    return out, unused


_TIMM_RX = [(compile_key(timm_), hf) for hf, timm_ in (*HF_VIT_KEY_TABLE, HF_HEAD)]


def timm_to_hf(sd: dict[str, torch.Tensor], *, prefix: str = "vit.") -> dict[str, torch.Tensor]:
    """timm ViT keys -> transformers keys as ``save_pretrained`` writes them (the inverse of
    :func:`hf_to_timm`). ``prefix="vit."`` for ``ViTForImageClassification``, ``""`` for ``ViTModel``.
    Raises :class:`ConfigError` for a key that transformers' ViT has no place for."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for rx, target in _TIMM_RX:
            m = rx.match(key)
            if m is None:
                continue
            g = m.groupdict()
            pre = "" if target.startswith("classifier.") else prefix
            if "{qkv}" in target:
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[pre + target.format(qkv=name, **g)] = part.contiguous()
            else:
                out[pre + target.format(**g)] = value.contiguous()
            break
        else:
            raise ConfigError(
                f"timm weight {key!r} has no counterpart in a transformers ViT; this network cannot be "
                "exported in transformers format - export it as timm safetensors instead"
            )
    return out


def _finish_read(r: ReadResult) -> dict[str, torch.Tensor]:
    if any(k.startswith(("pooler.", "vit.pooler.")) for k in r.raw):
        r.notes.append(
            "dropped the transformers pooler (dense+tanh): a ViTForImageClassification head does not use it"
        )
    if r.heads:
        r.sd.update({"head.weight": r.heads["classifier.weight"], "head.bias": r.heads["classifier.bias"]})
    return r.sd


def _check_plain_vit(model: nn.Module) -> None:
    """Refuse what transformers' ViT cannot express (parameter-free differences; timm_to_hf catches
    the others)."""
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("no class token")
    if getattr(model, "global_pool", "token") != "token":
        problems.append(f"global_pool={model.global_pool!r} (transformers pools the class token)")
    if getattr(model, "no_embed_class", False):
        problems.append("no_embed_class=True")
    if getattr(model, "num_reg_tokens", 0):
        problems.append(f"{model.num_reg_tokens} register tokens")
    if getattr(model, "attn_pool", None) is not None:
        problems.append("an attention-pool head")
    norms = [model.norm] + [m for b in model.blocks for m in (b.norm1, b.norm2)]
    if not all(isinstance(n, nn.LayerNorm) for n in norms):
        problems.append("non-LayerNorm normalisation")
    if getattr(model.patch_embed.proj, "bias", None) is None:
        problems.append("a patch embedding without bias")
    if len({b.attn.qkv.bias is None for b in model.blocks}) > 1:
        problems.append("qkv bias in some blocks only")
    if not isinstance(getattr(model, "head", None), (nn.Linear, nn.Identity)):
        problems.append(f"a {type(model.head).__name__} head")
    if problems:
        raise ConfigError(
            f"this {type(model).__name__} cannot be written as a transformers ViT ({'; '.join(problems)}); "
            "export it as timm safetensors instead"
        )


def hf_vit_config(model: nn.Module, class_names: list[str] | None = None) -> dict[str, Any]:
    """The transformers ``ViTConfig`` dict (as ``config.json``) of a plain timm ViT."""
    _check_plain_vit(model)
    patch = side(model.patch_embed.patch_size)
    num_classes = int(getattr(model, "num_classes", 0))
    label_cfg = labels(model, class_names)
    return {
        "architectures": ["ViTForImageClassification" if num_classes else "ViTModel"],
        "model_type": "vit",
        "hidden_size": int(model.embed_dim),
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": int(model.blocks[0].attn.num_heads),
        "intermediate_size": int(model.blocks[0].mlp.fc1.out_features),
        "hidden_act": hidden_act(model),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(model.norm.eps),
        "image_size": side(model.patch_embed.img_size),
        "patch_size": patch,
        "num_channels": int(model.patch_embed.proj.in_channels),
        "qkv_bias": model.blocks[0].attn.qkv.bias is not None,
        "encoder_stride": patch,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        **label_cfg,
    }


def _export(model: nn.Module, class_names: list[str] | None) -> tuple[dict[str, Any], dict]:
    has_head = bool(getattr(model, "num_classes", 0))
    cfg = hf_vit_config(model, class_names)
    sd = tensors(model)
    if not has_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return cfg, timm_to_hf(sd, prefix="vit." if has_head else "")


FAMILY = Family(
    name="vit",
    model_types=("vit",),
    timm_names=("vit_*", "deit_*"),
    head_names=("head",),
    table=HF_VIT_KEY_TABLE,
    prefixes=("vit.",),
    arch_from_hf=arch_from_hf_config,
    finish_read=_finish_read,
    exports=lambda model: True,  # any plain ViT: last in the registry
    export=_export,
    dropped=("pooler.", "embeddings.mask_token"),
    aliases=HF_V5_ALIASES,
    defaults=DEFAULTS,
    pos_antialias=("vit",),  # vit-ft's resampling of a transformers ViT has always been antialiased
    what="a transformers ViT",
    mismatch="pass a ViTForImageClassification / ViTModel checkpoint",
)
