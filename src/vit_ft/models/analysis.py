"""What a confusion matrix says, per class: the ``analysis`` section of ``metrics.json``.

Pure functions of a ``[K, K]`` count matrix (rows = true class, columns = predicted class) and the
class names; no torch, no Lightning. The matrix is a dense numpy array up to :data:`DENSE_CONFUSION_MAX`
classes and a :class:`SparseConfusion` (its non-zero cells) above: both give the same numbers, and
nothing ``K x K`` is allocated for the sparse one. A class with no images has no accuracy (``None``),
and the mean-per-class accuracy averages only the classes that have images.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

TOP_CONFUSIONS = 20
# Classes up to which a confusion matrix is a dense [K, K] int64 array (8 MB at 1000 classes); above,
# the evaluators and the prediction pass keep only its non-zero cells (:class:`SparseConfusion`).
DENSE_CONFUSION_MAX = 2048


def dense_confusion(num_classes: int) -> bool:
    """Whether a confusion matrix over ``num_classes`` classes is kept dense (read at call time)."""
    return int(num_classes) <= DENSE_CONFUSION_MAX


class SparseConfusion:
    """A ``[K, K]`` confusion matrix as its non-zero cells, sorted by (true, predicted), each once:
    ``true[i]`` predicted as ``pred[i]`` ``count[i]`` times. Memory grows with the cells, never K².
    (A plain class, not a dataclass: torchmetrics' ``compute`` passes it through untouched.)"""

    __slots__ = ("num_classes", "true", "pred", "count")

    def __init__(self, num_classes: int, true: np.ndarray, pred: np.ndarray, count: np.ndarray) -> None:
        self.num_classes = int(num_classes)
        self.true = np.asarray(true, dtype=np.int64)  # [C]
        self.pred = np.asarray(pred, dtype=np.int64)  # [C]
        self.count = np.asarray(count, dtype=np.int64)  # [C], > 0

    def __repr__(self) -> str:
        return f"SparseConfusion({self.num_classes} classes, {self.true.size} cells, {self.sum()} images)"

    @classmethod
    def from_codes(cls, codes: Any, num_classes: int) -> SparseConfusion:
        """From one cell code ``true * K + pred`` per image (repeats add up)."""
        k = int(num_classes)
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.size and (codes.min() < 0 or codes.max() >= k * k):
            raise ValueError(f"a confusion cell code outside [0, {k}²): {codes.min()}..{codes.max()}")
        cells, count = np.unique(codes, return_counts=True)  # sorted: by true, then predicted
        return cls(k, cells // max(k, 1), cells % max(k, 1), count)

    @classmethod
    def from_pairs(cls, true: Any, pred: Any, num_classes: int) -> SparseConfusion:
        """One count per ``(true[i], pred[i])``, class indices in ``[0, K)``."""
        k = int(num_classes)
        true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
        for name, x in (("true", true), ("predicted", pred)):
            if x.size and (x.min() < 0 or x.max() >= k):
                raise ValueError(f"a {name} class outside [0, {k}): {x.min()}..{x.max()}")
        return cls.from_codes(true * k + pred, k)

    @classmethod
    def from_dense(cls, confusion: Any) -> SparseConfusion:
        k, true, pred, count = confusion_cells(confusion)
        return cls(k, true, pred, count)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_classes, self.num_classes)

    def sum(self) -> int:
        """Images counted."""
        return int(self.count.sum())

    def toarray(self) -> np.ndarray:
        """The dense ``[K, K]`` int64 matrix (for a small K only: a picture, a test)."""
        out = np.zeros(self.shape, dtype=np.int64)
        out[self.true, self.pred] = self.count
        return out


def confusion_cells(confusion: Any) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(K, true, pred, count)``: the non-zero cells of a dense ``[K, K]`` matrix or a
    :class:`SparseConfusion`, sorted by (true, predicted)."""
    if isinstance(confusion, SparseConfusion):
        return confusion.num_classes, confusion.true, confusion.pred, confusion.count
    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"a {c.shape} confusion matrix is not square")
    true, pred = np.nonzero(c)
    return c.shape[0], true.astype(np.int64), pred.astype(np.int64), c[true, pred]


def class_counts(confusion: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(images, right)`` per class (int64 ``[K]``): the row sums and the diagonal."""
    k, true, pred, count = confusion_cells(confusion)
    images = np.bincount(true, weights=count, minlength=k).astype(np.int64)  # exact below 2**53
    right = np.zeros(k, dtype=np.int64)
    diag = true == pred
    right[true[diag]] = count[diag]
    return images, right


def most_confused_with(confusion: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per class (int64 ``[K]``), the class its images are most often predicted as, other than itself
    (the lowest index on a tie; -1 when never wrong) and how many images that is (0 when never wrong)."""
    k, true, pred, count = confusion_cells(confusion)
    off = true != pred
    true, pred, count = true[off], pred[off], count[off]
    order = np.lexsort((pred, -count, true))  # per true class: the largest count first, then the lowest index
    rows, first = np.unique(true[order], return_index=True)
    other = np.full(k, -1, dtype=np.int64)
    n = np.zeros(k, dtype=np.int64)
    other[rows], n[rows] = pred[order][first], count[order][first]
    return other, n


def top_confusion_cells(confusion: Any, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal cells ``(true, pred, count)``, largest first (ties by true, then predicted)."""
    _, true, pred, count = confusion_cells(confusion)
    off = true != pred
    true, pred, count = true[off], pred[off], count[off]
    order = np.lexsort((pred, true, -count))[: max(int(n), 0)]
    return [(int(true[i]), int(pred[i]), int(count[i])) for i in order]


def unique_class_names(class_names: Sequence[str]) -> list[str]:
    """The names as strings, a repeated one suffixed with its index (ImageNet has two ``crane``:
    ``crane [134]``, ``crane [517]``), so they can key a table."""
    names = [str(n) for n in class_names]
    repeated = {n for n, c in Counter(names).items() if c > 1}
    return [f"{n} [{i}]" if n in repeated else n for i, n in enumerate(names)]


def per_class_accuracy(confusion: Any) -> tuple[np.ndarray, float | None]:
    """``(accuracy of each class, NaN where it has no images; their mean over the classes with images)``;
    ``confusion``: dense ``[K, K]`` or :class:`SparseConfusion`."""
    images, right = class_counts(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(images > 0, right / np.maximum(images, 1), np.nan)
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
    most frequent confusions (true -> predicted), most first. ``confusion``: dense ``[K, K]`` or
    :class:`SparseConfusion` (the same dict either way)."""
    if not isinstance(confusion, SparseConfusion):
        shape = np.shape(confusion)
        if len(shape) != 2 or shape[0] != shape[1] or len(class_names) != shape[0]:
            raise ValueError(f"a {shape} confusion matrix for {len(class_names)} class names")
        confusion = SparseConfusion.from_dense(confusion)  # one pass over the K x K cells
    k = confusion.num_classes
    if len(class_names) != k:
        raise ValueError(f"a {confusion.shape} confusion matrix for {len(class_names)} class names")
    names = unique_class_names(class_names)
    images, right = class_counts(confusion)
    total = int(images.sum())
    acc, macro = per_class_accuracy(confusion)
    worst, n_worst = most_confused_with(confusion)
    per_class = {}
    for i, name in enumerate(names):
        n_conf = int(n_worst[i])
        per_class[name] = {
            "index": i,
            "images": int(images[i]),
            "acc1": _finite(acc[i]),
            "top_confusion": names[int(worst[i])] if n_conf else None,
            "top_confusion_count": n_conf,
        }
    # Most frequent off-diagonal cells; ties in (true, predicted) index order.
    top_confusions = [
        {"true": names[t], "pred": names[p], "count": n} for t, p, n in top_confusion_cells(confusion, top)
    ]
    return {
        "split": split,
        "images": total,
        "acc1": float(right.sum() / total) if total else None,
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
