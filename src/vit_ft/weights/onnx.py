"""ONNX files of a network: written verified, read back with their preprocessing and class names.

:func:`write_onnx` exports a network that maps normalised images ``pixel_values`` (float ``[B, 3, H, W]``)
to ``logits`` (``[B, classes]``), with a dynamic batch axis, through PyTorch's TorchScript exporter at
opset 17 (what ONNX Runtime and TensorRT >= 8.6 read). That exporter handles every timm ViT vit-ft
trains, fused attention (``F.scaled_dot_product_attention``) included, in well under a second for a small
one; the dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is the fallback when it fails (in torch
2.14 the dynamo exporter cannot decompose BEiT and takes 5-10 s per model). ``dtype=fp16`` exports a
half-precision copy (fp16 input and output).

The file is written beside the target and kept (renamed onto the target) only when ONNX Runtime's logits
match PyTorch's (:mod:`~vit_ft.weights.onnx_verify`); else :class:`~vit_ft.errors.RunFault` (one line)
and no file. A network of :data:`MAX_BYTES` or more (protobuf's 2 GB limit on one file: ViT-H/14 in fp32,
DINOv2 ViT-g) is written as ONNX external data: ``model.onnx`` (the graph and the metadata) and its
weights in ONE file beside it, ``model.onnx.data`` (:func:`data_file`; its ``location`` is relative, so
the pair moves together). That pair is built and verified in a private folder beside the target, then
moved into place; a failure leaves neither.

The preprocessing travels in the file's ``metadata_props`` (:data:`META_KEYS`): ``class_names`` and
``mean``/``std`` as JSON lists, ``img_size``, ``interpolation``, ``crop_pct`` (JSON, null: plain resize),
``crop_mode``, ``vit_ft_version``, ``dtype``, ``arch`` (the timm model), ``input``, and ``verification``
(what the check measured); ``thresholds``, a multi-label head's per-class thresholds (JSON). :func:`open_onnx` reads them
back (:mod:`~vit_ft.weights.onnx_read`) into a :class:`~vit_ft.preprocessing.Preprocessing` and an
:class:`~vit_ft.weights.onnx_read.OnnxNet` that runs the file in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vit_ft
from vit_ft.errors import ConfigError, RunFault
from vit_ft.io import atomic_path
from vit_ft.preprocessing import Preprocessing
from vit_ft.weights.io import first_line
from vit_ft.weights.onnx_read import INPUT, INPUT_TEXT, OUTPUT, OnnxNet, data_file, require
from vit_ft.weights.onnx_verify import Verification, verify

OPSET = 17  # ONNX Runtime >= 1.14, TensorRT >= 8.6
OPSETS = (17, 18)
DTYPES = ("fp32", "fp16")
MAX_BYTES = 2**31 - 2**26  # protobuf's 2 GiB, less room for the graph: above it, external data


class _Forward(nn.Module):
    """``net(x)`` with ``x`` as the only argument: tracing timm's EVA directly turns its
    ``is_causal=False`` default into a tensor, which ``F.scaled_dot_product_attention`` refuses."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _exporter_options(exporter: str, external: bool = False) -> dict[str, Any]:
    """What differs between the two exporters: the dynamic batch axis, constant folding, one file
    (``external``: external data; the TorchScript exporter switches to it by itself over 2 GB)."""
    if exporter == "torchscript":
        return {
            "dynamo": False,
            "dynamic_axes": {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            "do_constant_folding": True,
        }
    return {
        "dynamo": True,
        "dynamic_shapes": {"x": {0: torch.export.Dim("batch", min=1)}},
        "external_data": external,
        "verbose": False,
    }


def _export(net: nn.Module, example: torch.Tensor, path: Path, opset: int, external: bool = False) -> str:
    """Write ``net`` to ``path`` (TorchScript exporter, else dynamo); return the exporter used."""
    errors = []
    for exporter in ("torchscript", "dynamo"):
        noise = io.StringIO()  # the exporters' progress lines and deprecation warnings
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(noise):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    net,
                    (example,),
                    str(path),
                    opset_version=opset,
                    input_names=[INPUT],
                    output_names=[OUTPUT],
                    **_exporter_options(exporter, external),
                )
            return exporter
        except Exception as e:  # noqa: BLE001 - any exporter failure: try the other, then one line
            errors.append(f"{exporter}: {first_line(e)[:200]}")
            path.unlink(missing_ok=True)
    raise RunFault(f"ONNX export failed ({'; '.join(errors)}); export format=timm or hf instead")


def metadata(
    preprocessing: Preprocessing, class_names: list[str], *, dtype: str, arch: dict[str, Any] | None
) -> dict[str, str]:
    pre = preprocessing
    return {
        "vit_ft_version": vit_ft.__version__,
        "class_names": json.dumps(list(class_names), ensure_ascii=False),
        "img_size": str(int(pre.img_size)),
        "mean": json.dumps([float(v) for v in pre.mean]),
        "std": json.dumps([float(v) for v in pre.std]),
        "interpolation": str(pre.interpolation),
        "crop_pct": json.dumps(pre.crop_pct),
        "crop_mode": str(pre.crop_mode),
        "dtype": dtype,
        "arch": str((arch or {}).get("name") or ""),
        "input": INPUT_TEXT,
    }


def write_onnx(
    net: nn.Module,
    target: str | os.PathLike,
    *,
    preprocessing: Preprocessing,
    class_names: list[str],
    inputs: torch.Tensor,
    inputs_text: str = "fixed random inputs",
    dtype: str = "fp32",
    opset: int = OPSET,
    arch: dict[str, Any] | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> tuple[Path, Verification, str]:
    """Export ``net`` (normalised images -> logits) to ``target``, verified; see the module docstring.

    ``inputs``: normalised float images (at least 2 for the batch > 1 check). Returns the path, the
    verification and the exporter used; nothing is left at ``target`` (or beside it) on failure."""
    require("onnx", "onnxruntime")
    import onnx
    import onnxruntime as ort

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not supported for ONNX; use dtype=fp32 or fp16")
    if int(opset) not in OPSETS:
        raise ConfigError(f"opset={opset!r} is not supported; use opset=17 (default) or 18")
    target = Path(target)
    net = net.eval()
    half = dtype == "fp16"
    size = sum(t.numel() for t in net.state_dict().values()) * (2 if half else 4)
    exported = _Forward(copy.deepcopy(net).half() if half else net).eval()
    x = inputs.float()
    meta = metadata(preprocessing, class_names, dtype=dtype, arch=arch)
    meta.update(extra_metadata or {})
    if size >= MAX_BYTES:  # over what one protobuf holds: the graph and one external data file
        result, exporter = _write_external(exported, net, target, x, half, int(opset), meta, inputs_text)
        return target, result, exporter
    with atomic_path(target, suffix=".tmp.onnx") as tmp:
        with torch.inference_mode(False), torch.no_grad():
            exporter = _export(exported, x[:2].half() if half else x[:2], tmp, int(opset))
        model = onnx.load(str(tmp))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        result = verify(OnnxNet(session), net, x, dtype, inputs_text)
        meta["verification"] = result.to_json()
        _set_metadata(model, meta)
        onnx.save(model, str(tmp))
    data_file(target).unlink(missing_ok=True)  # a bigger network's weights from an earlier export
    return target, result, exporter


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The files an export wrote: the ``.onnx``, and its external data file when it has one (what a
    model card lists and a Hub push uploads)."""
    path = Path(path)
    return [path] + [data_file(path)] * data_file(path).is_file()


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _write_external(
    exported: nn.Module,
    net: nn.Module,
    target: Path,
    x: torch.Tensor,
    half: bool,
    opset: int,
    meta: dict[str, str],
    inputs_text: str,
) -> tuple[Verification, str]:
    """:func:`write_onnx` over :data:`MAX_BYTES`: export into a private folder beside ``target`` (the
    TorchScript exporter writes a file per tensor there), save the graph and the metadata with all the
    weights in one external data file under the final names, verify from that path (a proto over 2 GB
    cannot be serialised to bytes), then move the data file and the graph into place."""
    import onnx
    import onnxruntime as ort

    data = data_file(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    placed: list[Path] = []
    try:
        raw, final = work / "export" / "model.onnx", work / "final" / target.name
        raw.parent.mkdir()
        final.parent.mkdir()
        with torch.inference_mode(False), torch.no_grad():
            exporter = _export(exported, x[:2].half() if half else x[:2], raw, opset, external=True)
        model = onnx.load(str(raw))  # the external tensors too, from raw's folder
        shutil.rmtree(raw.parent)  # the exporter's files: half the disk the pair needs
        _set_metadata(model, meta)
        onnx.save_model(
            model,
            str(final),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,  # relative to the .onnx: the pair moves together
        )
        del model
        session = ort.InferenceSession(str(final), providers=["CPUExecutionProvider"])
        result = verify(OnnxNet(session), net, x, "fp16" if half else "fp32", inputs_text)
        del session
        graph = onnx.load(str(final), load_external_data=False)  # the graph only: add what was verified
        _set_metadata(graph, {**meta, "verification": result.to_json()})
        onnx.save(graph, str(final))  # writes no tensor data: none is loaded
        for src, dst in ((final.parent / data.name, data), (final, target)):
            if not src.is_file():  # no tensor over onnx's size threshold: one file after all
                continue
            os.replace(src, dst)
            placed.append(dst)
    except BaseException:
        for p in placed:  # the data file moved, the graph did not: take it back
            with contextlib.suppress(OSError):
                p.unlink()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result, exporter
