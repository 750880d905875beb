"""The model families vit-ft reads from and writes to transformers, one file each, and their heads.

A family file (``vit.py``, ``deit.py``, ...) holds everything about one family: its transformers config
-> timm arch, its key table (both directions), its head names and its export. Adding a family is one
new file and one line in :data:`FAMILIES`. timm-only families (EVA-02, BEiT) need no file: timm reads
and writes them, and their head names are timm's ``pretrained_cfg["classifier"]``.
"""

from __future__ import annotations

from fnmatch import fnmatch

from torch import nn

from vit_ft.weights.families import clip, deit, dinov2, siglip, vit
from vit_ft.weights.families.common import Family

# Tried in this order to find the family that writes a timm network (``Family.exports``) and to name
# a timm model's family; vit, which writes any plain ViT, stays last.
FAMILIES: tuple[Family, ...] = (
    deit.FAMILY,
    siglip.FAMILY,
    clip.FAMILY,
    dinov2.FAMILY,
    vit.FAMILY,
)

# the transformers model types vit-ft reads
HF_MODEL_TYPES: tuple[str, ...] = tuple(sorted(t for f in FAMILIES for t in f.model_types))
# every family's timm head modules: what a key-level check (no network at hand) counts as a head
HEAD_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n for f in FAMILIES for n in f.head_names))
HEAD_PREFIXES: tuple[str, ...] = tuple(f"{n}." for n in HEAD_NAMES)


def by_model_type(model_type: str) -> Family | None:
    """The family that reads this transformers ``model_type`` (None: vit-ft does not read it)."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def by_timm_name(name: str) -> Family | None:
    """The family of a timm model name or pretrained tag (None: a timm-only family, e.g. EVA-02)."""
    base = name.removeprefix("timm/").split(".")[0]
    return next((f for f in FAMILIES if any(fnmatch(base, p) for p in f.timm_names)), None)


def for_network(model: nn.Module) -> Family:
    """The family whose transformers class expresses this timm ViT (``vit`` when nothing else fits)."""
    return next(f for f in FAMILIES if f.exports(model))


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The classifier modules of a timm network: timm's ``pretrained_cfg["classifier"]`` (one, or
    ``head`` and ``head_dist`` for a distilled DeiT), else every family's :data:`HEAD_NAMES`; only
    those the network has."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or HEAD_NAMES
    names = (names,) if isinstance(names, str) else tuple(names)
    found = tuple(n for n in names if isinstance(getattr(model, n, None), nn.Module))
    return found or tuple(n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module))


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier modules themselves (see :func:`head_names`)."""
    return [getattr(model, n) for n in head_names(model)]


__all__ = [
    "FAMILIES",
    "HEAD_NAMES",
    "HEAD_PREFIXES",
    "HF_MODEL_TYPES",
    "Family",
    "by_model_type",
    "by_timm_name",
    "for_network",
    "head_modules",
    "head_names",
]
