"""ONNX files written by vit-ft, read back: the names both sides share (input, output, metadata keys,
the external data file), ONNX Runtime's providers, and :func:`open_onnx` / :func:`read_metadata` /
:func:`describe`, which give an :class:`OnnxNet` (the file run in ONNX Runtime: CUDA when present and
asked for, else CPU) with the preprocessing and class names stored in the file; one line for a missing,
foreign or damaged file, or an external data file that did not travel with it. Writing is
:mod:`vit_ft.weights.onnx`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vit_ft.checkpoint_format import MULTILABEL_ATTR
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing
from vit_ft.weights.io import first_line

DATA_SUFFIX = ".data"  # model.onnx -> model.onnx.data, the weights of a network over onnx.MAX_BYTES
INPUT, OUTPUT = "pixel_values", "logits"
EXTRA = 'pip install -e ".[onnx]"'
META_KEYS = (
    "vit_ft_version",
    "class_names",
    "img_size",
    "mean",
    "std",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "dtype",
    "arch",
    "input",
    "verification",
    "thresholds",
)
INPUT_TEXT = (
    "pixel_values: float NCHW RGB, resized as img_size/interpolation/crop_pct say, (x/255 - mean) / std"
)


def require(*modules: str) -> None:
    """One :class:`ConfigError` line naming the extra when ``onnx`` / ``onnxruntime`` is missing."""
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(
                f"ONNX export and prediction need the {name} package, which is not installed; run {EXTRA}"
            ) from None


def providers(device: str = "auto") -> list[str]:
    """ONNX Runtime providers for ``device`` (``auto``: CUDA when ONNX Runtime has it, else CPU)."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    name = str(device or "auto")
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name.startswith("cuda"):
        if "CUDAExecutionProvider" not in have:
            raise ConfigError(
                f"device={name!r} but this onnxruntime has no CUDA provider (it has {', '.join(have)}); "
                "install onnxruntime-gpu or pass device=cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if name != "auto":
        raise ConfigError(f"device={name!r} cannot run an ONNX file; use auto, cpu or cuda")
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def data_file(path: str | os.PathLike) -> Path:
    """Where the weights of a network over :data:`MAX_BYTES` live: ``model.onnx`` -> ``model.onnx.data``."""
    path = Path(path)
    return path.with_name(path.name + DATA_SUFFIX)


class OnnxNet(nn.Module):
    """An ONNX Runtime session as a module: normalised float images in, float32 logits out (on the
    input's device)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32
        self.provider = session.get_providers()[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().numpy().astype(self.input_dtype)
        out = self.session.run([OUTPUT], {INPUT: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def _bad(path: str, what: str) -> ConfigError:
    return ConfigError(
        f"weights={path!r} {what}; pass an ONNX file written by "
        "python export.py ckpt_path=<run>/checkpoints/best.ckpt format=onnx out=model.onnx"
    )


def read_metadata(path: str | os.PathLike) -> tuple[dict[str, str], Any]:
    """(the file's ``metadata_props``, an ONNX Runtime CPU session); one line for an unreadable file."""
    require("onnxruntime")
    import onnxruntime as ort

    src = str(path)
    p = Path(src).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"weights={src!r} does not exist (cwd {Path.cwd()}); pass the path of an .onnx file"
        )
    try:
        session = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidProtobuf / ...
        missing = missing_data_files(p)
        if missing:
            raise ConfigError(
                f"weights={src!r} keeps its weights in {', '.join(map(str, missing))}, which is missing; "
                f"copy or download the .onnx together with its {missing[0].name} file"
            ) from None
        raise _bad(src, f"is not a readable ONNX model ({first_line(e)[:160]})") from None
    return dict(session.get_modelmeta().custom_metadata_map), session


def missing_data_files(path: Path) -> list[Path]:
    """The external data files ``path``'s graph names that are not beside it (none for a one-file model
    or one that cannot be parsed)."""
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, uses_external_data

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - no onnx package or no model: ONNX Runtime's message stands
        return []
    found = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    return [path.parent / loc for loc in sorted(found) if not (path.parent / loc).is_file()]


def parse_metadata(meta: dict[str, str], path: str) -> tuple[Preprocessing, list[str]]:
    """The preprocessing and class names :func:`vit_ft.weights.onnx.metadata` wrote; one line for a foreign file."""
    missing = [k for k in ("class_names", "img_size", "mean", "std") if k not in meta]
    if missing:
        raise _bad(
            path, f"holds no vit-ft metadata ({', '.join(missing)} missing), so its preprocessing is unknown"
        )
    try:
        names = json.loads(meta["class_names"])
        pre = {
            "img_size": int(meta["img_size"]),
            "mean": json.loads(meta["mean"]),
            "std": json.loads(meta["std"]),
            "interpolation": meta.get("interpolation", "bilinear"),
            "crop_pct": json.loads(meta.get("crop_pct", "null")),
            "crop_mode": meta.get("crop_mode", "center"),
        }
    except (TypeError, ValueError) as e:
        raise _bad(path, f"has damaged vit-ft metadata ({first_line(e)})") from None
    if not isinstance(names, list) or not names:
        raise _bad(path, "has damaged vit-ft metadata (class_names is not a list of names)")
    return Preprocessing.from_dict(pre), [str(n) for n in names]


def open_onnx(path: str | os.PathLike, device: str = "auto") -> tuple[OnnxNet, Preprocessing, list[str]]:
    """An :class:`OnnxNet` for a vit-ft ONNX file, with its preprocessing and class names."""
    import onnxruntime as ort

    meta, session = read_metadata(path)
    pre, names = parse_metadata(meta, str(path))
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT] or OUTPUT not in [o.name for o in outputs]:
        raise _bad(
            str(path), f"has inputs {[i.name for i in inputs]}, not the single {INPUT!r} vit-ft writes"
        )
    chosen = providers(device)
    if chosen != ["CPUExecutionProvider"]:
        session = ort.InferenceSession(str(Path(str(path)).expanduser()), providers=chosen)
    net = OnnxNet(session)
    if meta.get("thresholds"):  # a multi-label head: sigmoid and these per-class thresholds
        thresholds = [float(t) for t in json.loads(meta["thresholds"])]
        if len(thresholds) != len(names):
            raise _bad(str(path), f"has {len(thresholds)} thresholds for {len(names)} classes")
        setattr(net, MULTILABEL_ATTR, thresholds)
    return net, pre, names


def describe(path: str | os.PathLike) -> list[str]:
    """Lines for ``python -m vit_ft.onnx_info``: the metadata, the input/output and the opset."""
    meta, session = read_metadata(path)
    pre, names = parse_metadata(meta, str(path))
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    lines = [str(path)]
    lines.append(f"  classes        : {len(names)}: {shown}")
    lines.append(f"  img_size       : {pre.img_size}")
    lines.append(f"  mean / std     : {list(pre.mean)} / {list(pre.std)}")
    lines.append(f"  interpolation  : {pre.interpolation}")
    crop = "none (plain resize to img_size)" if pre.crop_pct is None else f"{pre.crop_pct} ({pre.crop_mode})"
    lines.append(f"  crop_pct       : {crop}")
    for key in ("dtype", "arch", "vit_ft_version", "thresholds"):
        if meta.get(key):
            lines.append(f"  {key:<15}: {meta[key]}")
    for kind, items in (("input", session.get_inputs()), ("output", session.get_outputs())):
        for i in items:
            lines.append(f"  {kind:<15}: {i.name} {i.type} {list(i.shape)}")
    if meta.get("verification"):
        try:
            v = json.loads(meta["verification"])
            rows = ", ".join(
                f"batch {r['batch']} max |dlogit| {r['max_abs_dlogit']:.3g}, top-1 {r['top1_agree']}/{r['batch']}"
                for r in v["rows"]
            )
            lines.append(f"  verified       : {rows} (tolerance {v['rtol']:g} relative; {v['inputs']})")
        except (ValueError, KeyError, TypeError):
            lines.append(f"  verified       : {meta['verification']}")
    lines.append(f"  preprocessing  : {INPUT_TEXT}")
    return lines
