"""What every model family shares: the :class:`Family` record, the key-table conversion (transformers
<-> timm, both directions from one table), and the config pieces of transformers' ViT-like classes.

A family file fills one :class:`Family`; nothing here names a family, so adding one touches no
shared code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.weights.arch import mlp_ratio

KeyTable = tuple[tuple[str, str], ...]
QKV = ("query", "key", "value")
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)"}

# transformers hidden_act -> timm act_layer (None: timm's default GELU)
HF_ACTS = {
    "gelu": None,
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


@dataclass
class ReadResult:
    """What a family's key table made of a transformers state dict (timm keys), for its ``finish_read``."""

    sd: dict[str, torch.Tensor]  # timm backbone keys
    heads: dict[str, torch.Tensor]  # transformers head tensors (``classifier.weight``, ...)
    raw: dict[str, torch.Tensor]  # the transformers state dict as read
    model_type: str
    kwargs: dict[str, Any]  # the arch's timm kwargs
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Family:
    """One transformers model family and the timm network it becomes.

    ``head_names``: timm's classifier modules of the family's networks (timm's
    ``pretrained_cfg["classifier"]``); ``table``: transformers key (model prefix stripped) <-> timm
    key, ``{i}`` a block, ``{p}`` weight|bias, ``{qkv}`` the three projections ``qkv`` fused into
    timm's ``qkv``; ``prefixes``: the backbone's prefix in the ``*For*`` classes; ``hf_heads``: the
    transformers head modules, read aside for ``finish_read``; ``dropped``: keys with no place in timm.
    """

    name: str
    model_types: tuple[str, ...]
    timm_names: tuple[str, ...]  # fnmatch patterns of its timm model names
    head_names: tuple[str, ...]
    table: KeyTable
    prefixes: tuple[str, ...]
    arch_from_hf: Callable[[dict[str, Any], str], dict[str, Any]]  # (config.json dict, where) -> arch
    finish_read: Callable[[ReadResult], dict[str, torch.Tensor]]  # heads, tokens -> the final timm sd
    exports: Callable[[nn.Module], bool]  # whether this family writes the timm network
    export: Callable[[nn.Module, list[str] | None], tuple[dict[str, Any], dict[str, torch.Tensor]]]
    qkv: tuple[str, str, str] = QKV
    hf_heads: tuple[str, ...] = ("classifier",)
    dropped: tuple[str, ...] = ()
    prepare: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]] | None = None
    aliases: tuple[tuple[str, str], ...] = ()  # regex renames applied before the table (transformers 5)
    defaults: dict[str, Any] = field(default_factory=dict)  # transformers' config defaults
    pos_antialias: tuple[str, ...] = ()  # model types whose transformers resampling is antialiased
    # prepare: (transformers state dict, arch kwargs) -> state dict, before the table (e.g. split a fused tensor)
    what: str = ""  # the model in errors ("": "a transformers <model_type> vision model")
    mismatch: str = ""  # what to do when weights do not fit the table ("": download or export again)


# -- key tables ----------------------------------------------------------------------------------------


def compile_key(pattern: str, qkv: tuple[str, str, str] = QKV) -> re.Pattern[str]:
    """A key-table pattern as an anchored regex with named groups i / p / qkv."""
    out = re.escape(pattern)
    for name, rx in {**_PLACEHOLDERS, "qkv": f"(?P<qkv>{'|'.join(qkv)})"}.items():
        out = out.replace(re.escape("{" + name + "}"), rx)
    return re.compile(f"^{out}$")


def take(
    key: str,
    value: torch.Tensor,
    rows: list[tuple[re.Pattern[str], str]],
    out: dict[str, torch.Tensor],
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]],
) -> bool:
    """Put ``value`` under the target of the first row matching ``key`` (a q/k/v part into ``qkv``,
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


def fuse_qkv(
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]],
    names: tuple[str, str, str],
    what: str,
    out: dict[str, torch.Tensor],
) -> None:
    """timm's fused ``blocks.{i}.attn.qkv`` from the three transformers projections."""
    for (i, p), parts in qkv.items():
        if set(parts) != set(names):
            raise ConfigError(
                f"{what} checkpoint block {i} has attention {p} for {sorted(parts)} only; expected "
                f"{', '.join(names)} - the file is incomplete, download or export it again"
            )
        out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([parts[n] for n in names], dim=0)


def table_to_timm(
    fam: Family, model_type: str, sd: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """transformers keys -> (timm backbone keys, transformers head tensors by head name, keys left over).

    Shapes become timm's (a ``[D]`` class embedding -> ``[1, 1, D]``, ``[N, D]`` position embeddings
    -> ``[1, N, D]``)."""
    rows = [(compile_key(hf, fam.qkv), timm_) for hf, timm_ in fam.table]
    heads: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unused: list[str] = []
    for key, value in sd.items():
        k = next((key[len(p) :] for p in fam.prefixes if key.startswith(p)), key)
        for rx, repl in fam.aliases:
            k = re.sub(rx, repl, k)
        head = next((h for h in fam.hf_heads if k.startswith(h + ".")), None)
        if head is not None:
            heads[f"{head}.{k.rsplit('.', 1)[1]}"] = value
            continue
        if not take(k, value, rows, out, qkv) and not k.startswith(fam.dropped):
            unused.append(key)
    fuse_qkv(qkv, fam.qkv, model_type, out)
    if "cls_token" in out and out["cls_token"].ndim == 1:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in out and out["pos_embed"].ndim == 2:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    return out, heads, unused


def timm_to_table(
    fam: Family, sd: dict[str, torch.Tensor], *, prefix: str, what: str
) -> dict[str, torch.Tensor]:
    """timm backbone keys -> the family's transformers keys under ``prefix`` (the inverse of
    :func:`table_to_timm`; heads are the family's export). Raises for a key with no counterpart."""
    rows = [(compile_key(timm_, fam.qkv), hf) for hf, timm_ in fam.table]
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
                f"timm weight {key!r} has no counterpart in a transformers {what} model; export it as "
                "timm safetensors instead"
            )
    return out


# -- reading a transformers config ---------------------------------------------------------------------


def square(value: Any, what: str, where: str) -> int:
    """A square size (``224`` or ``[224, 224]``) as one int; one-line error otherwise."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(
                f"{where}: {what}={list(value)} is not square; vit-ft supports square inputs only"
            )
        value = value[0]
    return int(value)


def act_layer(act: str, where: str) -> str | None:
    """timm's act_layer for a transformers ``hidden_act`` (None: timm's default)."""
    if act not in HF_ACTS:
        raise ConfigError(f"{where}: hidden_act={act!r} has no timm equivalent; supported: {sorted(HF_ACTS)}")
    return HF_ACTS[act]


def vision_config(
    cfg: dict[str, Any], where: str, defaults: dict[str, Any], nested: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The vision tower's config (``vision_config`` of the ``nested`` model types, e.g. a full CLIP
    model, else the config itself) with transformers' defaults filled in."""
    model_type = str(cfg.get("model_type"))
    vision = cfg.get("vision_config") if model_type in nested else cfg
    if not isinstance(vision, dict):
        raise ConfigError(
            f"{where}: model_type={model_type!r} without a vision_config; download the model again"
        )
    return {**defaults, **vision}


def vision_kwargs(v: dict[str, Any], where: str, what: str, hidden_key: str = "intermediate_size") -> dict:
    """The timm kwargs every ViT-like transformers config states (``v``: the vision config with
    defaults); ``hidden_key`` ``mlp_ratio`` for DINOv2, which states a ratio."""
    try:
        width = int(v["hidden_size"])
        hidden = int(width * float(v["mlp_ratio"])) if hidden_key == "mlp_ratio" else int(v[hidden_key])
        kwargs: dict[str, Any] = {
            "img_size": square(v["image_size"], "image_size", where),
            "patch_size": square(v["patch_size"], "patch_size", where),
            "in_chans": int(v.get("num_channels", 3)),
            "embed_dim": width,
            "depth": int(v["num_hidden_layers"]),
            "num_heads": int(v["num_attention_heads"]),
            "mlp_ratio": mlp_ratio(width, hidden),
            "qkv_bias": bool(v.get("qkv_bias", True)),
        }
    except KeyError as e:
        raise ConfigError(f"{where} lacks {e.args[0]!r}; it is not a {what}") from None
    act = act_layer(str(v.get("hidden_act", "gelu")), where)
    if act is not None:
        kwargs["act_layer"] = act
    return kwargs


# -- writing a transformers config ---------------------------------------------------------------------


def is_a(module: Any, *names: str) -> bool:
    return type(module).__name__ in names


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict on the CPU, cloned (safetensors refuses tensors that share storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def hidden_act(model: nn.Module) -> str:
    """The transformers ``hidden_act`` of a timm ViT's MLP activation."""
    act = model.blocks[0].mlp.act
    name = type(act).__name__
    if name == "GELU":
        return "gelu_pytorch_tanh" if getattr(act, "approximate", "none") == "tanh" else "gelu"
    table = {"GELUTanh": "gelu_pytorch_tanh", "QuickGELU": "quick_gelu", "ReLU": "relu", "SiLU": "silu"}
    if name not in table:
        raise ConfigError(f"activation {name} has no transformers ViT equivalent; export as timm safetensors")
    return table[name]


def side(value: Any) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def common_config(model: nn.Module) -> dict[str, Any]:
    """The config entries every ViT-like transformers class shares, read off a timm ViT."""
    return {
        "hidden_size": int(model.embed_dim),
        "num_hidden_layers": len(model.blocks),
        "num_attention_heads": int(model.blocks[0].attn.num_heads),
        "intermediate_size": int(model.blocks[0].mlp.fc1.out_features),
        "hidden_act": hidden_act(model),
        "layer_norm_eps": float(model.blocks[0].norm1.eps),
        "image_size": side(model.patch_embed.img_size),
        "patch_size": side(model.patch_embed.patch_size),
        "num_channels": int(model.patch_embed.proj.in_channels),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def labels(model: nn.Module, class_names: list[str] | None) -> dict[str, Any]:
    """``id2label`` / ``label2id`` of the network's head (empty without one)."""
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


def refuse(model: nn.Module, why: str) -> ConfigError:
    return ConfigError(
        f"this {type(model).__name__} cannot be written as a transformers model ({why}); export it with "
        "format=timm instead"
    )


def split_export(model: nn.Module, head_names: tuple[str, ...]) -> tuple[dict, dict, dict[str, Any]]:
    """(backbone tensors, head tensors, shared config with labels) of a network a non-ViT family
    writes; refuses a norm after pooling, which no transformers class has."""
    if not is_a(getattr(model, "fc_norm", None), "Identity", "NoneType"):
        raise refuse(model, "a norm after pooling (fc_norm), which transformers' classes do not have")
    sd = tensors(model)
    heads = {k: sd.pop(k) for k in list(sd) if k.startswith(tuple(f"{n}." for n in head_names))}
    return sd, heads, common_config(model)


def classifier(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``head`` as transformers' ``classifier``."""
    return {"classifier.weight": heads["head.weight"], "classifier.bias": heads["head.bias"]}


def two_tower_classifier(
    model: nn.Module,
    class_names: list[str] | None,
    model_type: str,
    architecture: str,
    vision: dict[str, Any],
    out: dict[str, torch.Tensor],
    heads: dict[str, torch.Tensor],
    **vision_extra: Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and tensors of a two-tower model type's image classifier (``architecture``): ``vision``
    as its ``vision_config`` (``<model_type>_vision_model``, then ``vision_extra``), a text config that
    is only its type, the labels; ``out`` (the vision tower's tensors) with timm's head as ``classifier``."""
    cfg = {
        "model_type": model_type,
        "architectures": [architecture],
        "vision_config": {**vision, "model_type": f"{model_type}_vision_model", **vision_extra},
        "text_config": {"model_type": f"{model_type}_text_model"},
        **labels(model, class_names),
    }
    return cfg, {**out, **classifier(heads)}
