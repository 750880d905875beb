"""The multi-label loss (``model.task=multilabel``): sigmoid + binary cross-entropy, or timm's asymmetric
loss (``model.loss=asl``, Ridnik et al. 2021: ``model.asl.gamma_neg=4``, ``gamma_pos=0``, ``clip=0.05``).

Targets are multi-hot (or Mixup's mixed multi-hot) floats ``[N, K]``. Label smoothing means what it
means for binary targets: ``targets * (1 - eps) + eps / 2`` (timm's multi-label Mixup smooths the same
way, so mixed targets arrive smoothed already). BCE averages over images and classes (PyTorch's
``mean``); ASL sums over classes and averages over images (timm's ``batchmean``, the paper's scale
per image).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vit_ft.errors import ConfigError

LOSSES = ("default", "asl")  # model.loss: default = cross-entropy (single) / BCE (multilabel)
ASL_DEFAULTS = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}


def smooth_binary(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of independent binary targets: each moves towards 0.5."""
    return targets.float() * (1.0 - eps) + 0.5 * eps if eps else targets.float()


class MultiLabelLoss(nn.Module):
    """``loss(logits, targets, smoothed=False)``: BCE-with-logits or ASL in float32; ``smoothed``: the
    targets are smoothed already (Mixup's)."""

    def __init__(
        self, loss: str = "default", label_smoothing: float = 0.0, asl: dict[str, Any] | None = None
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"model.loss={loss!r} must be one of {', '.join(LOSSES)}")
        self.kind, self.eps = loss, float(label_smoothing)
        self.asl = None
        if loss == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            cfg = {**ASL_DEFAULTS, **{k: v for k, v in dict(asl or {}).items() if v is not None}}
            self.asl = AsymmetricLossMultiLabel(
                gamma_neg=float(cfg["gamma_neg"]),
                gamma_pos=float(cfg["gamma_pos"]),
                clip=float(cfg["clip"]),
                reduction="batchmean",
            )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, smoothed: bool = False) -> torch.Tensor:
        t = targets.float() if smoothed else smooth_binary(targets, self.eps)
        if self.asl is not None:
            return self.asl(logits.float(), t)
        return F.binary_cross_entropy_with_logits(logits.float(), t)


def check_task_loss(task: str, loss: str) -> None:
    """``model.loss=asl`` is a multi-label loss: one line when the task is single-label."""
    if loss == "asl" and task != "multilabel":
        raise ConfigError(
            "model.loss=asl is the multi-label asymmetric loss, but the task is single-label; "
            "use model.loss=default, or multi-label data (model.task=multilabel)"
        )


def settle_task(task: str, loss: str) -> str:
    """``model.task`` checked, ``auto`` read as ``single`` (train.py and eval.py decide it from the data
    before they build the model; a model built without data is single-label), ``model.loss`` checked
    against it."""
    if task not in ("single", "multilabel", "auto"):
        raise ConfigError(f"model.task={task!r} must be one of auto, single, multilabel")
    task = "single" if task == "auto" else task
    check_task_loss(task, loss)
    return task
