"""What a confusion matrix says, per class: the ``analysis`` section of ``metrics.json``.

Pure functions of a ``[K, K]`` count matrix (rows = true class, columns = predicted class) and the
class names; no torch, no Lightning. A class with no images has no accuracy (``None``), and the
mean-per-class accuracy averages only the classes that have images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

TOP_CONFUSIONS = 20


def unique_class_names(class_names: Sequence[str]) -> list[str]:
    """The names as strings, a repeated one suffixed with its index (ImageNet has two ``crane``:
    ``crane [134]``, ``crane [517]``), so they can key a table."""
    names = [str(n) for n in class_names]
    repeated = {n for n, c in Counter(names).items() if c > 1}
    return [f"{n} [{i}]" if n in repeated else n for i, n in enumerate(names)]


def per_class_accuracy(confusion: Any) -> tuple[np.ndarray, float | None]:
    """``(accuracy of each class, NaN where it has no images; their mean over the classes with images)``."""
    c = np.asarray(confusion, dtype=np.int64)
    images = c.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(images > 0, np.diagonal(c) / np.maximum(images, 1), np.nan)
    has = images > 0
    return acc, (float(acc[has].mean()) if has.any() else None)


def _finite(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def analysis_summary(
    confusion: Any,
    class_names: Sequence[str],
    *,
    split: str,
    ece: float | None,
    top: int = TOP_CONFUSIONS,
) -> dict[str, Any]:
    """The ``analysis`` dict of ``metrics.json``: micro and mean-per-class accuracy, ECE, a table keyed by
    class name (images, accuracy or ``None``, the class it is most often mistaken for) and the ``top``
    most frequent confusions (true -> predicted), most first."""
    c = np.asarray(confusion, dtype=np.int64)
    k = c.shape[0]
    if c.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"a {c.shape} confusion matrix for {len(class_names)} class names")
    names = unique_class_names(class_names)
    images = c.sum(axis=1)
    total = int(images.sum())
    acc, macro = per_class_accuracy(c)
    off = c.copy()
    np.fill_diagonal(off, 0)
    worst = off.argmax(axis=1) if k else np.zeros(0, dtype=np.int64)
    per_class = {}
    for i, name in enumerate(names):
        n_conf = int(off[i, worst[i]])
        per_class[name] = {
            "index": i,
            "images": int(images[i]),
            "acc1": _finite(acc[i]),
            "top_confusion": names[int(worst[i])] if n_conf else None,
            "top_confusion_count": n_conf,
        }
    # Most frequent off-diagonal cells; ties in (true, predicted) index order.
    flat = off.reshape(-1)
    nonzero = np.flatnonzero(flat)
    order = nonzero[np.lexsort((nonzero, -flat[nonzero]))][:top]
    top_confusions = [
        {"true": names[int(j) // k], "pred": names[int(j) % k], "count": int(flat[j])} for j in order
    ]
    return {
        "split": split,
        "images": total,
        "acc1": float(np.trace(c) / total) if total else None,
        "acc1_macro": _finite(macro),
        "ece": _finite(ece),
        "per_class": per_class,
        "top_confusions": top_confusions,
    }


def multilabel_summary(scores: dict[str, Any], class_names: Sequence[str], split: str) -> dict[str, Any]:
    """The ``analysis`` dict of ``metrics.json`` for a multi-label model, from
    :func:`~vit_ft.models.multilabel_metrics.multilabel_scores`: the averages and, keyed by class name,
    each class's AP, F1 (at its threshold in use), support (positives), threshold in use and max-F1
    threshold."""
    names = unique_class_names(class_names)
    per_class = {
        name: {
            "index": i,
            "support": int(scores["support"][i]),
            "ap": _finite(scores["ap"][i]),
            "f1": _finite(scores["f1"][i]),
            "threshold": float(scores["thresholds"][i]),
            "best_threshold": float(scores["best_thresholds"][i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "split": split,
        "task": "multilabel",
        "images": int(scores.get("images", 0)),
        **{k: _finite(scores[k]) for k in ("mAP", "mAP_micro", "f1_micro", "f1_macro", "exact_match")},
        "per_class": per_class,
    }
