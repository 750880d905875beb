"""Write a vit-ft network in the two formats other tools read.

* :func:`save_hf_pretrained`: a transformers model directory (``config.json`` with ``id2label`` /
  ``label2id``, ``model.safetensors``, ``preprocessor_config.json``) that
  ``ViTForImageClassification.from_pretrained(dir)`` loads to the same logits. transformers is not
  needed to write it.
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

from vit_ft.errors import ConfigError
from vit_ft.preprocessing import PIL_FILTER_CODES, Preprocessing
from vit_ft.weights.convert_hf import timm_to_hf, timm_to_hf_family
from vit_ft.weights.io import METADATA_KEY

__all__ = [
    "save_hf_pretrained",
    "save_timm_safetensors",
    "hf_vit_config",
    "hf_export",
    "hf_preprocessor_config",
]


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


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
        meta[METADATA_KEY] = json.dumps(info)
    save_file(_tensors(model), str(path), metadata=meta)
    return path


def _hidden_act(model: nn.Module) -> str:
    act = model.blocks[0].mlp.act
    name = type(act).__name__
    if name == "GELU":
        return "gelu_pytorch_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    table = {"GELUTanh": "gelu_pytorch_tanh", "QuickGELU": "quick_gelu", "ReLU": "relu", "SiLU": "silu"}
    if name not in table:
        raise ConfigError(f"activation {name} has no transformers ViT equivalent; export as timm safetensors")
    return table[name]


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
    ps = model.patch_embed.patch_size
    patch = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    size = model.patch_embed.img_size
    img = int(size[0] if isinstance(size, (tuple, list)) else size)
    width = int(model.embed_dim)
    num_classes = int(getattr(model, "num_classes", 0))
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(
            f"{len(class_names)} class names for a {num_classes}-class head; pass one name per output"
        )
    names = [str(n) for n in class_names] if class_names else [f"LABEL_{i}" for i in range(num_classes)]
    cfg: dict[str, Any] = {
        "architectures": ["ViTForImageClassification" if num_classes else "ViTModel"],
        "model_type": "vit",
        "hidden_size": width,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": int(model.blocks[0].attn.num_heads),
        "intermediate_size": int(model.blocks[0].mlp.fc1.out_features),
        "hidden_act": _hidden_act(model),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(model.norm.eps),
        "image_size": img,
        "patch_size": patch,
        "num_channels": int(model.patch_embed.proj.in_channels),
        "qkv_bias": model.blocks[0].attn.qkv.bias is not None,
        "encoder_stride": patch,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    if num_classes:
        cfg["id2label"] = {str(i): n for i, n in enumerate(names)}
        cfg["label2id"] = {n: i for i, n in enumerate(names)}
    return cfg


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


def _is(module: Any, *names: str) -> bool:
    return type(module).__name__ in names


def _family_of(model: nn.Module) -> str:
    """The transformers model type that expresses this timm network (``vit`` when nothing else fits)."""
    if getattr(model, "dist_token", None) is not None:
        return "deit"
    if getattr(model, "attn_pool", None) is not None or getattr(model, "cls_token", 1) is None:
        return "siglip"
    if not _is(getattr(model, "norm_pre", None), "Identity", "NoneType"):
        return "clip"
    if not _is(getattr(model.blocks[0], "ls1", None), "Identity", "NoneType"):
        return "dinov2_with_registers" if getattr(model, "num_reg_tokens", 0) else "dinov2"
    return "vit"


def _common(model: nn.Module) -> dict[str, Any]:
    ps, size = model.patch_embed.patch_size, model.patch_embed.img_size
    width = int(model.embed_dim)
    return {
        "hidden_size": width,
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": int(model.blocks[0].attn.num_heads),
        "intermediate_size": int(model.blocks[0].mlp.fc1.out_features),
        "hidden_act": _hidden_act(model),
        "layer_norm_eps": float(model.blocks[0].norm1.eps),
        "image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
        "patch_size": int(ps[0] if isinstance(ps, (tuple, list)) else ps),
        "num_channels": int(model.patch_embed.proj.in_channels),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def _labels(model: nn.Module, class_names: list[str] | None) -> dict[str, Any]:
    num_classes = int(getattr(model, "num_classes", 0))
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(
            f"{len(class_names)} class names for a {num_classes}-class head; pass one name per output"
        )
    if not num_classes:
        return {}
    names = [str(n) for n in class_names] if class_names else [f"LABEL_{i}" for i in range(num_classes)]
    return {
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def _refuse(model: nn.Module, why: str) -> ConfigError:
    return ConfigError(
        f"this {type(model).__name__} cannot be written as a transformers model ({why}); export it with "
        "format=timm instead"
    )


def hf_export(
    model: nn.Module, class_names: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(``config.json`` dict, transformers tensors) of a timm network, as its own transformers type:
    ViT, DeiT (two heads: ``DeiTForImageClassificationWithTeacher``), DINOv2 (with registers; its
    class-token head as ``Dinov2ForImageClassification`` whose mean-patch half is zero), CLIP and
    SigLIP vision towers. Raises :class:`ConfigError` (one line) for what transformers cannot express."""
    if not _is(model, "VisionTransformer", "VisionTransformerDistilled"):
        raise _refuse(
            model,
            "vit-ft writes transformers ViT, DeiT, DINOv2, CLIP and SigLIP models; timm's "
            f"{type(model).__name__} is none of them",
        )
    family = _family_of(model)
    has_head = bool(getattr(model, "num_classes", 0))
    if family in ("clip", "siglip") and any(b.attn.qkv.bias is None for b in model.blocks):
        raise _refuse(model, f"attention without q/k/v biases, which transformers' {family} always has")
    sd = _tensors(model)
    if family == "vit":
        cfg = hf_vit_config(model, class_names)
        if not has_head:
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        return cfg, timm_to_hf(sd, prefix="vit." if has_head else "")
    heads = {k: sd.pop(k) for k in list(sd) if k.startswith(("head.", "head_dist."))}
    base = {**_common(model), **_labels(model, class_names)}
    pool = getattr(model, "global_pool", "token")
    final_norm = not _is(model.norm, "Identity")
    fc_norm = not _is(getattr(model, "fc_norm", None), "Identity", "NoneType")
    if fc_norm:
        raise _refuse(model, "a norm after pooling (fc_norm), which transformers' classes do not have")
    if family == "deit":
        cfg = {**base, "model_type": "deit", "qkv_bias": model.blocks[0].attn.qkv.bias is not None}
        cfg["architectures"] = ["DeiTForImageClassificationWithTeacher" if has_head else "DeiTModel"]
        out = timm_to_hf_family("deit", sd, prefix="deit." if has_head else "")
        if has_head:
            out.update({f"cls_classifier.{p}": heads[f"head.{p}"] for p in ("weight", "bias")})
            out.update({f"distillation_classifier.{p}": heads[f"head_dist.{p}"] for p in ("weight", "bias")})
        return cfg, out
    if family in ("dinov2", "dinov2_with_registers"):
        if pool != "token" or not final_norm:
            raise _refuse(model, f"global_pool={pool!r}; transformers' DINOv2 reads the final-norm tokens")
        width = int(model.embed_dim)
        cfg = {**base, "model_type": family, "qkv_bias": model.blocks[0].attn.qkv.bias is not None}
        hidden = cfg.pop("intermediate_size")
        if hidden % width:
            raise _refuse(
                model, f"an MLP of {hidden} units for width {width} (transformers' DINOv2: a whole ratio)"
            )
        cfg["mlp_ratio"] = hidden // width
        cfg.update(layerscale_value=1.0, use_swiglu_ffn=False, apply_layernorm=True)
        prefix = f"{family}." if has_head else ""
        if family == "dinov2_with_registers":
            cfg["num_register_tokens"] = int(model.num_reg_tokens)
            # timm folds the class position into the class token; transformers adds one: zero
            sd["pos_embed"] = torch.cat([torch.zeros_like(sd["pos_embed"][:, :1]), sd["pos_embed"]], dim=1)
        cfg["architectures"] = [
            (
                "Dinov2WithRegistersForImageClassification"
                if cfg.get("num_register_tokens")
                else "Dinov2ForImageClassification"
            )
            if has_head
            else ("Dinov2WithRegistersModel" if cfg.get("num_register_tokens") else "Dinov2Model")
        ]
        out = timm_to_hf_family(family, sd, prefix=prefix)
        out[f"{prefix}embeddings.mask_token"] = torch.zeros(1, width)
        if has_head:  # the mean-patch half of transformers' [CLS, mean patch] input is not read: zero
            w = heads["head.weight"]
            out["classifier.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
            out["classifier.bias"] = heads["head.bias"]
        return cfg, out
    # CLIP / SigLIP: a vision model without head, or the *ForImageClassification class whose head averages
    # the patch tokens (CLIP: before the final norm; SigLIP: after it)
    vision = {k: v for k, v in base.items() if k not in ("id2label", "label2id")}
    if family == "clip":
        averaged = pool == "avg" and not final_norm
        if not (pool == "token" and final_norm and not has_head) and not (averaged and has_head):
            raise _refuse(
                model,
                "transformers' CLIPVisionModel has no head and CLIPForImageClassification averages the "
                "unnormalised patch tokens; a class-token head has no transformers class",
            )
        if not has_head:
            return {**vision, "model_type": "clip_vision_model", "architectures": ["CLIPVisionModel"]}, (
                timm_to_hf_family("clip", sd, prefix="")
            )
        sd["norm.weight"], sd["norm.bias"] = (
            torch.ones(model.embed_dim),
            torch.zeros(model.embed_dim),
        )  # unused
        out = timm_to_hf_family("clip", sd, prefix="vision_model.")
        cfg = {
            "model_type": "clip",
            "architectures": ["CLIPForImageClassification"],
            "vision_config": {**vision, "model_type": "clip_vision_model"},
            "text_config": {"model_type": "clip_text_model"},
            **_labels(model, class_names),
        }
    else:
        mapped = pool == "map"
        if has_head and not (pool == "avg" and final_norm):
            raise _refuse(
                model,
                f"global_pool={pool!r} with a head: transformers' SiglipForImageClassification averages the "
                "final-norm tokens instead of its attention pool",
            )
        if not has_head:
            vision.update(model_type="siglip_vision_model", architectures=["SiglipVisionModel"])
            vision["vision_use_head"] = mapped
            return vision, timm_to_hf_family("siglip", sd, prefix="")
        out = timm_to_hf_family("siglip", sd, prefix="vision_model.")
        cfg = {
            "model_type": "siglip",
            "architectures": ["SiglipForImageClassification"],
            "vision_config": {**vision, "model_type": "siglip_vision_model", "vision_use_head": False},
            "text_config": {"model_type": "siglip_text_model"},
            **_labels(model, class_names),
        }
    out["classifier.weight"], out["classifier.bias"] = heads["head.weight"], heads["head.bias"]
    return cfg, out


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
