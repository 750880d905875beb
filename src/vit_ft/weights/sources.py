"""What a ``model.weights`` string names, before anything is read: a local path, a timm tag or a hub id.

A string that looks like a path but does not exist must fail as a missing file, not be sent to a
hub; a timm name must be checked here so that a typo gets close-match suggestions, not a 404.
"""

from __future__ import annotations

import difflib

import timm

from vit_ft.errors import ConfigError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".npz", ".ckpt", ".pth.tar", ".tar")


def looks_like_path(source: str) -> bool:
    """True when ``source`` can only mean a file or folder (so a missing one is an error, not a hub id)."""
    return (
        source.startswith(("/", "./", "../", "~", ".\\"))
        or source.lower().endswith(WEIGHT_SUFFIXES)
        or source.count("/") > 1
        or "\\" in source
    )


def timm_tag(source: str) -> str | None:
    """The timm pretrained name of ``source`` (``timm/x.tag`` or ``x.tag`` or ``x``), else None."""
    name = source[len("timm/") :] if source.startswith("timm/") else source
    if "/" in name or not name:
        return None
    if timm.is_model(name.split(".")[0]):
        return name
    return name if source.startswith("timm/") else None


def check_timm_tag(name: str, source: str) -> None:
    """Raise :class:`ConfigError` (with similar names or the available tags) unless timm has
    pretrained weights for ``name``."""
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
