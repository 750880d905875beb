"""The JSON-able description of a network (``arch``) and what can be read off one.

``arch`` is ``{"name": <timm model name>, "kwargs": {...}, "layer_norm_eps": float | None}``: it
rebuilds exactly the same network without weights, so it travels inside every vit-ft checkpoint and
export. The functions here derive it from what a checkpoint states (a transformers config, a
big_vision .npz, a state dict's shapes) and check it against what the user named.
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

HF_LAYER_NORM_EPS = 1e-12  # transformers' ViTConfig default; timm's ViT uses 1e-6
# arch["features"] (a linear probe's head on token features, see vit_ft.models.features): the head's
# width in embedding widths. Absent: timm's own head on its own pooling.
HEAD_FEATURE_WIDTH = {"cls": 1, "mean": 1, "cls+mean": 2, "last4": 5}


def create_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Rebuild the network described by ``arch`` with random weights.

    ``arch`` is ``{"name": <timm model name>, "kwargs": {...}, "layer_norm_eps": float | None}``;
    every value is JSON-able so that it can travel inside checkpoints and hyperparameters.
    """
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


def _mlp_ratio(width: int, hidden: int) -> float:
    """timm's mlp_ratio for an MLP of ``hidden`` units (nudged so that int(width * ratio) == hidden)."""
    ratio = hidden / width
    if int(width * ratio) != hidden:
        ratio = (hidden + 0.5) / width
    return ratio


def _square(value: Any, what: str, where: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(
                f"{where}: {what}={list(value)} is not square; vit-ft supports square inputs only"
            )
        value = value[0]
    return int(value)


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


_HF_ACTS = {
    "gelu": None,
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def arch_from_hf_config(cfg: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """vit-ft ``arch`` (timm name + kwargs + LayerNorm eps) of a transformers ``ViTConfig`` dict."""
    try:
        width = int(cfg["hidden_size"])
        depth = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["intermediate_size"])
        patch = _square(cfg["patch_size"], "patch_size", where)
        img = _square(cfg["image_size"], "image_size", where)
    except KeyError as e:
        raise ConfigError(f"{where} lacks {e.args[0]!r}; it is not a transformers ViT config") from None
    act = str(cfg.get("hidden_act", "gelu"))
    if act not in _HF_ACTS:
        raise ConfigError(
            f"{where}: hidden_act={act!r} has no timm equivalent; supported: {sorted(_HF_ACTS)}"
        )
    kwargs: dict[str, Any] = {
        "img_size": img,
        "patch_size": patch,
        "in_chans": int(cfg.get("num_channels", 3)),
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": _mlp_ratio(width, hidden),
        "qkv_bias": bool(cfg.get("qkv_bias", True)),
        "class_token": True,
        "global_pool": "token",
    }
    if _HF_ACTS[act] is not None:
        kwargs["act_layer"] = _HF_ACTS[act]
    return {
        "name": timm_name_for(patch, width, depth, heads, img),
        "kwargs": kwargs,
        "layer_norm_eps": float(cfg.get("layer_norm_eps", HF_LAYER_NORM_EPS)),
    }


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
            "mlp_ratio": _mlp_ratio(width, hidden),
            "qkv_bias": qkv_bias,
            "class_token": True,
            "global_pool": "token",
            "num_classes": classes,
        },
        "layer_norm_eps": None,  # flax LayerNorm: 1e-6, timm's default
    }
    return arch, classes, f"{prefix}pre_logits/kernel" in keys


# transformers model types vit-ft reads, with the timm model each becomes (every dim is also in the kwargs)
HF_MODEL_TYPES = (
    "vit",
    "deit",
    "dinov2",
    "dinov2_with_registers",
    "clip",
    "clip_vision_model",
    "siglip",
    "siglip_vision_model",
)
# what transformers' config classes default to, where a config.json may leave a value out
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "deit": {"hidden_act": "gelu", "layer_norm_eps": 1e-12},
    "dinov2": {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "mlp_ratio": 4, "layerscale_value": 1.0},
    "clip": {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "siglip": {"hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True},
}
# transformers' own position-embedding interpolation: bicubic, antialiased for DINOv2-with-registers only
HF_POS_ANTIALIAS = {"dinov2_with_registers": True}


def hf_family(model_type: str) -> str:
    """The family a transformers model type belongs to (``clip_vision_model`` -> ``clip``)."""
    return {
        "clip_vision_model": "clip",
        "siglip_vision_model": "siglip",
        "dinov2_with_registers": "dinov2",
    }.get(model_type, model_type)


def hf_vision_config(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The vision tower's config: ``vision_config`` of a CLIP / SigLIP model, else the config itself,
    with transformers' defaults filled in."""
    model_type = str(cfg.get("model_type"))
    vision = cfg.get("vision_config") if model_type in ("clip", "siglip") else cfg
    if not isinstance(vision, dict):
        raise ConfigError(
            f"{where}: model_type={model_type!r} without a vision_config; download the model again"
        )
    return {**_HF_DEFAULTS.get(hf_family(model_type), {}), **vision}


def arch_from_hf_family(cfg: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """vit-ft ``arch`` of a transformers DeiT / DINOv2 (with registers) / CLIP / SigLIP config (for the
    classification classes, the pooling their head reads)."""
    model_type = str(cfg.get("model_type"))
    fam = hf_family(model_type)
    v = hf_vision_config(cfg, where)
    arch_names = [str(a) for a in cfg.get("architectures") or []]
    try:
        width = int(v["hidden_size"])
        depth = int(v["num_hidden_layers"])
        heads = int(v["num_attention_heads"])
        patch = _square(v["patch_size"], "patch_size", where)
        img = _square(v["image_size"], "image_size", where)
        hidden = int(width * float(v["mlp_ratio"])) if fam == "dinov2" else int(v["intermediate_size"])
    except KeyError as e:
        raise ConfigError(f"{where} lacks {e.args[0]!r}; it is not a complete {model_type} config") from None
    act = str(v.get("hidden_act", "gelu"))
    if act not in _HF_ACTS:
        raise ConfigError(
            f"{where}: hidden_act={act!r} has no timm equivalent; supported: {sorted(_HF_ACTS)}"
        )
    if v.get("use_swiglu_ffn"):
        raise ConfigError(
            f"{where}: use_swiglu_ffn=true (DINOv2 giant) is not supported; use the timm tag "
            "vit_giant_patch14_dinov2.lvd142m instead"
        )
    kwargs: dict[str, Any] = {
        "img_size": img,
        "patch_size": patch,
        "in_chans": int(v.get("num_channels", 3)),
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": _mlp_ratio(width, hidden),
        "qkv_bias": bool(v.get("qkv_bias", True)),
    }
    if _HF_ACTS[act] is not None:
        kwargs["act_layer"] = _HF_ACTS[act]
    if fam == "deit":
        name = "deit_base_distilled_patch16_224"  # transformers' DeiT always has the distillation token
    elif fam == "dinov2":
        name = "vit_base_patch14_dinov2"
        kwargs["init_values"] = float(v.get("layerscale_value", 1.0))
        if model_type == "dinov2_with_registers":
            name = "vit_base_patch14_reg4_dinov2"
            kwargs.update(reg_tokens=int(v.get("num_register_tokens", 4)), no_embed_class=True)
    elif fam == "clip":
        name = "vit_base_patch16_clip_224"
        kwargs.update(class_token=True, pre_norm=True, global_pool="token")
        if "CLIPForImageClassification" in arch_names:  # its head reads the mean patch token, unnormalised
            kwargs.update(global_pool="avg", fc_norm=False, final_norm=False)
    else:  # siglip
        name = "vit_base_patch16_siglip_224"
        kwargs.update(class_token=False, global_pool="map")
        if "SiglipForImageClassification" in arch_names or not v.get("vision_use_head", True):
            kwargs.update(
                global_pool="avg", fc_norm=False
            )  # the mean final-norm token (its classifier's input)
    return {"name": name, "kwargs": kwargs, "layer_norm_eps": float(v["layer_norm_eps"])}
