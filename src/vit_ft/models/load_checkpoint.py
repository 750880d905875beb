"""A vit-ft ``.ckpt`` back as a :class:`~vit_ft.models.classifier.ViTClassifier`: its stored
hyper-parameters checked against the allow-list before any reach the constructor, tensors and plain
types only (no code runs from the file), the EMA weights when ``model.ema.use_for`` says so; one
:class:`~vit_ft.errors.ConfigError` line for a folder, a missing file or a foreign one.
"""

from __future__ import annotations

import logging
import os

import torch

from vit_ft.checkpoint_format import ema_chosen
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier
from vit_ft.weights.allowlist import check_checkpoint_hparams

log = logging.getLogger(__name__)


def load_classifier(path: str, map_location: str | torch.device = "cpu") -> ViTClassifier:
    """Load a vit-ft ``.ckpt`` (tensors and plain types only; no code runs from the file)."""
    if os.path.isdir(path):  # trainer=fsdp with state_dict_type=sharded writes folders
        raise ConfigError(
            f"ckpt_path={path!r} is a folder (a sharded FSDP checkpoint); make it one file first: "
            f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path={path!r} does not exist; pass the path of a vit-ft .ckpt file")
    try:
        # The stored hyper-parameters reach the constructor: an allow-list first (mmap: no tensor is read).
        hp = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters")
        check_checkpoint_hparams(hp, f"ckpt_path={path!r}")
        model = ViTClassifier.load_from_checkpoint(path, map_location=map_location, weights_only=True)
        if ema_chosen(model.hparams.get("ema"), "eval") and model.use_ema_weights():
            log.info("weights: the checkpoint's EMA weights (model.ema.use_for=eval)")
        return model
    except ConfigError as e:
        if path in str(e):
            raise
        raise ConfigError(f"ckpt_path={path!r}: {e}") from None
    except Exception as e:  # truncated or foreign file
        raise ConfigError(
            f"ckpt_path={path!r} is not a readable vit-ft checkpoint ({type(e).__name__}: {e})"
        ) from None
