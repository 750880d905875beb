"""The training loss of a classifier, built once from the ``model.*`` settings: softmax cross-entropy
with label smoothing, Mixup's soft targets and, with ``model.class_weights``, a weight per class.

Class weights (``model.class_weights``: ``balanced`` or one positive number per class) weigh the
cross-entropy of every target distribution alike — one-hot, smoothed or mixed:

    loss = sum_i sum_c w_c y_ic (-log p_ic) / sum_i sum_c w_c y_ic

(``y_i``: image ``i``'s target distribution, ``p_i``: its softmax). For one-hot targets this is
torch's weighted ``cross_entropy`` (the mean weighted by ``w_{y_i}``); with all weights equal it is the
unweighted loss. Without class weights the loss is torch's ``cross_entropy`` (hard labels, with its
label smoothing) or the soft-target cross-entropy, as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.models.augment import soft_target_loss


def balanced_class_weights(counts: Any) -> list[float]:
    """Inverse class frequency, normalised to mean 1 over the classes (a class without a training
    image is weighed as if it had one)."""
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    w = 1.0 / c
    return [float(x) for x in w * (len(w) / w.sum())]


def resolve_class_weights(spec: Any, counts: Any, num_classes: int) -> list[float] | None:
    """``model.class_weights`` as one float per class: None (off), ``balanced`` (from ``counts``, the
    training split's images per class) or an explicit list, checked against ``num_classes``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(
                f"model.class_weights={spec!r} is not balanced, null or a list of numbers; use one of those"
            )
        if counts is None:
            raise ConfigError(
                "model.class_weights=balanced needs the training split's class counts (a streamed data set "
                "has none up front); give the weights as a list, one per class"
            )
        return balanced_class_weights(counts)
    values = list(spec)
    if len(values) != int(num_classes):
        raise ConfigError(
            f"model.class_weights has {len(values)} values but the data has {num_classes} classes; "
            f"give one weight per class (in class order) or use model.class_weights=balanced"
        )
    ok = all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values
    )
    if not ok:
        raise ConfigError(f"model.class_weights={values} must all be positive finite numbers")
    return [float(v) for v in values]


def weighted_soft_target_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``sum_i sum_c w_c y_ic (-log p_ic) / sum_i sum_c w_c y_ic`` in float32 (see the module docstring)."""
    wy = target.float() * weight.float()
    return (-(wy * F.log_softmax(logits.float(), dim=-1)).sum()) / wy.sum().clamp_min(1e-12)


class SoftmaxLoss(nn.Module):
    """Single-label loss: ``forward(logits, labels, soft)`` with ``soft`` Mixup's targets or None.

    ``class_weights`` live in a non-persistent buffer (they follow the module's device; the
    checkpoint holds them in its hyper-parameters, not its state dict)."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, class_weights: Any = None) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        w = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", w, persistent=False)

    def forward(
        self, logits: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.class_weights is None:
            if soft is not None:
                return soft_target_loss(logits, soft)
            return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        if soft is None:
            ls, k = self.label_smoothing, logits.shape[-1]
            soft = F.one_hot(y.long(), k).float() * (1.0 - ls) + ls / k
        return weighted_soft_target_loss(logits, soft, self.class_weights)


def build_loss(num_classes: int, label_smoothing: float = 0.0, class_weights: Any = None) -> nn.Module:
    """The training loss for the ``model.*`` settings (``class_weights`` already resolved to a list)."""
    if class_weights is not None:
        class_weights = resolve_class_weights(class_weights, None, num_classes)
    return SoftmaxLoss(num_classes, label_smoothing, class_weights)
