"""The last step of every weight source: the requested network, as a :class:`Backbone`.

Given what a reader found, this decides the head (keep the checkpoint's, or a zero one of
``num_classes``), resamples the position embeddings to the requested ``img_size`` (timm's
``resample_abs_pos_embed``, bicubic), and loads the tensors strictly, so that a checkpoint that
does not fit its stated arch fails with one line instead of loading half its weights.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from torch import nn

from vit_ft.checkpoint_format import MULTILABEL_ATTR
from vit_ft.errors import ConfigError
from vit_ft.labels import class_names_for
from vit_ft.preprocessing import Preprocessing, preprocessing_from_timm
from vit_ft.weights.arch import check_img_size, create_from_arch, head_classes, patch_size_of
from vit_ft.weights.families import HEAD_NAMES, HEAD_PREFIXES, head_modules
from vit_ft.weights.found import Checkpoint, TimmPretrained

# the head names live with the families (vit_ft.weights.families); re-exported for the importers here
__all__ = [
    "HEAD_NAMES",
    "HEAD_PREFIXES",
    "Backbone",
    "assemble",
    "assemble_timm_pretrained",
    "head_modules",
    "resample_pos_embed",
    "zero_head",
]


@dataclass
class Backbone:
    """What every weight source resolves to: the network, a JSON-able ``arch`` that rebuilds it
    without weights (stored in every vit-ft checkpoint), the preprocessing the weights expect, and
    the head's class names when the head was kept."""

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


def zero_head(model: nn.Module) -> None:
    """The paper's head initialisation: all zeros, so fine-tuning starts from uniform predictions."""
    for head in head_modules(model):
        if isinstance(head, nn.Linear):
            with torch.no_grad():
                head.weight.zero_()
                if head.bias is not None:
                    head.bias.zero_()


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: Iterable[int], num_prefix_tokens: int = 1, antialias: bool = True
) -> torch.Tensor:
    """Position embeddings ``[1, prefix + g*g, D]`` resampled to ``new_grid`` (timm, bicubic;
    ``antialias=False`` is what transformers' DINOv2, CLIP and SigLIP do when they interpolate)."""
    return resample_abs_pos_embed(
        pos_embed, new_size=list(new_grid), num_prefix_tokens=num_prefix_tokens, antialias=antialias
    )


def _resize_rel_pos_tables(model: nn.Module, sd: dict[str, torch.Tensor], notes: list[str]) -> dict:
    """BEiT's relative-position bias tables resized to the network's window (timm's resizer)."""
    expected = model.state_dict()
    out, resized = dict(sd), 0
    for k, v in sd.items():
        if k.endswith("relative_position_bias_table") and k in expected and v.shape != expected[k].shape:
            attn = model.get_submodule(k[: -len(".relative_position_bias_table")])
            out[k] = resize_rel_pos_bias_table(
                v, new_window_size=attn.window_size, new_bias_shape=tuple(expected[k].shape)
            )
            resized += 1
    if resized:
        notes.append(f"resized {resized} relative-position bias tables to the new window (timm)")
    return out


def _head_decision(ckpt_classes: int, num_classes: int | None, reset_head: bool) -> tuple[bool, int, str]:
    """(keep the checkpoint head?, classes of the final head, note)."""
    if ckpt_classes > 0 and not reset_head and (num_classes is None or int(num_classes) == ckpt_classes):
        return True, ckpt_classes, f"kept the checkpoint's {ckpt_classes}-class head"
    target = int(num_classes) if num_classes is not None else ckpt_classes
    if target == 0:
        return False, 0, "the checkpoint has no classification head and num_classes is not set: no head"
    if reset_head:
        why = "model.reset_head=true"
    elif ckpt_classes == 0:
        why = "the checkpoint has no classification head"
    else:
        why = f"the checkpoint head has {ckpt_classes} classes, model.num_classes={target}"
    return False, target, f"new zero-initialised {target}-class head ({why})"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def assemble(
    ckpt: Checkpoint, *, source: str, img_size: int | None, num_classes: int | None, reset_head: bool
) -> Backbone:
    """``ckpt`` (timm keys, at the checkpoint's own resolution and head, which its arch states) ->
    the requested Backbone."""
    sd, notes = ckpt.sd, ckpt.notes
    keep, target_classes, head_note = _head_decision(head_classes(sd), num_classes, reset_head)
    if not keep:
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    native = int(ckpt.arch["kwargs"]["img_size"])
    pre = ckpt.preprocessing
    # the size the weights' own preprocessing feeds (DINOv2's processor: 224 crops for 518 embeddings)
    default = int(pre.img_size) if pre is not None and pre.img_size else native
    target = int(img_size) if img_size is not None else default
    arch = copy.deepcopy(ckpt.arch)
    arch["kwargs"]["img_size"] = target
    arch["kwargs"]["num_classes"] = target_classes
    model = create_from_arch(arch)
    check_img_size(arch["name"], target, patch_size_of(model))

    expected = model.state_dict()
    pos = sd.get("pos_embed")
    if (
        pos is not None
        and "pos_embed" in expected
        and pos.ndim == 3
        and pos.shape != expected["pos_embed"].shape
    ):
        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        old = pos.shape[1] - prefix
        new_grid = tuple(int(g) for g in model.patch_embed.grid_size)
        if math.isqrt(old) ** 2 == old and pos.shape[2] == expected["pos_embed"].shape[2]:
            sd = dict(sd)
            sd["pos_embed"] = resample_pos_embed(
                pos, new_grid, num_prefix_tokens=prefix, antialias=ckpt.pos_antialias
            )
            g = math.isqrt(old)
            notes.append(
                f"resampled position embeddings from a {g}x{g} grid ({native}px) to "
                f"{new_grid[0]}x{new_grid[1]} ({target}px), bicubic"
            )
    sd = _resize_rel_pos_tables(model, sd, notes)
    problems: list[str] = []
    for k, v in expected.items():
        if k not in sd:
            if not k.startswith(HEAD_PREFIXES) or keep:
                problems.append(f"{k} {_shape(v)} is missing from the checkpoint")
        elif sd[k].shape != v.shape:
            problems.append(
                f"{k} has shape {_shape(sd[k])} in the checkpoint but {_shape(v)} in {arch['name']}"
            )
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        problems.append(
            f"the checkpoint has {len(unexpected)} weights the network lacks (e.g. {unexpected[0]})"
        )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        extra = ckpt.hint() if ckpt.hint is not None else ""
        raise ConfigError(
            f"{ckpt.label} does not fit {arch['name']}: {problems[0]}{more}"
            + (f"; {extra}" if extra else "; pass weights of the same architecture")
        )
    model.load_state_dict(sd, strict=keep)
    if not keep:
        zero_head(model)
    if keep:
        names = class_names_for(target_classes, ckpt.class_names, ckpt.class_names_from)
        head_note += f" with {'its class names' if names else 'no class names'}"
    else:
        names = None
    notes.append(head_note)
    if pre is None:
        prep = preprocessing_from_timm(model, target)
    else:
        prep = pre.with_size(target)  # the crop travels too
    model.eval()
    if keep and ckpt.thresholds is not None and len(ckpt.thresholds) == target_classes:
        # a multi-label head: its thresholds travel with the network to the writers (problem_type)
        setattr(model, MULTILABEL_ATTR, [float(t) for t in ckpt.thresholds])
    return Backbone(
        model=model,
        arch=arch,
        preprocessing=prep,
        class_names=names,
        head_kept=keep,
        source=source,
        notes=notes,
    )


def assemble_timm_pretrained(
    pretrained: TimmPretrained,
    *,
    source: str,
    img_size: int | None,
    num_classes: int | None,
    reset_head: bool,
) -> Backbone:
    """A network timm built with its weights (position embeddings already at ``img_size``) -> the
    requested Backbone: its head kept (with timm's ImageNet names) or replaced by a zero one."""
    model, notes = pretrained.model, []
    ckpt_classes = int(model.num_classes)
    keep, target, head_note = _head_decision(ckpt_classes, num_classes, reset_head)
    names = None
    if keep:
        names = class_names_for(ckpt_classes, None, model)
        head_note += f" with {'its class names' if names else 'no class names'}"
    else:
        model.reset_classifier(target)
        zero_head(model)
    notes.append(head_note)
    size = int(model.patch_embed.img_size[0])
    if img_size is not None:
        notes.append(f"timm resampled the position embeddings to {size}px where the checkpoint differs")
    arch_kwargs = dict(pretrained.kwargs)
    arch_kwargs.update(img_size=size, num_classes=target)
    model.eval()
    return Backbone(
        model=model,
        arch={"name": pretrained.name, "kwargs": arch_kwargs, "layer_norm_eps": None},
        preprocessing=preprocessing_from_timm(model, size),
        class_names=names,
        head_kept=keep,
        source=source,
        notes=notes,
    )
