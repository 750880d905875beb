"""The network a run trains: random initialisation, or whatever :func:`vit_ft.weights.load_weights` reads.

Both paths give a :class:`~vit_ft.weights.Backbone` (network, JSON-able ``arch``, preprocessing,
class names), so the classifier does not care where its weights came from. :func:`build_network`
adds what the ``model.*`` settings do to it (a checkpoint's architecture, the preprocessing override,
LoRA, gradient checkpointing, a frozen backbone) and hands the classifier a :class:`Network`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from vit_ft.errors import ConfigError
from vit_ft.models.features import head_features
from vit_ft.preprocessing import Preprocessing, preprocessing_from_timm
from vit_ft.weights import Backbone, load_weights
from vit_ft.weights.arch import check_img_size, create_from_arch, patch_size_of
from vit_ft.weights.assemble import HEAD_PREFIXES, zero_head
from vit_ft.weights.lora import LoraSpec, inject_lora, lora_checkpoint_info

log = logging.getLogger(__name__)


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


@dataclass
class Network:
    """What a classifier trains and how its checkpoints rebuild it offline."""

    model: nn.Module
    arch: dict[str, Any]
    preprocessing: Preprocessing
    class_names: list[str] | None
    num_classes: int
    head_features: str | None  # None: timm's head on its own pooling; else the token feature it sits on
    lora_spec: LoraSpec | None = None
    lora_info: dict[str, Any] | None = None  # the checkpoint's LoRA record (lora_checkpoint_info)


def build_network(
    backbone: str,
    weights: str | None,
    img_size: int | None,
    num_classes: int | None,
    class_names: list[str] | None,
    *,
    freeze_backbone: bool = False,
    reset_head: bool = False,
    drop_path_rate: float = 0.0,
    timm_kwargs: dict[str, Any] | None = None,
    preprocessing_override: dict[str, Any] | None = None,
    arch: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    grad_checkpointing: bool = False,
    lora: dict[str, Any] | None = None,
) -> Network:
    """The network of the ``model.*`` settings (the classifier's arguments of the same names).

    ``arch`` (+ ``preprocessing``) rebuilds a vit-ft checkpoint's network, whose weights load next;
    a LoRA checkpoint without its base rebuilds the base from ``weights`` instead, as training did."""
    lora_spec = LoraSpec.from_config(lora)
    if lora_spec is not None and freeze_backbone:
        raise ConfigError(
            f"model.lora.rank={lora_spec.rank} with model.freeze_backbone=true: LoRA already freezes the base "
            "weights and trains adapters + head; drop one of them (model.lora.rank=null for a linear probe)"
        )
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    kwargs = dict(timm_kwargs or {})
    if drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    if arch is not None and not (lora_spec is not None and weights):
        bb = Backbone(
            create_from_arch(arch, where="the checkpoint's hyper_parameters.arch"),
            arch,
            Preprocessing.from_dict(preprocessing),
            class_names,
            True,
            None,
        )
    else:
        bb = build_backbone(
            backbone,
            weights=weights,
            img_size=img_size,
            num_classes=num_classes,
            reset_head=reset_head,
            timm_kwargs=kwargs,
        )
        for note in bb.notes:
            log.info("weights: %s", note)
    if class_names is None:
        class_names = bb.class_names
    pre = bb.preprocessing
    if preprocessing_override:
        override = {k: v for k, v in dict(preprocessing_override).items() if v is not None}
        pre = Preprocessing.from_dict({**pre.to_dict(), **override})
    net = Network(bb.model, bb.arch, pre, None, bb.num_classes, head_features(bb.arch), lora_spec)
    if lora_spec is not None:  # base weights frozen, adapters + head train
        net.model = inject_lora(net.model, lora_spec)
        base = None  # where a checkpoint rebuilds its base from (None: random init, kept in the file)
        if weights:
            base = dict(source=str(weights), backbone=backbone, img_size=img_size, reset_head=reset_head)
            base.update(num_classes=net.num_classes, timm_kwargs=kwargs)
        net.lora_info = lora_checkpoint_info(lora_spec, base, net.model)
    if grad_checkpointing:  # activation checkpointing of the blocks (timm): recompute in backward
        net.model.set_grad_checkpointing(True)
    if net.num_classes < 1:
        raise ConfigError("the model has no classification head; set num_classes or use weights with a head")
    if class_names is not None and len(class_names) != net.num_classes:
        raise ConfigError(
            f"the head has {net.num_classes} outputs but {len(class_names)} class names were given; "
            "set model.reset_head=true to train a new head for this data"
        )
    net.class_names = list(class_names) if class_names is not None else None
    if freeze_backbone:
        for name, p in net.model.named_parameters():
            p.requires_grad = name.startswith(HEAD_PREFIXES)  # DeiT-distilled: both heads
    return net
