"""Read every common ViT checkpoint into a :class:`Backbone`, exactly, and write the two formats
other tools read.

One entry point, :func:`load_weights`, for:

* a Hugging Face hub id of a transformers ViT, DeiT, DINOv2, CLIP or SigLIP (``google/vit-base-patch32-384``), fetched into the
  normal hub cache (``HF_HOME`` / ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` are honoured at call time);
* a timm pretrained tag (``timm/vit_base_patch32_224.orig_in21k``, ``vit_base_patch32_384.augreg_in21k_ft_in1k``),
  loaded by timm itself;
* a local transformers model directory (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``),
  or a timm hub-style directory (``config.json`` with ``architecture``);
* a timm checkpoint file (``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``; raw or wrapped in
  ``state_dict`` / ``model`` / ``state_dict_ema``; ``module.`` prefixes stripped);
* an original google-research / big_vision ``.npz``;
* a vit-ft Lightning ``.ckpt`` (``hyper_parameters`` hold ``arch``, ``class_names``, ``preprocessing``).

:mod:`~vit_ft.weights.load` holds it: :mod:`~vit_ft.weights.sources` tells what the string names,
:mod:`~vit_ft.weights.readers` reads each format (:mod:`~vit_ft.weights.hf_dir` a transformers
directory of any family in :mod:`~vit_ft.weights.families`), :mod:`~vit_ft.weights.assemble` builds
the requested network (head, resolution). This module only re-exports.
Only safetensors and ``torch.load(weights_only=True)`` are used: a pickle that would run code is refused.
"""

from __future__ import annotations

from vit_ft.weights.arch import create_from_arch
from vit_ft.weights.assemble import Backbone, resample_pos_embed
from vit_ft.weights.families.vit import HF_VIT_KEY_TABLE, arch_from_hf_config, hf_to_timm, timm_to_hf
from vit_ft.weights.io import read_state_dict
from vit_ft.weights.load import load_weights
from vit_ft.weights.writers import (
    hf_export,
    hf_preprocessor_config,
    hf_vit_config,
    save_hf_pretrained,
    save_timm_safetensors,
)

__all__ = [
    "Backbone",
    "load_weights",
    "create_from_arch",
    "hf_to_timm",
    "timm_to_hf",
    "arch_from_hf_config",
    "read_state_dict",
    "resample_pos_embed",
    "HF_VIT_KEY_TABLE",
    "save_hf_pretrained",
    "save_timm_safetensors",
    "hf_vit_config",
    "hf_export",
    "hf_preprocessor_config",
]
