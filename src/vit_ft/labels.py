"""Class names of a head, and the ImageNet label sets, in one place.

Every ImageNet name comes from timm's ``ImageNetInfo`` (``infer_imagenet_subset`` picks the set from
a head's size or a model's pretrained config), so weights, prediction and the ImageNet data set all
agree on what output ``i`` is called. timm is imported only when a name is looked up.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from vit_ft.errors import ConfigError

__all__ = [
    "IMAGENET_HEAD_SIZES",
    "ilsvrc_wnids",
    "ilsvrc_descriptions",
    "class_names_for",
    "head_labels",
    "check_head_matches_data",
]

# Head sizes timm knows as ImageNet label sets (timm.data.infer_imagenet_subset).
IMAGENET_HEAD_SIZES = (1000, 11821, 21841, 21843)


@lru_cache(maxsize=1)
def ilsvrc_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 wnids in class-index order (timm's ``ImageNetInfo``)."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


@lru_cache(maxsize=1)
def ilsvrc_descriptions() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class descriptions in class-index order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def _subset_descriptions(model_or_cfg: Any) -> tuple[str | None, list[str]]:
    """(timm's ImageNet subset for a model or ``{"num_classes": n}``, its descriptions; [] if none)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model_or_cfg)
    if not subset:
        return subset, []
    try:
        return subset, list(ImageNetInfo(subset).label_descriptions())
    except (AssertionError, OSError, KeyError, TypeError):
        return subset, []


def class_names_for(num_classes: int, given: list[str] | None, model_or_cfg: Any = None) -> list[str] | None:
    """The names of a kept ``num_classes``-way head: ``given`` when it has one per output, else the
    ImageNet set timm infers from ``model_or_cfg`` (a timm model, or just the class count) when its
    size fits; ``model_or_cfg=False`` means the checkpoint stated its names (or that it has none)."""
    if num_classes <= 0:
        return None
    if given is not None and len(given) == num_classes:
        return [str(n) for n in given]
    if model_or_cfg is False:
        return None
    _, names = _subset_descriptions(
        model_or_cfg if model_or_cfg is not None else {"num_classes": num_classes}
    )
    return names if len(names) == num_classes else None


def head_labels(num_classes: int, class_names: Sequence[str] | None) -> tuple[list[str], str | None]:
    """(one label per output, a note when the labels are assumed rather than stated)."""
    if class_names is not None and len(class_names) == num_classes:
        return [str(n) for n in class_names], None
    if num_classes in IMAGENET_HEAD_SIZES:
        subset, names = _subset_descriptions({"num_classes": num_classes})
        if len(names) == num_classes:
            return names, (
                f"the weights name no classes; their {num_classes} outputs are labelled as {subset} (timm)"
            )
    return [f"class_{i}" for i in range(num_classes)], (
        f"the weights name none of their {num_classes} classes; labels are class_<index>"
    )


def check_head_matches_data(
    class_names: Sequence[str] | None, num_classes: int, data_class_names: Sequence[str]
) -> str | None:
    """Make sure output ``i`` of a head is class ``i`` of the data before evaluating it as it is.

    Names must be equal, index for index. A head without names (transformers' ``LABEL_i``
    placeholders) is taken in the data's order when the counts agree. For an ImageNet-1k head, an
    image folder of all 1000 ILSVRC-2012 wnid folders (``n01440764``, ...) is the standard index
    (wnids sorted), so it is matched by index; a subset of wnid folders is refused (a folder data set
    renumbers its classes; ``data=imagenet`` keeps the standard index). Returns a note when the names
    were matched by translation rather than equality; raises :class:`ConfigError` otherwise.
    """
    ours = [str(n) for n in data_class_names]
    theirs = None if class_names is None else [str(n) for n in class_names]
    if theirs is not None and theirs == ours:
        return None
    if num_classes == 1000 and ours and all(len(n) == 9 and n[0] == "n" and n[1:].isdigit() for n in ours):
        wnids, descriptions = list(ilsvrc_wnids()), list(ilsvrc_descriptions())
        if set(ours) <= set(wnids):
            if ours != wnids:
                raise ConfigError(
                    f"the data's {len(ours)} class folders are ImageNet wnids, a subset of the head's 1000 "
                    f"classes, and an image folder numbers its classes 0..{len(ours) - 1} anew; evaluate "
                    "with data=imagenet data.root=... (it keeps the standard ILSVRC-2012 index)"
                )
            if theirs is None:
                return "the data's 1000 wnid folders are matched to the head's outputs in ILSVRC-2012 order"
            ours = descriptions
    if theirs is None:
        if num_classes != len(ours):
            raise ConfigError(
                f"the model's head has {num_classes} classes but the data has {len(ours)}; evaluate on data "
                "with the classes the weights were trained on"
            )
        return None
    if theirs == ours:  # equal only after translating wnids
        return "the data's wnid folders are the head's ImageNet-1k classes (ILSVRC-2012 order)"
    if len(theirs) == len(ours) == 1000:
        # ImageNet-1k named twice (e.g. transformers' id2label and timm's ImageNetInfo): same index
        # order, spellings may differ in a few places
        same = sum(a.strip().lower() == b.strip().lower() for a, b in zip(theirs, ours))
        if same >= 990:
            return f"the head's and the data's ImageNet-1k names agree at {same} of 1000 indices: matched by index"
    if len(theirs) != len(ours) or set(theirs) != set(ours):
        hint = "evaluate on data with the classes the model was trained on"
        if len(theirs) == 1000 and len(ours) < 1000 and set(ours) <= set(ilsvrc_descriptions()):
            hint = "the data is a subset of ImageNet-1k: use data.class_index=ilsvrc to keep the 1000-class index"
        raise ConfigError(
            f"the model's {len(theirs)} classes differ from the data's {len(ours)} "
            f"(only in model: {sorted(set(theirs) - set(ours))[:5]}, only in data: "
            f"{sorted(set(ours) - set(theirs))[:5]}); {hint}"
        )
    raise ConfigError(
        "the model and the data name the same classes in a different order; "
        "evaluate on a folder laid out like the training data"
    )


def class_change(before: Sequence[str], after: Sequence[str]) -> str | None:
    """How the class list ``after`` differs from ``before`` (index for index), in a few words; None
    when they are equal."""
    old, new = [str(n) for n in before], [str(n) for n in after]
    if old == new:
        return None
    if len(old) != len(new) or set(old) != set(new):
        return (
            f"{len(old)} classes then, {len(new)} now; only then: {sorted(set(old) - set(new))[:5]}, "
            f"only now: {sorted(set(new) - set(old))[:5]}"
        )
    moved = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(old, new)) if a != b]
    more = f" (+{len(moved) - 5} more)" if len(moved) > 5 else ""
    return f"the same {len(old)} names in another order: {', '.join(moved[:5])}{more}"
