"""Which numeric precision a run uses when the config leaves it to vit-ft."""

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
