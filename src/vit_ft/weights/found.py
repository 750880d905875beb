"""What a reader hands to :mod:`~vit_ft.weights.assemble`: the tensors and what the file states.

Its own module so that every reader (:mod:`~vit_ft.weights.readers`, :mod:`~vit_ft.weights.hf_dir`)
and the assembler share it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vit_ft.preprocessing import Preprocessing


@dataclass
class Checkpoint:
    """What a reader found; ``arch`` states the resolution and head of ``sd`` as stored."""

    sd: dict[str, torch.Tensor]
    arch: dict[str, Any]
    label: str  # names the checkpoint in errors: "transformers checkpoint /path"
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None  # None: timm's pretrained config for the arch
    notes: list[str] = field(default_factory=list)
    hint: Callable[[], str] | None = None  # what to do when sd does not fit arch
    class_names_from: Any = None  # for labels.class_names_for; False: the file stated its names
    pos_antialias: bool = True  # how position embeddings are resampled (False: as transformers does)
    thresholds: list[float] | None = None  # a multi-label head's per-class thresholds (None: single-label)


@dataclass
class TimmPretrained:
    """A network timm built with its pretrained weights, and the kwargs it was built with."""

    model: nn.Module
    name: str
    kwargs: dict[str, Any]
