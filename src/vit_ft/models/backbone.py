"""The network a run trains: random initialisation, or whatever :func:`vit_ft.weights.load_weights` reads.

Both paths give a :class:`~vit_ft.weights.Backbone` (network, JSON-able ``arch``, preprocessing,
class names), so the classifier does not care where its weights came from.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vit_ft.preprocessing import preprocessing_from_timm
from vit_ft.weights import Backbone, load_weights
from vit_ft.weights.arch import check_img_size, create_from_arch, patch_size_of
from vit_ft.weights.assemble import zero_head


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
    :func:`vit_ft.weights.load_weights` (hub ids, timm tags, local files). ``num_classes=None``
    keeps whatever head the weights carry.
    """
    if weights is not None and str(weights).strip() != "":
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
        # no weights, no evaluation recipe of theirs to follow: a plain resize (data.eval_crop= crops)
        preprocessing=replace(preprocessing_from_timm(model, size), crop_pct=None),
        class_names=None,
        head_kept=False,
        source=None,
    )
