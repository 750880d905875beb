"""The JSON-able description of a network (``arch``) and what can be read off one.

``arch`` is ``{"name": <timm model name>, "kwargs": {...}, "layer_norm_eps": float | None}``: it
rebuilds exactly the same network without weights, so it travels inside every vit-ft checkpoint and
export. The functions here derive it from what a checkpoint states (a big_vision .npz, a state
dict's shapes; a transformers config: the family files in :mod:`vit_ft.weights.families`) and check
it against what the user named.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.weights.allowlist import HEAD_FEATURE_WIDTH, check_arch

HF_LAYER_NORM_EPS = 1e-12  # transformers' ViTConfig default; timm's ViT uses 1e-6


def create_from_arch(arch: dict[str, Any], where: str = "model.timm_kwargs") -> nn.Module:
    """Rebuild the network described by ``arch`` with random weights, after :func:`check_arch`.

    ``arch`` is ``{"name": <timm model name>, "kwargs": {...}, "layer_norm_eps": float | None}``;
    every value is JSON-able so that it can travel inside checkpoints and hyperparameters.
    """
    check_arch(arch, where)
    kwargs = dict(arch.get("kwargs") or {})
    eps = arch.get("layer_norm_eps")
    if eps is not None:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(eps))
    try:
        model = timm.create_model(arch["name"], pretrained=False, **kwargs)
    except RuntimeError as e:  # unknown model name
        raise ConfigError(
            f"model.backbone={arch['name']!r} is not a timm model ({e}); "
            "pick one from timm.list_models('vit_*')"
        ) from None
    if arch.get("features"):
        _size_feature_head(model, str(arch["features"]))
    return model


def _size_feature_head(model: nn.Module, features: str) -> None:
    """The head of a network whose head sits on token ``features`` (``arch["features"]``): same
    classes, the features' width (the features themselves are computed by vit_ft.models.features)."""
    if features not in HEAD_FEATURE_WIDTH:
        raise ConfigError(
            f"arch features={features!r} is not one of {sorted(HEAD_FEATURE_WIDTH)}; the checkpoint is "
            "damaged or from a newer vit-ft"
        )
    classes = int(getattr(model, "num_classes", 0) or 0)
    if classes > 0 and isinstance(getattr(model, "head", None), nn.Linear):
        width = int(model.embed_dim) * HEAD_FEATURE_WIDTH[features]
        model.head = nn.Linear(width, classes)


def meta_defaults(arch: dict[str, Any]) -> tuple[int, int]:
    """(timm's default img_size, number of prefix tokens in pos_embed) of the network ``arch``
    names, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        probe = create_from_arch({**arch, "kwargs": {**arch["kwargs"], "num_classes": 0}})
    prefix = 0 if getattr(probe, "no_embed_class", False) else int(getattr(probe, "num_prefix_tokens", 1))
    return int(probe.patch_embed.img_size[0]), prefix


def head_classes(sd: dict[str, torch.Tensor]) -> int:
    """The class count of a state dict's ``head`` (0: no head)."""
    head_w = sd.get("head.weight")
    return int(head_w.shape[0]) if head_w is not None and head_w.ndim == 2 else 0


def patch_size_of(model: nn.Module) -> int:
    """The (square) patch size of a timm ViT."""
    ps = model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def check_img_size(name: str, img_size: int, patch_size: int) -> None:
    """Raise :class:`ConfigError` unless ``img_size`` is a positive multiple of ``patch_size``."""
    if img_size <= 0 or img_size % patch_size != 0:
        raise ConfigError(
            f"model.img_size={img_size} is not a positive multiple of the patch size {patch_size} of "
            f"{name}; use e.g. {max(patch_size, round(max(img_size, 1) / patch_size) * patch_size)}"
        )


_SIZES = {
    (192, 12, 3): "tiny",
    (384, 12, 6): "small",
    (768, 12, 12): "base",
    (1024, 24, 16): "large",
    (1280, 32, 16): "huge",
    (1408, 40, 16): "giant",
}


def timm_name_for(patch: int, width: int, depth: int, heads: int, img_size: int) -> str:
    """The canonical timm name for these dims when there is one (``vit_base_patch32_384``), else a
    generic ViT name (every dim is also written into the arch kwargs, so only the name differs)."""
    size = _SIZES.get((width, depth, heads), "base")
    for name in (f"vit_{size}_patch{patch}_{img_size}", f"vit_{size}_patch{patch}_224"):
        if timm.is_model(name):
            return name
    return "vit_base_patch16_224"


def mlp_ratio(width: int, hidden: int) -> float:
    """timm's mlp_ratio for an MLP of ``hidden`` units (nudged so that int(width * ratio) == hidden)."""
    ratio = hidden / width
    if int(width * ratio) != hidden:
        ratio = (hidden + 0.5) / width
    return ratio


def _dims_of(name: str, timm_kwargs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """patch/width/depth/heads of a timm model name (built on the meta device: no memory, no init)."""
    kwargs = {k: v for k, v in (timm_kwargs or {}).items() if k != "pretrained_cfg_overlay"}
    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, **kwargs)
        ps = m.patch_embed.patch_size
        return {
            "patch": int(ps[0] if isinstance(ps, (tuple, list)) else ps),
            "width": int(m.embed_dim),
            "depth": len(m.blocks),
            "heads": int(m.blocks[0].attn.num_heads),
        }
    except Exception:  # noqa: BLE001 - only used for a hint
        return None


def _describe(d: dict[str, Any]) -> str:
    return f"patch {d['patch']}, width {d['width']}, depth {d['depth']}, heads {d['heads']}"


def backbone_note(backbone: str | None, arch: dict[str, Any]) -> list[str]:
    """A note when the model.backbone the user named has other dims than the checkpoint (whose arch wins)."""
    if not backbone:
        return []
    named = _dims_of(backbone)
    kw = arch["kwargs"]
    ckpt = {
        "patch": kw["patch_size"],
        "width": kw["embed_dim"],
        "depth": kw["depth"],
        "heads": kw["num_heads"],
    }
    if named is None or named == ckpt:
        return []
    return [
        f"model.backbone={backbone} ({_describe(named)}) differs from the checkpoint ({_describe(ckpt)}); "
        "the checkpoint's architecture is used"
    ]


def merge_timm_kwargs(arch: dict[str, Any], timm_kwargs: dict[str, Any] | None, notes: list[str]) -> None:
    """Add training-only timm kwargs (drop_path_rate, ...) to a checkpoint-derived arch; the
    checkpoint wins over any architectural kwarg."""
    for k, v in (timm_kwargs or {}).items():
        if k in ("pretrained_cfg_overlay", "img_size", "num_classes"):
            continue
        if k in arch["kwargs"] and arch["kwargs"][k] != v:
            notes.append(f"ignored model.timm_kwargs.{k}={v!r}: the checkpoint states {arch['kwargs'][k]!r}")
            continue
        arch["kwargs"][k] = v


def native_img_size(
    sd: dict[str, torch.Tensor], arch_kwargs: dict[str, Any], prefix_tokens: int
) -> int | None:
    """The square resolution a state dict's ``pos_embed`` was trained at (None: not square / absent)."""
    pos, proj = sd.get("pos_embed"), sd.get("patch_embed.proj.weight")
    patch = (
        int(proj.shape[-1]) if proj is not None and proj.ndim == 4 else int(arch_kwargs.get("patch_size", 16))
    )
    if pos is None or pos.ndim != 3:
        # BEiT: no absolute position embeddings, a (2g-1)^2 + 3 relative-position bias table per block
        rel = next((v for k, v in sd.items() if k.endswith("relative_position_bias_table")), None)
        if rel is None or rel.ndim != 2:
            return None
        side = math.isqrt(max(int(rel.shape[0]) - 3, 0))
        return (side + 1) // 2 * patch if side * side == rel.shape[0] - 3 and side % 2 == 1 else None
    n = pos.shape[1] - prefix_tokens
    g = math.isqrt(max(n, 0))
    return g * patch if g * g == n else None


def state_dict_hint(sd: dict[str, torch.Tensor]) -> Callable[[], str]:
    """A deferred hint, for a shape-mismatch error, naming the ViT a state dict's shapes describe."""

    def hint() -> str:
        proj = sd.get("patch_embed.proj.weight")
        if proj is None or proj.ndim != 4:
            return "pass weights of the same architecture"
        patch, width = int(proj.shape[-1]), int(proj.shape[0])
        depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        size = {768: "base", 384: "small", 192: "tiny", 1024: "large", 1280: "huge"}.get(width)
        guess = f"vit_{size}_patch{patch}_224" if size else None
        suggest = f" (e.g. model.backbone={guess})" if guess and timm.is_model(guess) else ""
        return (
            f"the checkpoint is a patch-{patch}, width-{width}, depth-{depth} ViT: set model.backbone / "
            f"model.timm_kwargs to match it{suggest}"
        )

    return hint


def arch_from_npz(w: Any, path: Path) -> tuple[dict[str, Any], int, bool]:
    """(arch at the checkpoint's resolution, head classes, has pre_logits) of a ViT .npz."""
    keys = list(w.keys())
    prefix = next(
        (p for p in ("", "opt/target/", "params/", "params/img/") if f"{p}embedding/kernel" in keys),
        None,
    )
    if prefix is None:
        raise ConfigError(
            f"{path} has no 'embedding/kernel' array; it is not an original ViT (google-research / "
            "big_vision) .npz checkpoint"
        )
    if f"{prefix}cls" not in keys:
        raise ConfigError(f"{path}: a ViT without a class token is not supported (no '{prefix}cls' array)")
    kernel = w[f"{prefix}embedding/kernel"]  # [p, p, C, D]
    if kernel.ndim != 4:
        raise ConfigError(f"{path}: embedding/kernel has shape {kernel.shape}; expected [p, p, C, D]")
    patch, in_chans, width = int(kernel.shape[0]), int(kernel.shape[2]), int(kernel.shape[3])
    pos_key = next(
        k
        for k in (f"{prefix}Transformer/posembed_input/pos_embedding", f"{prefix}pos_embedding")
        if k in keys
    )
    n = int(w[pos_key].shape[1]) - (1 if pos_key.endswith("posembed_input/pos_embedding") else 0)
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ConfigError(f"{path}: {pos_key} has {n} patch positions, not a square grid")
    stacked = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in keys
    if stacked:
        depth = int(w[f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"].shape[0])
        block = f"{prefix}Transformer/encoderblock/"
    else:
        depth = len(
            {
                m.group(1)
                for k in keys
                if (m := re.match(rf"{re.escape(prefix)}Transformer/encoderblock_(\d+)/", k))
            }
        )
        block = f"{prefix}Transformer/encoderblock_0/"
    q = next(
        k
        for k in keys
        if k.startswith(block) and re.search(r"MultiHeadDotProductAttention_\d/query/kernel$", k)
    )
    fc1 = next(k for k in keys if k.startswith(block) and re.search(r"MlpBlock_\d/Dense_0/kernel$", k))
    heads = int(w[q].shape[-2])
    hidden = int(w[fc1].shape[-1])
    qkv_bias = q[: -len("kernel")] + "bias" in keys
    classes = int(w[f"{prefix}head/bias"].shape[-1]) if f"{prefix}head/bias" in keys else 0
    img = grid * patch
    arch = {
        "name": timm_name_for(patch, width, depth, heads, img),
        "kwargs": {
            "img_size": img,
            "patch_size": patch,
            "in_chans": in_chans,
            "embed_dim": width,
            "depth": depth,
            "num_heads": heads,
            "mlp_ratio": mlp_ratio(width, hidden),
            "qkv_bias": qkv_bias,
            "class_token": True,
            "global_pool": "token",
            "num_classes": classes,
        },
        "layer_norm_eps": None,  # flax LayerNorm: 1e-6, timm's default
    }
    return arch, classes, f"{prefix}pre_logits/kernel" in keys
