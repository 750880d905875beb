"""Every patch of, or reach into, a third-party library's internals, each with the versions it was checked on.

Kept in one flat list of small functions so that a library upgrade has one file to re-check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is not imported for the patches that do not need it
    from torch import nn


# huggingface_hub reads HF_HUB_OFFLINE from the environment once, at import, into
# huggingface_hub.constants.HF_HUB_OFFLINE, which timm.create_model(pretrained=True) consults; the
# constant is set for the call so that the environment of *now* applies.
# Checked on huggingface_hub 2.4.0 with timm 1.0.31.
@contextmanager
def hub_offline_mode(offline: bool) -> Iterator[None]:
    """``huggingface_hub.constants.HF_HUB_OFFLINE = offline`` inside the block, restored after it."""
    from huggingface_hub import constants

    was_offline = constants.HF_HUB_OFFLINE
    try:
        constants.HF_HUB_OFFLINE = offline
        yield
    finally:
        constants.HF_HUB_OFFLINE = was_offline


# timm has no public loader for the original google-research / big_vision ViT .npz checkpoints;
# its private timm.models.vision_transformer._load_weights(model, path) is the one that knows the
# flax names (it backs timm's own pretrained .npz tags). Checked on timm 1.0.31.
def load_vit_npz(model: nn.Module, path: str | Path) -> None:
    """Copy the arrays of a ViT ``.npz`` into ``model`` (a timm VisionTransformer of the same shape)."""
    from timm.models.vision_transformer import _load_weights

    _load_weights(model, str(path))
