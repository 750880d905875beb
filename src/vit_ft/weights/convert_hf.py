"""transformers ViT <-> timm ViT state-dict keys, both directions from one table.

The same :data:`HF_VIT_KEY_TABLE` reads transformers checkpoints (:func:`hf_to_timm`) and writes
them (:func:`timm_to_hf`), so an export reads back to exactly the weights it was written from.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from vit_ft.errors import ConfigError

__all__ = ["HF_VIT_KEY_TABLE", "hf_to_timm", "timm_to_hf", "is_hf_vit_state_dict"]

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
        for rx, target in _HF_RX:
            m = rx.match(k)
            if m is None:
                continue
            g = m.groupdict()
            if "qkv" in g:
                qkv.setdefault((g["i"], g["p"]), {})[g["qkv"]] = value
            else:
                out[target.format(**g)] = value
            break
        else:
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
