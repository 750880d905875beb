"""Read every common ViT checkpoint into a :class:`~vit_ft.models.backbone.Backbone`, exactly.

One entry point, :func:`load_weights`, and one reader per format:

* a Hugging Face hub id of a transformers ViT (``google/vit-base-patch32-384``), fetched into the
  normal hub cache (``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` are honoured at call time);
* a timm pretrained tag (``timm/vit_base_patch32_224.orig_in21k``, ``vit_base_patch32_384.augreg_in21k_ft_in1k``),
  loaded by timm itself;
* a local transformers model directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``),
  or a timm hub-style directory (``config.json`` with ``architecture``);
* a timm checkpoint file (``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``; raw or wrapped in
  ``state_dict`` / ``model`` / ``state_dict_ema``; ``module.`` prefixes stripped);
* an original google-research / big_vision ``.npz``;
* a vit-ft Lightning ``.ckpt`` (``hyper_parameters`` hold ``arch``, ``class_names``, ``preprocessing``).

What the checkpoint states (width, depth, heads, MLP size, patch size, resolution, qkv bias, LayerNorm
eps) decides the network; only a timm state dict, which does not state its head count or eps, takes
them from the named backbone (and is checked against it). A requested ``img_size`` different from the
checkpoint's resamples the position embeddings (timm's ``resample_abs_pos_embed``, bicubic); a head
whose class count differs from ``num_classes`` (or ``reset_head=True``) is replaced by a zero one.

Only safetensors and ``torch.load(weights_only=True)`` are used: a pickle that would run code is refused.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from timm.layers import resample_abs_pos_embed

from vit_ft.errors import ConfigError
from vit_ft.models.backbone import Backbone, check_img_size, create_from_arch, zero_head
from vit_ft.preprocessing import Preprocessing, preprocessing_from_timm

__all__ = [
    "load_weights",
    "hf_to_timm",
    "timm_to_hf",
    "arch_from_hf_config",
    "read_state_dict",
    "resample_pos_embed",
    "HF_VIT_KEY_TABLE",
]

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz", ".ckpt", ".pth.tar", ".tar")
HF_LAYER_NORM_EPS = 1e-12  # transformers' ViTConfig default; timm's ViT uses 1e-6
METADATA_KEY = "vit_ft"  # safetensors metadata written by vit_ft.models.export.save_timm_safetensors

# --------------------------------------------------------------------------------------------------
# transformers ViT <-> timm key table (used both ways). Left: transformers key without the "vit."
# prefix of ViTForImageClassification; right: timm VisionTransformer key. {i} is a block index,
# {p} weight|bias; {qkv} names the three transformers projections stacked (q, k, v) into timm's qkv.
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# reading files safely
# --------------------------------------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def torch_load_safely(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a pickle that would import code becomes a ConfigError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg:
            raise _corrupt(path, e) from None
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        name = m.group(1) if m else "objects other than tensors and plain containers"
        raise ConfigError(
            f"refusing to load {path}: it is a pickle that needs {name}, which could run code; vit-ft only "
            "reads tensors and plain containers (safetensors or torch.load(weights_only=True)) - re-save the "
            "weights from a trusted environment with safetensors.torch.save_file(state_dict, ...)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError) as e:
        raise _corrupt(path, e) from None


def _corrupt(path: Path, e: BaseException) -> ConfigError:
    return ConfigError(
        f"cannot read weights file {path}: {_first_line(e)}; the file is truncated, corrupt or not a "
        "checkpoint - download or export it again"
    )


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _corrupt(path, e) from None


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "_orig_mod."):
        while sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v for k, v in sd.items()
    }  # DataParallel leftovers on some keys only


def _unwrap(obj: Any, path: Path, notes: list[str]) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                if key in ("state_dict_ema", "model_ema"):
                    notes.append(f"using the EMA weights ({key!r}) of {path.name}")
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(
            f"{path} holds no state dict of tensors (found {keys}); pass a timm/transformers weight file, "
            "a raw state dict or one wrapped in 'state_dict' / 'model' / 'state_dict_ema'"
        )
    return _strip_prefixes(dict(obj))


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Tensors of a weight file (safetensors or weights-only torch pickle): (state dict, safetensors
    metadata, notes). Wrappers (``state_dict`` / ``model`` / ``state_dict_ema``) and ``module.``
    prefixes are removed."""
    path = Path(path)
    notes: list[str] = []
    if path.suffix == ".safetensors":
        sd, meta = _load_safetensors(path)
        return _strip_prefixes(sd), meta, notes
    return _unwrap(torch_load_safely(path), path, notes), {}, notes


# --------------------------------------------------------------------------------------------------
# architecture helpers
# --------------------------------------------------------------------------------------------------
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


def _backbone_note(backbone: str | None, arch: dict[str, Any]) -> list[str]:
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


def _merge_timm_kwargs(arch: dict[str, Any], timm_kwargs: dict[str, Any] | None, notes: list[str]) -> None:
    """Add training-only timm kwargs (drop_path_rate, ...) to a checkpoint-derived arch; the
    checkpoint wins over any architectural kwarg."""
    for k, v in (timm_kwargs or {}).items():
        if k in ("pretrained_cfg_overlay", "img_size", "num_classes"):
            continue
        if k in arch["kwargs"] and arch["kwargs"][k] != v:
            notes.append(f"ignored model.timm_kwargs.{k}={v!r}: the checkpoint states {arch['kwargs'][k]!r}")
            continue
        arch["kwargs"][k] = v


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: Iterable[int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Position embeddings ``[1, prefix + g*g, D]`` resampled to ``new_grid`` (timm, bicubic)."""
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), num_prefix_tokens=num_prefix_tokens)


def _class_names_for(num_classes: int, given: list[str] | None, model_or_cfg: Any = None) -> list[str] | None:
    if num_classes <= 0:
        return None
    if given is not None and len(given) == num_classes:
        return [str(n) for n in given]
    if model_or_cfg is False:  # the checkpoint says what its classes are (or that it does not know)
        return None
    subset = timm.data.infer_imagenet_subset(
        model_or_cfg if model_or_cfg is not None else {"num_classes": num_classes}
    )
    if subset:
        try:
            info = timm.data.ImageNetInfo(subset)
            if info.num_classes() == num_classes:
                return list(info.label_descriptions())
        except (AssertionError, OSError, KeyError):
            return None
    return None


def _head_decision(ckpt_classes: int, num_classes: int | None, reset_head: bool) -> tuple[bool, int, str]:
    """(keep the checkpoint head?, classes of the final head, note)."""
    if ckpt_classes > 0 and not reset_head and (num_classes is None or int(num_classes) == ckpt_classes):
        return True, ckpt_classes, f"kept the checkpoint's {ckpt_classes}-class head"
    target = int(num_classes) if num_classes is not None else ckpt_classes
    if target == 0:
        return False, 0, "the checkpoint has no classification head and num_classes is not set: no head"
    if reset_head:
        why = "model.reset_head=true"
    elif ckpt_classes == 0:
        why = "the checkpoint has no classification head"
    else:
        why = f"the checkpoint head has {ckpt_classes} classes, model.num_classes={target}"
    return False, target, f"new zero-initialised {target}-class head ({why})"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _assemble(
    sd: dict[str, torch.Tensor],
    arch: dict[str, Any],
    *,
    source: str,
    label: str,
    img_size: int | None,
    num_classes: int | None,
    reset_head: bool,
    class_names: list[str] | None,
    preprocessing: Preprocessing | None,
    notes: list[str],
    hint: Callable[[], str] | None = None,
    class_names_from: Any = None,
) -> Backbone:
    """Common tail of every reader: ``sd`` (timm keys, at the checkpoint's own resolution and head)
    and ``arch`` (which states that resolution) -> the requested Backbone."""
    head_w = sd.get("head.weight")
    ckpt_classes = int(head_w.shape[0]) if head_w is not None and head_w.ndim == 2 else 0
    keep, target_classes, head_note = _head_decision(ckpt_classes, num_classes, reset_head)
    if not keep:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    native = int(arch["kwargs"]["img_size"])
    target = int(img_size) if img_size is not None else native
    arch = copy.deepcopy(arch)
    arch["kwargs"]["img_size"] = target
    arch["kwargs"]["num_classes"] = target_classes
    model = create_from_arch(arch)
    ps = model.patch_embed.patch_size
    check_img_size(arch["name"], target, int(ps[0] if isinstance(ps, (tuple, list)) else ps))

    expected = model.state_dict()
    pos = sd.get("pos_embed")
    if (
        pos is not None
        and "pos_embed" in expected
        and pos.ndim == 3
        and pos.shape != expected["pos_embed"].shape
    ):
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        old = pos.shape[1] - prefix
        new_grid = tuple(int(g) for g in model.patch_embed.grid_size)
        if math.isqrt(old) ** 2 == old and pos.shape[2] == expected["pos_embed"].shape[2]:
            sd = dict(sd)
            sd["pos_embed"] = resample_pos_embed(pos, new_grid, num_prefix_tokens=prefix)
            g = math.isqrt(old)
            notes.append(
                f"resampled position embeddings from a {g}x{g} grid ({native}px) to "
                f"{new_grid[0]}x{new_grid[1]} ({target}px), bicubic"
            )
    problems: list[str] = []
    for k, v in expected.items():
        if k not in sd:
            if not k.startswith("head.") or keep:
                problems.append(f"{k} {_shape(v)} is missing from the checkpoint")
        elif sd[k].shape != v.shape:
            problems.append(
                f"{k} has shape {_shape(sd[k])} in the checkpoint but {_shape(v)} in {arch['name']}"
            )
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        problems.append(
            f"the checkpoint has {len(unexpected)} weights the network lacks (e.g. {unexpected[0]})"
        )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        extra = hint() if hint is not None else ""
        raise ConfigError(
            f"{label} does not fit {arch['name']}: {problems[0]}{more}"
            + (f"; {extra}" if extra else "; pass weights of the same architecture")
        )
    model.load_state_dict(sd, strict=keep)
    if not keep:
        zero_head(model)
    if keep:
        names = _class_names_for(target_classes, class_names, class_names_from)
        head_note += f" with {'its class names' if names else 'no class names'}"
    else:
        names = None
    notes.append(head_note)
    if preprocessing is None:
        prep = preprocessing_from_timm(model, target)
    else:
        prep = Preprocessing(target, preprocessing.mean, preprocessing.std, preprocessing.interpolation)
    model.eval()
    return Backbone(
        model=model,
        arch=arch,
        preprocessing=prep,
        class_names=names,
        head_kept=keep,
        source=source,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _preprocessing_from_hf(path: Path, img_size: int, notes: list[str]) -> Preprocessing:
    file = path / "preprocessor_config.json"
    if not file.is_file():
        notes.append(f"{path} has no preprocessor_config.json: assuming ViT's mean/std 0.5, bilinear resize")
        return Preprocessing(img_size)
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {file}: {_first_line(e)}; fix or delete the file") from None
    if cfg.get("do_normalize", True):
        mean = tuple(float(v) for v in cfg.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(float(v) for v in cfg.get("image_std", (0.5, 0.5, 0.5)))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = cfg.get("resample", 2)
    interp = _PIL_FILTERS.get(int(resample), "bilinear") if isinstance(resample, int) else str(resample)
    return Preprocessing(img_size, mean, std, interp)  # type: ignore[arg-type]


def _hf_weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(
                    f"cannot read {index}: {_first_line(e)}; download the model again"
                ) from None
            return [path / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    raise ConfigError(
        f"{path} has a config.json but no model.safetensors or pytorch_model.bin; download or export the "
        "model again"
    )


def _read_dir_weights(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    sd: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for f in _hf_weight_files(path):
        if not f.is_file():
            raise ConfigError(f"weight shard {f} is missing; download the model again")
        part, _, n = read_state_dict(f)
        sd.update(part)
        notes += n
    return sd, notes


def _from_hf_dir(
    path: Path, cfg: dict[str, Any], *, source: str, backbone: str | None, **opts: Any
) -> Backbone:
    where = str(path / "config.json")
    model_type = cfg.get("model_type")
    if model_type != "vit":
        raise ConfigError(
            f"{where} describes model_type={model_type!r}; vit-ft reads transformers ViT checkpoints "
            "(model_type 'vit') - pass a ViT model or a timm checkpoint"
        )
    arch = arch_from_hf_config(cfg, where)
    notes: list[str] = _backbone_note(backbone, arch)
    _merge_timm_kwargs(arch, opts.pop("timm_kwargs"), notes)
    raw, n = _read_dir_weights(path)
    notes += n
    sd, unused = hf_to_timm(raw)
    if any(k.startswith(("pooler.", "vit.pooler.")) for k in unused):
        notes.append(
            "dropped the transformers pooler (dense+tanh): a ViTForImageClassification head does not use it"
        )
    unused = [
        k
        for k in unused
        if not k.startswith(("pooler.", "vit.pooler.", "embeddings.mask_token", "vit.embeddings.mask_token"))
    ]
    if unused:
        raise ConfigError(
            f"{path}: {len(unused)} weights are not part of a transformers ViT (e.g. {unused[0]!r}); "
            "pass a ViTForImageClassification / ViTModel checkpoint"
        )
    names = None
    id2label = cfg.get("id2label") or {}
    if id2label:
        try:
            names = [str(id2label.get(str(i), id2label.get(i))) for i in range(len(id2label))]  # type: ignore[call-overload]
        except TypeError:
            names = None
    if names is not None and names == [f"LABEL_{i}" for i in range(len(names))]:
        names = None  # transformers' placeholder names
    img_size = opts["img_size"]
    prep = _preprocessing_from_hf(path, int(img_size or arch["kwargs"]["img_size"]), notes)
    return _assemble(
        sd,
        arch,
        source=source,
        label=f"transformers checkpoint {path}",
        class_names=names,
        class_names_from=False,
        preprocessing=prep,
        notes=notes,
        **opts,
    )


def _from_timm_dir(
    path: Path, cfg: dict[str, Any], *, source: str, backbone: str | None, **opts: Any
) -> Backbone:
    """A timm hub-style directory: config.json with ``architecture``, ``num_classes``, ``pretrained_cfg``."""
    name = str(cfg["architecture"])
    kwargs = dict(cfg.get("model_args") or {})
    kwargs.update(opts.pop("timm_kwargs") or {})
    kwargs.pop("pretrained_cfg_overlay", None)
    files = [f for f in (path / "model.safetensors", path / "pytorch_model.bin") if f.is_file()]
    if not files:
        raise ConfigError(f"{path} has a timm config.json but no model.safetensors or pytorch_model.bin")
    sd, _, notes = read_state_dict(files[0])
    pcfg = cfg.get("pretrained_cfg") or {}
    prep = None
    if "mean" in pcfg and "std" in pcfg:
        prep = Preprocessing(
            0, tuple(pcfg["mean"]), tuple(pcfg["std"]), str(pcfg.get("interpolation", "bicubic"))
        )
    return _from_timm_state_dict(
        sd,
        files[0],
        source=source,
        backbone=name,
        timm_kwargs=kwargs,
        class_names=cfg.get("label_names"),
        preprocessing=prep,
        notes=notes,
        **opts,
    )


def _native_img_size(
    sd: dict[str, torch.Tensor], arch_kwargs: dict[str, Any], prefix_tokens: int
) -> int | None:
    pos, proj = sd.get("pos_embed"), sd.get("patch_embed.proj.weight")
    if pos is None or pos.ndim != 3:
        return None
    patch = (
        int(proj.shape[-1]) if proj is not None and proj.ndim == 4 else int(arch_kwargs.get("patch_size", 16))
    )
    n = pos.shape[1] - prefix_tokens
    g = math.isqrt(max(n, 0))
    return g * patch if g * g == n else None


def _sd_hint(sd: dict[str, torch.Tensor]) -> Callable[[], str]:
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


def _from_timm_state_dict(
    sd: dict[str, torch.Tensor],
    path: Path,
    *,
    source: str,
    backbone: str | None,
    timm_kwargs: dict[str, Any] | None,
    notes: list[str],
    meta: dict[str, str] | None = None,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    **opts: Any,
) -> Backbone:
    info: dict[str, Any] = {}
    if meta and METADATA_KEY in meta:
        try:
            info = json.loads(meta[METADATA_KEY])
        except ValueError:
            info = {}
    if "arch" in info:  # written by vit-ft: it states its own architecture
        arch = copy.deepcopy(info["arch"])
        notes += _backbone_note(backbone, arch) if "patch_size" in arch["kwargs"] else []
        _merge_timm_kwargs(arch, timm_kwargs, notes)
        class_names = class_names or info.get("class_names")
        if info.get("preprocessing"):
            preprocessing = Preprocessing.from_dict({**info["preprocessing"], "img_size": 0})
    else:
        if not backbone:
            raise ConfigError(
                f"{path} is a timm state dict, which does not state its architecture; set model.backbone "
                "(e.g. vit_base_patch32_384) and model.timm_kwargs to match it"
            )
        kwargs = {k: v for k, v in (timm_kwargs or {}).items() if k != "pretrained_cfg_overlay"}
        arch = {"name": backbone, "kwargs": kwargs, "layer_norm_eps": None}
        if is_hf_vit_state_dict(sd):
            sd, unused = hf_to_timm(sd)
            arch["layer_norm_eps"] = HF_LAYER_NORM_EPS
            notes.append(
                f"{path.name} has transformers ViT keys: converted to timm, LayerNorm eps 1e-12 assumed "
                "(pass the model directory with its config.json to use the checkpoint's own settings)"
            )
    kw = arch["kwargs"]
    if "img_size" not in kw or "num_classes" not in kw:
        with torch.device("meta"):
            probe = create_from_arch({**arch, "kwargs": {**kw, "num_classes": 0}})
        prefix = 0 if getattr(probe, "no_embed_class", False) else int(getattr(probe, "num_prefix_tokens", 1))
        kw["img_size"] = _native_img_size(sd, kw, prefix) or int(probe.patch_embed.img_size[0])
        head_w = sd.get("head.weight")
        kw.setdefault("num_classes", int(head_w.shape[0]) if head_w is not None and head_w.ndim == 2 else 0)
    return _assemble(
        sd,
        arch,
        source=source,
        label=f"weights file {path}",
        class_names=class_names,
        preprocessing=preprocessing,
        notes=notes,
        hint=_sd_hint(sd),
        **opts,
    )


def _from_weight_file(
    path: Path, *, source: str, backbone: str | None, timm_kwargs: Any, **opts: Any
) -> Backbone:
    sibling_cfg = path.parent / "config.json"
    if path.name in ("model.safetensors", "pytorch_model.bin") and sibling_cfg.is_file():
        return _from_dir(path.parent, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts)
    if path.suffix == ".safetensors":
        sd, meta = _load_safetensors(path)
        sd, notes = _strip_prefixes(sd), []
    else:
        obj = torch_load_safely(path)
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("hyper_parameters"), dict)
            and "arch" in obj["hyper_parameters"]
        ):
            return _from_vit_ft_ckpt(
                path, obj, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts
            )
        notes = []
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "hyper_parameters" in obj:
            inner = obj["state_dict"]
            if inner and all(k.startswith("model.") for k in inner):
                obj = {k[len("model.") :]: v for k, v in inner.items()}
        sd, meta = _unwrap(obj, path, notes), {}
    return _from_timm_state_dict(
        sd, path, source=source, backbone=backbone, timm_kwargs=timm_kwargs, notes=notes, meta=meta, **opts
    )


def _from_vit_ft_ckpt(
    path: Path, ckpt: dict[str, Any], *, source: str, backbone: str | None, timm_kwargs: Any, **opts: Any
) -> Backbone:
    hp = ckpt["hyper_parameters"]
    arch = copy.deepcopy(dict(hp["arch"]))
    if not isinstance(arch.get("kwargs"), dict) or "name" not in arch:
        raise ConfigError(
            f"{path}: hyper_parameters.arch={arch!r} is not a vit-ft arch; the checkpoint is damaged"
        )
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{path} has no state_dict; it is not a complete vit-ft checkpoint")
    sd = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    if not sd:
        raise ConfigError(f"{path}: no 'model.*' weights in its state_dict; it is not a vit-ft checkpoint")
    notes: list[str] = []
    _merge_timm_kwargs(arch, timm_kwargs, notes)
    prep_d = hp.get("preprocessing")
    prep = Preprocessing.from_dict({**dict(prep_d), "img_size": 0}) if prep_d else None
    kw = arch["kwargs"]
    if "img_size" not in kw or "num_classes" not in kw:
        with torch.device("meta"):
            probe = create_from_arch({**arch, "kwargs": {**kw, "num_classes": 0}})
        kw.setdefault("img_size", int(probe.patch_embed.img_size[0]))
        head_w = sd.get("head.weight")
        kw.setdefault("num_classes", int(head_w.shape[0]) if head_w is not None and head_w.ndim == 2 else 0)
    names = hp.get("class_names")
    return _assemble(
        sd,
        arch,
        source=source,
        label=f"vit-ft checkpoint {path}",
        class_names=list(names) if names else None,
        preprocessing=prep,
        notes=notes,
        **opts,
    )


def _from_dir(path: Path, *, source: str, backbone: str | None, **opts: Any) -> Backbone:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise ConfigError(
            f"directory {path} has no config.json (found {found}); pass a transformers model directory "
            "(config.json + model.safetensors) or the weight file itself"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot read {cfg_file}: {_first_line(e)}; download or export the model again"
        ) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_file} is not a JSON object; download or export the model again")
    if "architecture" in cfg and "model_type" not in cfg:
        return _from_timm_dir(path, cfg, source=source, backbone=backbone, **opts)
    return _from_hf_dir(path, cfg, source=source, backbone=backbone, **opts)


def _npz_arch(w: Any, path: Path) -> tuple[dict[str, Any], int, bool]:
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


def _from_npz(path: Path, *, source: str, backbone: str | None, timm_kwargs: Any, **opts: Any) -> Backbone:
    from timm.models.vision_transformer import _load_weights

    try:
        with np.load(path, allow_pickle=False) as w:
            arch, classes, pre_logits = _npz_arch(w, path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, StopIteration) as e:
        raise _corrupt(path, e) from None
    notes = _backbone_note(backbone, arch)
    if pre_logits and classes:
        notes.append(
            f"{path.name} has a pre-logits layer that timm's ViT lacks: its {classes}-class head cannot be "
            "kept exactly and is replaced"
        )
        arch["kwargs"]["num_classes"] = 0
        classes = 0
    model = create_from_arch(arch)
    try:
        _load_weights(model, str(path))
    except (KeyError, RuntimeError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ConfigError(
            f"cannot load {path} into a {arch['name']} ({_first_line(e)}); the .npz is damaged or not a ViT"
        ) from None
    _merge_timm_kwargs(arch, timm_kwargs, notes)
    return _assemble(
        model.state_dict(),
        arch,
        source=source,
        label=f"npz checkpoint {path}",
        class_names=None,
        preprocessing=Preprocessing(0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
        notes=notes,
        **opts,
    )


# ----- hub sources -----


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> str | None:
    """The hub cache implied by the environment now (HF_HUB_CACHE, else HF_HOME/hub), None = default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _cache_text() -> str:
    from huggingface_hub import constants

    return f"the Hugging Face cache {hub_cache_dir() or constants.HF_HUB_CACHE}"


def hub_offline() -> bool:
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _hub_error(source: str, e: BaseException) -> ConfigError:
    from huggingface_hub import errors

    local = "or pass a local path instead: model.weights=/path/to/model_dir (config.json + model.safetensors)"
    if isinstance(e, errors.GatedRepoError):
        return ConfigError(
            f"hub model {source!r} is gated; accept its terms and log in (hf auth login), {local}"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return ConfigError(
            f"{source!r} is no Hugging Face hub model (nor a local path); check the id, {local}"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return ConfigError(f"hub model {source!r}: no such revision; check the part after '@', {local}")
    if isinstance(e, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled)) or hub_offline():
        cache = _cache_text()
        why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the hub cannot be reached ({_first_line(e)})"
        return ConfigError(
            f"hub model {source!r} is not in {cache} and {why}; download it once online "
            f"(hf download {source.split('@')[0]}), {local}"
        )
    return ConfigError(f"cannot fetch hub model {source!r}: {_first_line(e)}; {local}")


def _snapshot(repo_id: str, revision: str | None, source: str) -> Path:
    from huggingface_hub import errors, snapshot_download

    kwargs = {
        "repo_id": repo_id,
        "revision": revision,
        "cache_dir": hub_cache_dir(),
        "local_files_only": hub_offline(),
    }
    base = ["config.json", "preprocessor_config.json"]
    try:
        path = Path(
            snapshot_download(allow_patterns=[*base, "*.safetensors", "*.safetensors.index.json"], **kwargs)
        )
        if not any(path.glob("*.safetensors")):  # old repos: pytorch_model.bin only
            path = Path(
                snapshot_download(
                    allow_patterns=[
                        *base,
                        "pytorch_model.bin",
                        "pytorch_model.bin.index.json",
                        "pytorch_model-*.bin",
                    ],
                    **kwargs,
                )
            )
    except (
        errors.HfHubHTTPError,
        errors.LocalEntryNotFoundError,
        errors.OfflineModeIsEnabled,
        errors.HFValidationError,
        OSError,
        ValueError,
    ) as e:
        raise _hub_error(source, e) from None
    return path


def _from_hub(source: str, **opts: Any) -> Backbone:
    repo_id, _, revision = source.partition("@")
    path = _snapshot(repo_id, revision or None, source)
    if not (path / "config.json").is_file():
        raise ConfigError(f"hub model {source!r} has no config.json; it is not a transformers or timm model")
    return _from_dir(path, source=source, **opts)


def _timm_tag(source: str) -> str | None:
    """The timm pretrained name of ``source`` (``timm/x.tag`` or ``x.tag`` or ``x``), else None."""
    name = source[len("timm/") :] if source.startswith("timm/") else source
    if "/" in name or not name:
        return None
    if timm.is_model(name.split(".")[0]):
        return name
    return name if source.startswith("timm/") else None


def _check_timm_tag(name: str, source: str) -> None:
    base, _, tag = name.partition(".")
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=4, cutoff=0.6)
        raise ConfigError(
            f"weights={source!r}: {base!r} is not a timm model (similar: {close}); "
            "see timm.list_pretrained('vit_*')"
        )
    tags = timm.list_pretrained(f"{base}.*")
    if not tags:
        raise ConfigError(
            f"weights={source!r}: timm has no pretrained weights for {base}; "
            "pick one of timm.list_pretrained('vit_*')"
        )
    if tag and name not in tags:
        raise ConfigError(
            f"weights={source!r}: timm has no pretrained tag {tag!r} for {base}; available: {tags[:8]}"
        )


def _from_timm_pretrained(
    name: str,
    *,
    source: str,
    backbone: str | None,
    img_size: int | None,
    num_classes: int | None,
    reset_head: bool,
    timm_kwargs: dict[str, Any] | None,
) -> Backbone:
    from huggingface_hub import errors

    if not name.startswith("hf-hub:"):
        _check_timm_tag(name, source)
    kwargs = dict(timm_kwargs or {})
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    kwargs.pop("num_classes", None)
    notes: list[str] = []
    from huggingface_hub import constants

    offline = hub_offline()
    was_offline = constants.HF_HUB_OFFLINE
    try:
        # huggingface_hub reads HF_HUB_OFFLINE once, at import: apply the current environment
        constants.HF_HUB_OFFLINE = offline
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, cache_dir=hub_cache_dir(), **kwargs
        )
    except (errors.HfHubHTTPError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, OSError) as e:
        cache = _cache_text()
        why = "HF_HUB_OFFLINE is set" if offline else f"it cannot be downloaded ({_first_line(e)})"
        raise ConfigError(
            f"timm weights {source!r} are not in {cache} and {why}; download them once online, or pass a "
            "local file: model.weights=/path/to/model.safetensors with model.backbone set"
        ) from None
    except RuntimeError as e:
        raise ConfigError(
            f"timm weights {source!r} do not fit {name} with timm_kwargs={kwargs}: {_first_line(e)}; "
            "remove the architectural timm_kwargs"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = was_offline
    ckpt_classes = int(model.num_classes)
    keep, target, head_note = _head_decision(ckpt_classes, num_classes, reset_head)
    names = None
    if keep:
        names = _class_names_for(ckpt_classes, None, model)
        head_note += f" with {'its class names' if names else 'no class names'}"
    else:
        model.reset_classifier(target)
        zero_head(model)
    notes.append(head_note)
    size = int(model.patch_embed.img_size[0])
    if img_size is not None:
        notes.append(f"timm resampled the position embeddings to {size}px where the checkpoint differs")
    arch_kwargs = {k: v for k, v in kwargs.items()}
    arch_kwargs.update(img_size=size, num_classes=target)
    model.eval()
    return Backbone(
        model=model,
        arch={"name": name, "kwargs": arch_kwargs, "layer_norm_eps": None},
        preprocessing=preprocessing_from_timm(model, size),
        class_names=names,
        head_kept=keep,
        source=source,
        notes=notes,
    )


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith(("/", "./", "../", "~", ".\\"))
        or source.lower().endswith(WEIGHT_SUFFIXES)
        or source.count("/") > 1
        or "\\" in source
    )


def load_weights(
    source: str,
    *,
    backbone: str | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    reset_head: bool = False,
    timm_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """The network and everything about it that ``source`` states.

    ``source``: a local directory or file (transformers dir, timm ``.pth/.bin/.safetensors``,
    ``.npz``, vit-ft ``.ckpt``), a timm pretrained tag (``timm/name.tag`` / ``name.tag``) or a
    Hugging Face hub id (``org/name[@revision]``). ``backbone`` names the timm model for a plain timm
    state dict (other formats state their own architecture); ``img_size`` resamples the position
    embeddings; ``num_classes`` keeps a head of that size or replaces it with a zero one
    (``None``: keep any head); ``reset_head`` always replaces it. Every user-fixable problem raises
    :class:`ConfigError` with a one-line message.
    """
    source = str(source).strip()
    if not source:
        raise ConfigError("model.weights is empty; pass a path, a timm pretrained tag or a hub id, or null")
    if img_size is not None and int(img_size) <= 0:
        raise ConfigError(f"model.img_size={img_size} must be a positive multiple of the patch size")
    if num_classes is not None and int(num_classes) < 0:
        raise ConfigError(
            f"model.num_classes={num_classes} must be >= 0 (or null to keep the checkpoint head)"
        )
    timm_kwargs = dict(timm_kwargs or {})
    for key, value in (("img_size", img_size), ("num_classes", num_classes)):
        if key in timm_kwargs:  # the dedicated argument wins; timm_kwargs only fills in
            from_kwargs = timm_kwargs.pop(key)
            if value is None and key == "img_size":
                img_size = from_kwargs
            elif value is None:
                num_classes = from_kwargs
    opts: dict[str, Any] = {
        "img_size": None if img_size is None else int(img_size),
        "num_classes": None if num_classes is None else int(num_classes),
        "reset_head": bool(reset_head),
    }
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_dir(path, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts)
    if path.is_file():
        if path.suffix == ".npz":
            return _from_npz(path, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts)
        return _from_weight_file(path, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts)
    if path.exists():
        raise ConfigError(f"model.weights={source!r} is neither a file nor a directory")
    if source.startswith("hf-hub:"):
        return _from_timm_pretrained(
            source, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts
        )
    if _looks_like_path(source):
        raise ConfigError(
            f"weights file {source!r} does not exist (cwd {os.getcwd()}); pass an existing path (absolute, or "
            "relative to the launch directory), a timm pretrained tag or a hub id"
        )
    tag = _timm_tag(source)
    if tag is not None:
        return _from_timm_pretrained(tag, source=source, backbone=backbone, timm_kwargs=timm_kwargs, **opts)
    if source.count("/") == 1:
        return _from_hub(source, backbone=backbone, timm_kwargs=timm_kwargs, **opts)
    raise ConfigError(
        f"model.weights={source!r} is neither an existing path, a timm pretrained tag (e.g. "
        "vit_base_patch32_384.augreg_in21k_ft_in1k) nor a Hugging Face hub id (e.g. google/vit-base-patch32-384)"
    )
