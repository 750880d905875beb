"""Optimizer and learning-rate schedule.

Parameter groups, weight-decay exclusions (biases, norms, ``pos_embed``, ``cls_token``) and layer-wise
decay come from timm's ``create_optimizer_v2`` (``lr`` is the run's, already derived from
``optimizer.lr_base`` and the batch by the run plan: training/recipe.py); the schedule — per-step linear warmup, then cosine
(or linear, or constant) decay over the run's optimizer steps — is a ``LambdaLR``, which multiplies
each group's factor by the group's ``lr_scale`` (timm's layer-wise decay: block ``i`` of a depth-``d``
ViT trains at ``layer_decay ** (d - i)`` times the head's rate, the embeddings at ``layer_decay ** (d + 1)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from vit_ft.errors import ConfigError

# vit-ft name -> timm name. "sgd" is the paper's classical momentum SGD (timm's "sgd" is Nesterov).
_TIMM_NAMES = {"sgd": "momentum", "nesterov": "nesterov"}


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float | None = None,  # from conf/optimizer: a missing lr is refused below
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    layer_decay: float | None = None,
    lr_base: float | None = None,  # lr_base, lr_base_size, lr_base_scale: already turned into ``lr``
    lr_base_size: int | None = None,  # by the run plan (training/recipe.py resolve_lr)
    lr_base_scale: str | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number (the paper sweeps 0.003-0.06)")
    if weight_decay is None or weight_decay < 0:
        raise ConfigError(f"optimizer.weight_decay={weight_decay!r} must be 0 or more")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("no parameter is left to train (everything is frozen); unfreeze the head")
    try:
        return create_optimizer_v2(
            model,
            opt=_TIMM_NAMES.get(name, name),
            lr=float(lr),
            weight_decay=float(weight_decay),
            momentum=momentum,
            layer_decay=layer_decay,
            **kwargs,
        )
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"optimizer.name={name!r} is not usable ({e}); try sgd, adamw, lamb or lars"
        ) from None


def warmup_decay_factor(
    step: int, total_steps: int, warmup_steps: int, decay: str = "cosine", min_lr_ratio: float = 0.0
) -> float:
    """LR multiplier after ``step`` optimizer steps.

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (full LR at the last warmup
    step). Then ``decay`` from 1 to ``min_lr_ratio`` at ``total_steps``: cosine ``0.5 (1 + cos(pi p))``,
    linear ``1 - p`` or constant, with ``p = (step - warmup) / (total - warmup)``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if decay == "cosine" else 1.0 - p
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    warmup_steps: int,  # no default here: conf/scheduler/cosine.yaml holds it
    decay: str = "cosine",
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    if decay not in ("cosine", "linear", "constant"):
        raise ConfigError(f"scheduler.decay={decay!r} must be cosine, linear or constant")
    if warmup_steps is None or int(warmup_steps) < 0:
        raise ConfigError(f"scheduler.warmup_steps={warmup_steps!r} must be 0 or more")
    if not 0.0 <= float(min_lr_ratio) <= 1.0:
        raise ConfigError(f"scheduler.min_lr_ratio={min_lr_ratio!r} must be in [0, 1]")
    warmup_steps = int(warmup_steps)
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        return warmup_decay_factor(step, total_steps, warmup_steps, decay, float(min_lr_ratio))

    def scaled(lr_scale: float):  # timm's layer-wise decay: each group's lr_scale, applied per step
        return lambda step: lr_scale * factor(step)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [scaled(float(g.get("lr_scale", 1.0))) for g in optimizer.param_groups]
    )
