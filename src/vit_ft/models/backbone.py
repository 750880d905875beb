"""Build a timm ViT and describe how to rebuild it and feed it.

A :class:`Backbone` is what every weight source resolves to: the network, a JSON-able ``arch`` that
rebuilds exactly the same network without weights (stored in every vit-ft checkpoint), the
preprocessing the weights expect, and the class names of the head when the head was kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing, preprocessing_from_timm


@dataclass
class Backbone:
    model: nn.Module
    arch: dict[str, Any]
    preprocessing: Preprocessing
    class_names: list[str] | None = None
    head_kept: bool = False
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0))


def create_from_arch(arch: dict[str, Any]) -> nn.Module:
    """Rebuild the network described by ``arch`` with random weights.

    ``arch`` is ``{"name": <timm model name>, "kwargs": {...}, "layer_norm_eps": float | None}``;
    every value is JSON-able so that it can travel inside checkpoints and hyperparameters.
    """
    kwargs = dict(arch.get("kwargs") or {})
    eps = arch.get("layer_norm_eps")
    if eps is not None:
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=float(eps))
    try:
        return timm.create_model(arch["name"], pretrained=False, **kwargs)
    except RuntimeError as e:  # unknown model name
        raise ConfigError(
            f"model.backbone={arch['name']!r} is not a timm model ({e}); "
            "pick one from timm.list_models('vit_*')"
        ) from None


def zero_head(model: nn.Module) -> None:
    """The paper's head initialisation: all zeros, so fine-tuning starts from uniform predictions."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()


def patch_size_of(model: nn.Module) -> int:
    ps = model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def check_img_size(name: str, img_size: int, patch_size: int) -> None:
    if img_size <= 0 or img_size % patch_size != 0:
        raise ConfigError(
            f"model.img_size={img_size} is not a positive multiple of the patch size {patch_size} of "
            f"{name}; use e.g. {max(patch_size, round(max(img_size, 1) / patch_size) * patch_size)}"
        )


def build_backbone(
    name: str,
    *,
    weights: str | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    reset_head: bool = False,
    timm_kwargs: dict[str, Any] | None = None,
) -> Backbone:
    """The network for ``name`` at ``img_size`` with a head of ``num_classes``.

    ``weights=None`` gives random initialisation (head zeroed); any other value is resolved by
    :func:`vit_ft.models.weights.load_weights` (hub ids, timm tags, local files). ``num_classes=None``
    keeps whatever head the weights carry.
    """
    if weights is not None and str(weights).strip() != "":
        from vit_ft.models.weights import load_weights

        return load_weights(
            str(weights),
            backbone=name,
            img_size=img_size,
            num_classes=num_classes,
            reset_head=reset_head,
            timm_kwargs=timm_kwargs,
        )
    kwargs: dict[str, Any] = dict(timm_kwargs or {})
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    arch = {"name": name, "kwargs": kwargs, "layer_norm_eps": None}
    model = create_from_arch(arch)
    if img_size is not None:
        check_img_size(name, int(img_size), patch_size_of(model))
    zero_head(model)
    size = int(img_size) if img_size is not None else int(model.patch_embed.img_size[0])
    return Backbone(
        model=model,
        arch=arch,
        preprocessing=preprocessing_from_timm(model, size),
        class_names=None,
        head_kept=False,
        source=None,
    )
