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
from vit_ft.weights.convert_hf import timm_to_hf
from vit_ft.weights.io import METADATA_KEY

__all__ = ["save_hf_pretrained", "save_timm_safetensors", "hf_vit_config", "hf_preprocessor_config"]


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
    """The ``preprocessor_config.json`` dict (a ``ViTImageProcessor``) that feeds the network as vit-ft does."""
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


def save_hf_pretrained(
    backbone_model: nn.Module,
    arch: dict[str, Any] | None,
    preprocessing: Preprocessing,
    class_names: list[str] | None,
    out_dir: str | Path,
) -> Path:
    """A transformers ViT model directory in ``out_dir``: ``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``. A network without head is written as a ``ViTModel`` (its pooler,
    which timm lacks, is left to transformers' initialisation). ``arch`` is recorded for reference."""
    check_plain_head(arch)
    model = backbone_model
    cfg = hf_vit_config(model, class_names)
    if arch is not None:
        cfg["vit_ft_arch"] = arch
    has_head = bool(getattr(model, "num_classes", 0))
    sd = _tensors(model)
    if not has_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    tensors = timm_to_hf(sd, prefix="vit." if has_head else "")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "preprocessor_config.json").write_text(
        json.dumps(hf_preprocessor_config(preprocessing), indent=2) + "\n"
    )
    return out
