"""Augmentation on the device, after normalisation: timm's random erasing and Mixup/CutMix
(``model.random_erasing``, ``model.mixup``), and the soft-target loss that Mixup's labels need.

Both draw from the global generators, which checkpoints carry (:mod:`vit_ft.training.rng`), so a
resumed run draws the same boxes and mixing weights as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class DeviceAugment:
    """Random erasing (``erasing_prob > 0``), then Mixup/CutMix (an alpha > 0) on a batch of even size.

    ``label_smoothing`` and ``num_classes`` build Mixup's soft targets (smoothing included);
    ``multi_label``: the targets are multi-hot ``[N, K]`` floats, mixed as they are."""

    def __init__(
        self,
        mixup: dict[str, Any] | None,
        erasing_prob: float,
        label_smoothing: float,
        num_classes: int,
        multi_label: bool = False,
    ) -> None:
        cfg = {k: v for k, v in dict(mixup or {}).items() if v is not None}
        self.mixup = None
        if cfg.get("mixup_alpha", 0) or cfg.get("cutmix_alpha", 0):
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=float(cfg.get("mixup_alpha", 0.0)),
                cutmix_alpha=float(cfg.get("cutmix_alpha", 0.0)),
                prob=float(cfg.get("prob", 1.0)),
                switch_prob=float(cfg.get("switch_prob", 0.5)),
                label_smoothing=float(label_smoothing),
                num_classes=int(num_classes),
                multi_label=bool(multi_label),  # multi-hot targets mixed (and smoothed towards 0.5)
            )
        self.erasing = None
        if float(erasing_prob or 0.0) > 0:
            from timm.data.random_erasing import RandomErasing

            self.erasing = RandomErasing(probability=float(erasing_prob), mode="pixel", device="cpu")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(images, soft targets)``; the targets are ``None`` when the batch was not mixed (the
        labels stay hard: timm's Mixup needs an even batch)."""
        if self.erasing is not None:
            self.erasing.device = x.device
            x = self.erasing(x)
        if self.mixup is not None and x.shape[0] % 2 == 0:
            return self.mixup(x, y)
        return x, None


def soft_target_loss(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft targets (Mixup's), in float32."""
    return torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
