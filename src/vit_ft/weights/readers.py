"""One reader per checkpoint format: each returns the tensors (timm keys) and what the file states.

A reader returns a :class:`Checkpoint` (state dict at the checkpoint's own resolution and head, its
``arch``, class names, preprocessing, notes); :mod:`vit_ft.weights.assemble` turns it into the
requested network. What the checkpoint states (width, depth, heads, MLP size, patch size,
resolution, qkv bias, LayerNorm eps) decides the network; only a timm state dict, which does not
state its head count or eps, takes them from the named backbone (and is checked against it).
"""

from __future__ import annotations

import copy
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vit_ft.checkpoint_format import (
    EMA_PREFIX,
    LORA_RECORD,
    MODEL_PREFIX,
    ema_chosen,
    feature_record,
    has_prefix,
    multilabel_thresholds,
    strip_prefix,
)
from vit_ft.compat import load_vit_npz
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing
from vit_ft.weights.allowlist import check_checkpoint_hparams
from vit_ft.weights.arch import (
    HF_LAYER_NORM_EPS,
    arch_from_npz,
    backbone_note,
    create_from_arch,
    head_classes,
    merge_timm_kwargs,
    meta_defaults,
    native_img_size,
    state_dict_hint,
)
from vit_ft.weights.families.vit import hf_to_timm, is_hf_vit_state_dict
from vit_ft.weights.found import Checkpoint, TimmPretrained
from vit_ft.weights.hf_dir import read_hf_dir
from vit_ft.weights.hub import create_timm_pretrained
from vit_ft.weights.io import (
    METADATA_KEY,
    corrupt_file_error,
    first_line,
    load_safetensors,
    read_state_dict,
    strip_prefixes,
    torch_load_safely,
    unwrap_state_dict,
)
from vit_ft.weights.lora import merged_state_dict
from vit_ft.weights.sources import check_timm_tag

__all__ = ["Checkpoint", "TimmPretrained", "read_dir", "read_npz", "read_timm_pretrained", "read_weight_file"]
# (source, **load_weights arguments) -> a Backbone: how a LoRA checkpoint rebuilds an omitted base
LoadBase = Callable[..., Any]


def read_dir(path: Path, *, backbone: str | None, timm_kwargs: dict[str, Any] | None) -> Checkpoint:
    """A model directory: timm hub-style (config.json with ``architecture``) or transformers."""
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
            f"cannot read {cfg_file}: {first_line(e)}; download or export the model again"
        ) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_file} is not a JSON object; download or export the model again")
    if "architecture" in cfg and "model_type" not in cfg:
        return read_timm_dir(path, cfg, timm_kwargs=timm_kwargs)
    return read_hf_dir(path, cfg, backbone=backbone, timm_kwargs=timm_kwargs)


def read_timm_dir(path: Path, cfg: dict[str, Any], *, timm_kwargs: dict[str, Any] | None) -> Checkpoint:
    """A timm hub-style directory: config.json with ``architecture``, ``num_classes``, ``pretrained_cfg``."""
    name = str(cfg["architecture"])
    kwargs = dict(cfg.get("model_args") or {})
    kwargs.update(timm_kwargs or {})
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
        if pcfg.get("crop_pct") is not None:  # timm's eval crop (its default 0.875 is not assumed)
            prep.crop_pct = float(pcfg["crop_pct"])
            prep.crop_mode = "squash" if pcfg.get("crop_mode") == "squash" else "center"
    return read_timm_state_dict(
        sd,
        files[0],
        backbone=name,
        timm_kwargs=kwargs,
        class_names=cfg.get("label_names"),
        preprocessing=prep,
        notes=notes,
    )


def read_timm_state_dict(
    sd: dict[str, torch.Tensor],
    path: Path,
    *,
    backbone: str | None,
    timm_kwargs: dict[str, Any] | None,
    notes: list[str],
    meta: dict[str, str] | None = None,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> Checkpoint:
    """A timm state dict: its arch from vit-ft's safetensors metadata when present, else from
    ``backbone`` + ``timm_kwargs``, with the resolution and head read off the tensors (timm's
    defaults for the arch come from a build on the meta device: no weights)."""
    info: dict[str, Any] = {}
    if meta and METADATA_KEY in meta:
        try:
            info = json.loads(meta[METADATA_KEY])
        except ValueError:
            info = {}
    if "arch" in info:  # written by vit-ft: it states its own architecture
        arch = copy.deepcopy(info["arch"])
        notes += backbone_note(backbone, arch) if "patch_size" in arch["kwargs"] else []
        merge_timm_kwargs(arch, timm_kwargs, notes)
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
        default_size, prefix = meta_defaults(arch)
        kw["img_size"] = native_img_size(sd, kw, prefix) or default_size
        kw.setdefault("num_classes", head_classes(sd))
    thr = info.get("thresholds")  # a multi-label head's (vit-ft's metadata)
    return Checkpoint(
        sd,
        arch,
        label=f"weights file {path}",
        class_names=class_names,
        preprocessing=preprocessing,
        notes=notes,
        thresholds=[float(t) for t in thr] if isinstance(thr, list) else None,
        hint=state_dict_hint(sd),
    )


def read_weight_file(
    path: Path,
    *,
    backbone: str | None,
    timm_kwargs: dict[str, Any] | None,
    load_base: LoadBase,
    purpose: str = "eval",
) -> Checkpoint:
    """A weight file: the weights of a model directory, a vit-ft ``.ckpt`` or a timm state dict
    (raw or wrapped; a Lightning checkpoint's ``model.*`` weights). ``purpose``: see :func:`ema_chosen`;
    ``load_base``: :func:`~vit_ft.weights.load.load_weights`, passed in (no import cycle)."""
    sibling_cfg = path.parent / "config.json"
    if path.name in ("model.safetensors", "pytorch_model.bin") and sibling_cfg.is_file():
        return read_dir(path.parent, backbone=backbone, timm_kwargs=timm_kwargs)
    if path.suffix == ".safetensors":
        sd, meta = load_safetensors(path)
        sd, notes = strip_prefixes(sd), []
    else:
        obj = torch_load_safely(path)
        if (
            isinstance(obj, dict)
            and isinstance(obj.get("hyper_parameters"), dict)
            and "arch" in obj["hyper_parameters"]
        ):
            return read_vit_ft_ckpt(path, obj, timm_kwargs=timm_kwargs, load_base=load_base, purpose=purpose)
        notes = []
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "hyper_parameters" in obj:
            inner = obj["state_dict"]
            if inner and all(k.startswith(MODEL_PREFIX) for k in inner):
                obj = strip_prefix(inner, MODEL_PREFIX)
        sd, meta = unwrap_state_dict(obj, path, notes), {}
    return read_timm_state_dict(sd, path, backbone=backbone, timm_kwargs=timm_kwargs, notes=notes, meta=meta)


def read_vit_ft_ckpt(
    path: Path,
    ckpt: dict[str, Any],
    *,
    timm_kwargs: dict[str, Any] | None,
    load_base: LoadBase,
    purpose: str = "eval",
) -> Checkpoint:
    """A vit-ft Lightning ``.ckpt`` (already loaded): ``hyper_parameters`` hold ``arch``,
    ``class_names`` and ``preprocessing``; the network's weights are ``state_dict['model.*']``, or its
    EMA ``state_dict['model_ema.*']`` when :func:`ema_chosen` says so for ``purpose``
    (an arch without img_size takes timm's default from a build on the meta device: no weights)."""
    hp = ckpt["hyper_parameters"]
    check_checkpoint_hparams(hp, str(path))  # allow-lists: nothing else reaches timm
    arch = copy.deepcopy(dict(hp["arch"]))
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{path} has no state_dict; it is not a complete vit-ft checkpoint")
    notes: list[str] = []
    prefix = MODEL_PREFIX
    if ema_chosen(hp.get("ema"), purpose):
        if has_prefix(state, EMA_PREFIX):
            prefix = EMA_PREFIX
            notes.append(f"the EMA weights (model.ema.use_for={hp['ema'].get('use_for', 'eval')})")
        else:
            notes.append("no EMA weights in the checkpoint: the raw weights")
    sd = strip_prefix(state, prefix)
    if not sd:
        raise ConfigError(f"{path}: no 'model.*' weights in its state_dict; it is not a vit-ft checkpoint")
    lora = feature_record(ckpt, LORA_RECORD)
    if lora:  # a LoRA run's checkpoint: its base (rebuilt when omitted) with the adapters merged in
        sd = merged_state_dict(sd, copy.deepcopy(arch), lora, str(path), load_base)
    merge_timm_kwargs(arch, timm_kwargs, notes)
    prep_d = hp.get("preprocessing")
    prep = Preprocessing.from_dict({**dict(prep_d), "img_size": 0}) if prep_d else None
    kw = arch["kwargs"]
    if "img_size" not in kw or "num_classes" not in kw:
        kw.setdefault("img_size", meta_defaults(arch)[0])
        kw.setdefault("num_classes", head_classes(sd))
    names = hp.get("class_names")
    thresholds = None
    if hp.get("task") == "multilabel":  # the per-class thresholds chosen on val (0.5 when none were)
        thresholds = multilabel_thresholds(ckpt) or [0.5] * int(kw["num_classes"])
    return Checkpoint(
        sd,
        arch,
        label=f"vit-ft checkpoint {path}",
        class_names=list(names) if names else None,
        preprocessing=prep,
        notes=notes,
        thresholds=thresholds,
    )


def read_npz(path: Path, *, backbone: str | None, timm_kwargs: dict[str, Any] | None) -> Checkpoint:
    """An original google-research / big_vision ViT ``.npz``. Builds the network: timm's .npz loader
    (:func:`vit_ft.compat.load_vit_npz`) knows the flax names only as a copy into a model."""
    try:
        with np.load(path, allow_pickle=False) as w:
            arch, classes, pre_logits = arch_from_npz(w, path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, StopIteration) as e:
        raise corrupt_file_error(path, e) from None
    notes = backbone_note(backbone, arch)
    if pre_logits and classes:
        notes.append(
            f"{path.name} has a pre-logits layer that timm's ViT lacks: its {classes}-class head cannot be "
            "kept exactly and is replaced"
        )
        arch["kwargs"]["num_classes"] = 0
        classes = 0
    model = create_from_arch(arch)
    try:
        load_vit_npz(model, path)
    except (KeyError, RuntimeError, ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ConfigError(
            f"cannot load {path} into a {arch['name']} ({first_line(e)}); the .npz is damaged or not a ViT"
        ) from None
    merge_timm_kwargs(arch, timm_kwargs, notes)
    return Checkpoint(
        model.state_dict(),
        arch,
        label=f"npz checkpoint {path}",
        class_names=None,
        preprocessing=Preprocessing(0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
        notes=notes,
    )


def read_timm_pretrained(
    name: str, *, source: str, img_size: int | None, timm_kwargs: dict[str, Any] | None
) -> TimmPretrained:
    """A timm pretrained tag (or ``hf-hub:`` name). Builds the network: timm creates it with its
    weights (resampling the position embeddings itself when ``img_size`` is given)."""
    if not name.startswith("hf-hub:"):
        check_timm_tag(name, source)
    kwargs = dict(timm_kwargs or {})
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    kwargs.pop("num_classes", None)
    model = create_timm_pretrained(name, source=source, overlay=overlay, kwargs=kwargs)
    return TimmPretrained(model, name, kwargs)
