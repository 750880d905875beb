"""Which numeric precision a run (trainer.precision) or an inference (predict.py ``precision``) uses,
when the config leaves it to vit-ft: the one place precision is resolved."""

from __future__ import annotations

from typing import Any

import torch

from vit_ft.compat import cpu_bf16_supported
from vit_ft.errors import ConfigError

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64", "64-true")


def resolve_precision(precision: Any, accelerator: str) -> str:
    """``null``/``auto`` → the fastest correct choice: bf16-mixed where bf16 is fast, else 16-mixed
    on CUDA and 32-true on CPU."""
    if precision not in (None, "auto", "null"):
        p = str(precision)
        if p not in PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r} is not one of 32, bf16-mixed, 16-mixed")
        return p
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_bf16_supported() else "32-true"


def autocast_dtype(precision: Any, device_type: str) -> torch.dtype | None:
    """The autocast dtype of inference on ``device_type`` (None: full precision). ``auto``: bf16 on a
    CUDA device that runs it fast, else full precision (outputs as the weights give them on the CPU)."""
    p = str(precision)
    if p in ("32", "32-true", "fp32"):
        return None
    cuda = device_type == "cuda"
    if p == "auto":
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    if p in ("bf16", "bf16-mixed"):
        return torch.bfloat16
    if p in ("16", "16-mixed", "fp16"):
        if not cuda:
            raise ConfigError("precision=16 needs a CUDA device; use precision=32 or bf16 on the CPU")
        return torch.float16
    raise ConfigError(f"precision={precision!r} must be auto, 32, bf16 or 16")
