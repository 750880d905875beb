"""A transformers model directory (``config.json`` + weights + ``preprocessor_config.json``) of any
family in :data:`~vit_ft.weights.families.FAMILIES` -> a :class:`Checkpoint` of the matching timm network.

The family file does what differs (its arch, key table, head); this module reads the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vit_ft.errors import ConfigError
from vit_ft.preprocessing import PIL_FILTERS, Preprocessing
from vit_ft.weights.arch import backbone_note, merge_timm_kwargs
from vit_ft.weights.families import HF_MODEL_TYPES, by_model_type
from vit_ft.weights.families.common import ReadResult, table_to_timm
from vit_ft.weights.found import Checkpoint
from vit_ft.weights.io import first_line, read_state_dict


def _processor_sizes(cfg: dict[str, Any]) -> tuple[int | None, float | None]:
    """(the square size the network sees, crop_pct) of a transformers image processor config:
    ``size`` (``height``/``width`` or ``shortest_edge``) and, with ``do_center_crop``, ``crop_size``."""

    def side(value: Any) -> int | None:
        if isinstance(value, dict):
            if "shortest_edge" in value:
                return int(value["shortest_edge"])
            if "height" in value and value.get("height") == value.get("width"):
                return int(value["height"])
            return None
        return int(value) if isinstance(value, (int, float)) else None

    resize = side(cfg.get("size")) if cfg.get("do_resize", True) else None
    crop = side(cfg.get("crop_size")) if cfg.get("do_center_crop", False) else None
    if crop is None:
        return resize, None
    return crop, (crop / resize if resize else None)


def _preprocessing_from_hf(path: Path, img_size: int, notes: list[str]) -> Preprocessing:
    file = path / "preprocessor_config.json"
    if not file.is_file():
        notes.append(f"{path} has no preprocessor_config.json: assuming ViT's mean/std 0.5, bilinear resize")
        return Preprocessing(img_size)
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {file}: {first_line(e)}; fix or delete the file") from None
    if cfg.get("do_normalize", True):
        mean = tuple(float(v) for v in cfg.get("image_mean", (0.5, 0.5, 0.5)))
        std = tuple(float(v) for v in cfg.get("image_std", (0.5, 0.5, 0.5)))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = cfg.get("resample", 2)
    interp = PIL_FILTERS.get(int(resample), "bilinear") if isinstance(resample, int) else str(resample)
    size, crop_pct = _processor_sizes(cfg)
    return Preprocessing(size or img_size, mean, std, interp, crop_pct)  # type: ignore[arg-type]


def _hf_weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"cannot read {index}: {first_line(e)}; download the model again") from None
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


def _hf_class_names(cfg: dict[str, Any]) -> list[str] | None:
    id2label = cfg.get("id2label") or {}
    names = None
    if id2label:
        try:
            names = [str(id2label.get(str(i), id2label.get(i))) for i in range(len(id2label))]  # type: ignore[call-overload]
        except TypeError:
            names = None
    if names is not None and names == [f"LABEL_{i}" for i in range(len(names))]:
        names = None  # transformers' placeholder names
    return names


def read_hf_dir(
    path: Path, cfg: dict[str, Any], *, backbone: str | None, timm_kwargs: dict[str, Any] | None
) -> Checkpoint:
    """A transformers directory of a family vit-ft reads (:data:`HF_MODEL_TYPES`): config.json (the
    arch, ``id2label``), weights (sharded or not), preprocessor_config.json. CLIP and SigLIP: the
    vision tower."""
    where = str(path / "config.json")
    model_type = str(cfg.get("model_type"))
    fam = by_model_type(model_type) if isinstance(cfg.get("model_type"), str) else None
    if fam is None:
        raise ConfigError(
            f"{where} describes model_type={cfg.get('model_type')!r}, which vit-ft does not read; supported "
            f"transformers model types: {', '.join(HF_MODEL_TYPES)} (or pass a timm checkpoint with model.backbone)"
        )
    arch = fam.arch_from_hf(cfg, where)
    notes: list[str] = backbone_note(backbone, arch)
    merge_timm_kwargs(arch, timm_kwargs, notes)
    raw, n = _read_dir_weights(path)
    notes += n
    kw = arch["kwargs"]
    sd, heads, unused = table_to_timm(fam, model_type, fam.prepare(raw, kw) if fam.prepare else raw)
    if unused:
        what = fam.what or f"a transformers {model_type} vision model"
        hint = fam.mismatch or "the files do not match config.json - download or export the model again"
        raise ConfigError(
            f"{path}: {len(unused)} weights are not part of {what} (e.g. {unused[0]!r}); {hint}"
        )
    sd = fam.finish_read(ReadResult(sd, heads, raw, model_type, kw, notes))
    prep = _preprocessing_from_hf(path, int(kw["img_size"]), notes)
    kind = "" if model_type == "vit" else f"{model_type} "
    return Checkpoint(
        sd,
        arch,
        label=f"transformers {kind}checkpoint {path}",
        class_names=_hf_class_names(cfg) if "head.weight" in sd else None,
        class_names_from=False,
        preprocessing=prep,
        notes=notes,
        pos_antialias=model_type in fam.pos_antialias,
        thresholds=_hf_thresholds(cfg, int(sd["head.weight"].shape[0])) if "head.weight" in sd else None,
    )


def _hf_thresholds(cfg: dict[str, Any], k: int) -> list[float] | None:
    """A multi-label head's thresholds (``problem_type: multi_label_classification``; vit-ft writes
    ``thresholds`` beside it, 0.5 each without)."""
    if cfg.get("problem_type") != "multi_label_classification" or k < 1:
        return None
    thr = cfg.get("thresholds")
    return [float(t) for t in thr] if isinstance(thr, list) and len(thr) == k else [0.5] * k
