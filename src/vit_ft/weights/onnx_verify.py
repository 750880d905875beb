"""The check an ONNX export passes before it is kept: ONNX Runtime against PyTorch.

:func:`verify` runs the file (an :class:`~vit_ft.weights.onnx_read.OnnxNet`, the way predict.py runs it) and the
PyTorch network (fp32) on the given inputs at batch 1 and at the full batch: the largest
``|logit_onnx - logit_torch|`` must stay within :data:`RTOL` times the largest ``|logit_torch|`` (floored
at :data:`SCALE_FLOOR`, so that a near-zero head is not held below float rounding). Over it,
:class:`~vit_ft.errors.RunFault` (one line), and :func:`~vit_ft.weights.onnx.write_onnx` keeps no file;
what it measured goes into the file's ``verification`` metadata (:meth:`Verification.to_json`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vit_ft.errors import RunFault

RTOL = {"fp32": 1e-4, "fp16": 1e-2}  # max |dlogit| / max |logit|; fp16 carries ~3 decimal digits
SCALE_FLOOR = 1e-2  # logits smaller than this are compared as if their largest were this


@dataclass
class Verification:
    """What :func:`verify` measured: per batch size, the largest |dlogit|, the scale and top-1 agreement."""

    dtype: str
    rtol: float
    inputs: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r["max_abs_dlogit"] <= self.rtol * r["scale"] for r in self.rows)

    def lines(self) -> list[str]:
        return [
            f"verify batch {r['batch']}: max |dlogit| {r['max_abs_dlogit']:.3g} "
            f"(tolerance {self.rtol:g} x {r['scale']:.3g}), top-1 agreement {r['top1_agree']}/{r['batch']}"
            for r in self.rows
        ]

    def to_json(self) -> str:
        return json.dumps({"dtype": self.dtype, "rtol": self.rtol, "inputs": self.inputs, "rows": self.rows})


def verify(
    onnx_net: Callable[[torch.Tensor], torch.Tensor], net: nn.Module, x: torch.Tensor, dtype: str, inputs: str
) -> Verification:
    """Run the ONNX file (``onnx_net``: float images in, float32 logits out) and the fp32 ``net`` on
    ``x[:1]`` and on all of ``x``; compare the logits. One :class:`RunFault` line when they differ by more
    than the tolerance of ``dtype``; ``inputs`` says what ``x`` is (it goes into the file's metadata)."""
    result = Verification(dtype=dtype, rtol=RTOL[dtype], inputs=inputs)
    for xb in (x[:1], x) if len(x) > 1 else (x,):
        with torch.inference_mode():
            ref = net(xb).float()
        out = onnx_net(xb)
        if out.shape != ref.shape:
            raise RunFault(
                f"the ONNX file gives logits of shape {list(out.shape)}, PyTorch {list(ref.shape)}"
            )
        bad = not torch.isfinite(out).all()
        result.rows.append(
            {
                "batch": len(xb),
                "max_abs_dlogit": float("inf") if bad else float((out - ref).abs().max()),
                "scale": max(float(ref.abs().max()), SCALE_FLOOR),
                "top1_agree": int((out.argmax(-1) == ref.argmax(-1)).sum()),
            }
        )
    if not result.ok:
        worst = max(result.rows, key=lambda r: r["max_abs_dlogit"] / r["scale"])
        raise RunFault(
            f"the ONNX file does not match PyTorch: max |dlogit| {worst['max_abs_dlogit']:.3g} at batch "
            f"{worst['batch']} is over {result.rtol:g} x max |logit| {worst['scale']:.3g} ({dtype}); "
            "nothing was written - try dtype=fp32 or another opset"
        )
    return result
