"""transformers ViT <-> timm ViT state-dict keys, both directions from one table.

The same :data:`HF_VIT_KEY_TABLE` reads transformers checkpoints (:func:`hf_to_timm`) and writes
them (:func:`timm_to_hf`), so an export reads back to exactly the weights it was written from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from vit_ft.errors import ConfigError

__all__ = [
    "HF_FAMILIES",
    "HF_VIT_KEY_TABLE",
    "hf_family_to_timm",
    "hf_to_timm",
    "is_hf_vit_state_dict",
    "timm_to_hf",
    "timm_to_hf_family",
]

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
_QKV = ("query", "key", "value")
# transformers >= 5 names its modules differently in memory (it still saves the names above);
# a raw state_dict() of such a model is renamed to the saved names first.
_HF_V5_ALIASES = (
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.layernorm_", r"encoder.layer.\1.layernorm_"),
)
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "qkv": r"(?P<qkv>query|key|value)"}


def _compile(pattern: str) -> re.Pattern[str]:
    out = re.escape(pattern)
    for name, rx in _PLACEHOLDERS.items():
        out = out.replace(re.escape("{" + name + "}"), rx)
    return re.compile(f"^{out}$")


_HF_RX = [(_compile(hf), timm_) for hf, timm_ in (*HF_VIT_KEY_TABLE, HF_HEAD)]
_TIMM_RX = [(_compile(timm_), hf) for hf, timm_ in (*HF_VIT_KEY_TABLE, HF_HEAD)]


def _take(
    key: str,
    value: torch.Tensor,
    rows: list[tuple[re.Pattern[str], str]],
    out: dict[str, torch.Tensor],
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]],
) -> bool:
    """Put ``value`` under the timm name of the first row matching ``key`` (a q/k/v part into ``qkv``,
    fused later); whether a row matched."""
    for rx, target in rows:
        m = rx.match(key)
        if m is None:
            continue
        g = m.groupdict()
        if "qkv" in g:
            qkv.setdefault((g["i"], g["p"]), {})[g["qkv"]] = value
        else:
            out[target.format(**g)] = value
        return True
    return False


def is_hf_vit_state_dict(sd: dict[str, Any]) -> bool:
    """True when ``sd`` has transformers ViT keys (with or without the ``vit.`` prefix)."""
    return any(
        k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.", "embeddings.cls_token")) for k in sd
    )


def hf_to_timm(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """transformers ViT keys (``ViTForImageClassification`` or ``ViTModel``) -> timm keys.

    Returns the timm state dict and the transformers keys that have no timm counterpart (the
    ``pooler`` of ``ViTModel``, a ``mask_token``)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unused: list[str] = []
    for key, value in sd.items():
        k = key[len("vit.") :] if key.startswith("vit.") else key
        for rx, repl in _HF_V5_ALIASES:
            k = re.sub(rx, repl, k)
        if not _take(k, value, _HF_RX, out, qkv):
            unused.append(key)
    for (i, p), parts in qkv.items():
        if set(parts) != set(_QKV):
            raise ConfigError(
                f"transformers checkpoint block {i} has attention {p} for {sorted(parts)} only; "
                "expected query, key and value - the file is incomplete, export it again"
            )
        out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    return out, unused


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
                for name, part in zip(_QKV, value.chunk(3, dim=0)):
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


# -- the other transformers ViT families ---------------------------------------------------------------
# Each family: its key table (transformers key without the model prefix <-> timm key), the names of its
# three attention projections, and the prefixes its *For* classes put before the backbone's keys.
_DINOV2_TABLE: tuple[tuple[str, str], ...] = (
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
)
_DEIT_TABLE: tuple[tuple[str, str], ...] = (
    *HF_VIT_KEY_TABLE,
    ("embeddings.distillation_token", "dist_token"),
)
# CLIP's and SigLIP's vision towers (SigLIP adds the attention-pooling head: timm's attn_pool)
_CLIP_TABLE: tuple[tuple[str, str], ...] = (
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
    ("head.attention.q_in.{p}", "attn_pool.q.{p}"),  # in_proj split in two (see _split_in_proj)
    ("head.attention.kv_in.{p}", "attn_pool.kv.{p}"),
    ("head.attention.out_proj.{p}", "attn_pool.proj.{p}"),
    ("head.layernorm.{p}", "attn_pool.norm.{p}"),
    ("head.mlp.fc1.{p}", "attn_pool.mlp.fc1.{p}"),
    ("head.mlp.fc2.{p}", "attn_pool.mlp.fc2.{p}"),
)
_CLIP_QKV = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class HFFamily:
    """How one transformers model type maps onto timm keys."""

    table: tuple[tuple[str, str], ...]
    prefixes: tuple[str, ...]  # the backbone's prefix in the *For* classes (stripped on reading)
    qkv: tuple[str, str, str] = _QKV
    heads: tuple[tuple[str, str], ...] = (("classifier", "head"),)  # transformers head -> timm head
    dropped: tuple[str, ...] = ()  # keys with no place in the timm network (text towers, mask tokens)


HF_FAMILIES: dict[str, HFFamily] = {
    "vit": HFFamily(HF_VIT_KEY_TABLE, ("vit.",), dropped=("pooler.", "embeddings.mask_token")),
    "deit": HFFamily(
        _DEIT_TABLE,
        ("deit.",),
        heads=(("cls_classifier", "head"), ("distillation_classifier", "head_dist"), ("classifier", "head")),
        dropped=("pooler.", "embeddings.mask_token"),
    ),
    "dinov2": HFFamily(_DINOV2_TABLE, ("dinov2.",), dropped=("embeddings.mask_token",)),
    "dinov2_with_registers": HFFamily(
        _DINOV2_TABLE, ("dinov2_with_registers.",), dropped=("embeddings.mask_token",)
    ),
    "clip": HFFamily(
        _CLIP_TABLE,
        ("vision_model.",),
        qkv=_CLIP_QKV,
        dropped=("text_model.", "visual_projection.", "text_projection.", "logit_scale"),
    ),
    "siglip": HFFamily(
        _CLIP_TABLE,
        ("vision_model.",),
        qkv=_CLIP_QKV,
        dropped=("text_model.", "logit_scale", "logit_bias"),
    ),
}
HF_FAMILIES["clip_vision_model"] = HF_FAMILIES["clip"]
HF_FAMILIES["siglip_vision_model"] = HF_FAMILIES["siglip"]


def _placeholders(qkv: tuple[str, str, str]) -> dict[str, str]:
    return {**_PLACEHOLDERS, "qkv": f"(?P<qkv>{'|'.join(qkv)})"}


def _compile_with(pattern: str, placeholders: dict[str, str]) -> re.Pattern[str]:
    out = re.escape(pattern)
    for name, rx in placeholders.items():
        out = out.replace(re.escape("{" + name + "}"), rx)
    return re.compile(f"^{out}$")


def _split_in_proj(sd: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """SigLIP's pooling head keeps q, k and v in one ``in_proj``; timm's attn_pool has q and kv."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*head\.attention\.)in_proj_(weight|bias)$", k)
        if m is None:
            out[k] = v
            continue
        out[f"{m.group(1)}q_in.{m.group(2)}"] = v[:width]
        out[f"{m.group(1)}kv_in.{m.group(2)}"] = v[width:]
    return out


def hf_family_to_timm(
    model_type: str, sd: dict[str, torch.Tensor], width: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """transformers keys of ``model_type`` -> (timm backbone keys, transformers head tensors keyed
    by timm head name, e.g. ``{"head.weight": ...}`` or DeiT's ``classifier``, keys left over).

    Shapes are timm's (CLIP's class embedding ``[D]`` -> ``[1, 1, D]``, position embeddings
    ``[N, D]`` -> ``[1, N, D]``); DINOv2-with-registers' class position and register placement
    are left to the caller (it needs the arch)."""
    fam = HF_FAMILIES[model_type]
    ph = _placeholders(fam.qkv)
    rows = [(_compile_with(hf, ph), timm_) for hf, timm_ in fam.table]
    heads = {}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unused: list[str] = []
    for key, value in _split_in_proj(sd, width).items():
        k = next((key[len(p) :] for p in fam.prefixes if key.startswith(p)), key)
        for rx, repl in _HF_V5_ALIASES if model_type == "vit" else ():
            k = re.sub(rx, repl, k)
        head = next((h for h in fam.heads if k.startswith(h[0] + ".")), None)
        if head is not None:
            heads[f"{head[0]}.{k.rsplit('.', 1)[1]}"] = value
            continue
        if not _take(k, value, rows, out, qkv) and not k.startswith(fam.dropped):
            unused.append(key)
    for (i, p), parts in qkv.items():
        if set(parts) != set(fam.qkv):
            raise ConfigError(
                f"{model_type} checkpoint block {i} has attention {p} for {sorted(parts)} only; "
                f"expected {', '.join(fam.qkv)} - the file is incomplete, download or export it again"
            )
        out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([parts[n] for n in fam.qkv], dim=0)
    if "cls_token" in out and out["cls_token"].ndim == 1:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in out and out["pos_embed"].ndim == 2:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    return out, heads, unused


def timm_to_hf_family(
    model_type: str, sd: dict[str, torch.Tensor], *, prefix: str
) -> dict[str, torch.Tensor]:
    """timm backbone keys -> transformers keys of ``model_type`` (the inverse of
    :func:`hf_family_to_timm` for the backbone; heads are the writer's). ``prefix`` is the
    backbone's prefix in the class written (``"dinov2."``, ``"vision_model."``, ``""``)."""
    fam = HF_FAMILIES[model_type]
    ph = _placeholders(fam.qkv)
    rows = [(_compile_with(timm_, ph), hf) for hf, timm_ in fam.table]
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for rx, target in rows:
            m = rx.match(key)
            if m is None:
                continue
            g = m.groupdict()
            if "{qkv}" in target:
                for name, part in zip(fam.qkv, value.chunk(3, dim=0)):
                    out[prefix + target.format(qkv=name, **g)] = part.contiguous()
            else:
                out[prefix + target.format(**g)] = value.contiguous()
            break
        else:
            raise ConfigError(
                f"timm weight {key!r} has no counterpart in a transformers {model_type} model; export it as "
                "timm safetensors instead"
            )
    if model_type in ("clip", "clip_vision_model", "siglip", "siglip_vision_model"):
        for k in list(out):
            if k.endswith("embeddings.class_embedding"):
                out[k] = out[k].reshape(-1)
            elif k.endswith("embeddings.position_embedding.weight"):
                out[k] = out[k].reshape(out[k].shape[-2], out[k].shape[-1])
        q = [k for k in out if k.endswith(("head.attention.q_in.weight", "head.attention.q_in.bias"))]
        for k in q:
            kind = k.rsplit(".", 1)[1]
            base = k[: -len(f"q_in.{kind}")]
            out[f"{base}in_proj_{kind}"] = torch.cat([out.pop(k), out.pop(f"{base}kv_in.{kind}")], dim=0)
    return out
