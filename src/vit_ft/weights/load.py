"""Where :func:`load_weights` sends a ``model.weights`` string: to the reader of its format, then to
:func:`~vit_ft.weights.assemble.assemble`.

Its own module so that a reader needing the loader back (a LoRA checkpoint rebuilds its omitted base
from any weight source) is handed it as an argument instead of importing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vit_ft.errors import ConfigError
from vit_ft.weights.assemble import Backbone, assemble, assemble_timm_pretrained
from vit_ft.weights.hub import download_model
from vit_ft.weights.readers import read_dir, read_npz, read_timm_pretrained, read_weight_file
from vit_ft.weights.sources import looks_like_path, timm_tag


def load_weights(
    source: str,
    *,
    backbone: str | None = None,
    img_size: int | None = None,
    num_classes: int | None = None,
    reset_head: bool = False,
    timm_kwargs: dict[str, Any] | None = None,
    purpose: str = "eval",
) -> Backbone:
    """The network and everything about it that ``source`` states.

    ``source``: a local directory or file (transformers dir, timm ``.pth/.bin/.safetensors``,
    ``.npz``, vit-ft ``.ckpt``), a timm pretrained tag (``timm/name.tag`` / ``name.tag``) or a
    Hugging Face hub id (``org/name[@revision]``). ``backbone`` names the timm model for a plain timm
    state dict (other formats state their own architecture); ``img_size`` resamples the position
    embeddings; ``num_classes`` keeps a head of that size or replaces it with a zero one
    (``None``: keep any head); ``reset_head`` always replaces it. Every user-fixable problem raises
    :class:`ConfigError` with a one-line message. ``purpose`` (``eval`` or ``export``) picks a
    vit-ft checkpoint's raw or EMA weights as its ``model.ema.use_for`` says.
    """
    source = str(source).strip()
    if not source:
        raise ConfigError("model.weights is empty; pass a path, a timm pretrained tag or a hub id, or null")
    if img_size is not None and int(img_size) <= 0:
        raise ConfigError(f"model.img_size={img_size} must be a positive multiple of the patch size")
    if num_classes is not None and int(num_classes) < 0:
        raise ConfigError(
            f"model.num_classes={num_classes} must be >= 0 (or null to keep the checkpoint head)"
        )
    timm_kwargs = dict(timm_kwargs or {})
    for key, value in (("img_size", img_size), ("num_classes", num_classes)):
        if key in timm_kwargs:  # the dedicated argument wins; timm_kwargs only fills in
            from_kwargs = timm_kwargs.pop(key)
            if value is None and key == "img_size":
                img_size = from_kwargs
            elif value is None:
                num_classes = from_kwargs
    opts: dict[str, Any] = {
        "source": source,
        "img_size": None if img_size is None else int(img_size),
        "num_classes": None if num_classes is None else int(num_classes),
        "reset_head": bool(reset_head),
    }
    path = Path(source).expanduser()
    if path.is_dir():
        return assemble(read_dir(path, backbone=backbone, timm_kwargs=timm_kwargs), **opts)
    if path.is_file():
        if path.suffix == ".npz":
            return assemble(read_npz(path, backbone=backbone, timm_kwargs=timm_kwargs), **opts)
        ckpt = read_weight_file(
            path, backbone=backbone, timm_kwargs=timm_kwargs, load_base=load_weights, purpose=purpose
        )
        return assemble(ckpt, **opts)
    if path.exists():
        raise ConfigError(f"model.weights={source!r} is neither a file nor a directory")
    if source.startswith("hf-hub:"):
        tag: str | None = source
    elif looks_like_path(source):
        raise ConfigError(
            f"weights file {source!r} does not exist (cwd {os.getcwd()}); pass an existing path (absolute, or "
            "relative to the launch directory), a timm pretrained tag or a hub id"
        )
    else:
        tag = timm_tag(source)
    if tag is not None:
        pretrained = read_timm_pretrained(
            tag, source=source, img_size=opts["img_size"], timm_kwargs=timm_kwargs
        )
        return assemble_timm_pretrained(pretrained, **opts)
    if source.count("/") == 1:
        return assemble(read_dir(download_model(source), backbone=backbone, timm_kwargs=timm_kwargs), **opts)
    raise ConfigError(
        f"model.weights={source!r} is neither an existing path, a timm pretrained tag (e.g. "
        "vit_base_patch32_384.augreg_in21k_ft_in1k) nor a Hugging Face hub id (e.g. google/vit-base-patch32-384)"
    )
