"""Per-class results, confusions and calibration of one evaluated split, from whichever source a run has:
the model's in-memory ``eval_analysis`` (during training), ``<split>_predictions.csv`` (every image), or
the ``analysis`` of ``metrics.json`` (per-class numbers and the top confusions, no full matrix). Above
``DENSE_CONFUSION_MAX`` classes the matrix is its non-zero cells (:class:`SparseConfusion`), never K x K."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vit_ft.io import SafeCSVWriter, atomic_path, csv_text
from vit_ft.models.analysis import (
    SparseConfusion,
    class_counts,
    dense_confusion,
    most_confused_with,
    top_confusion_cells,
)
from vit_ft.report.files import Predictions, RunFiles, image_path, number

RELIABILITY_BINS = 15


@dataclass
class ClassResult:
    index: int
    name: str
    images: int
    correct: int
    top_confusion: str | None = None
    top_confusion_count: int = 0

    @property
    def acc1(self) -> float | None:
        """Top-1 accuracy; None for a class with no images (not 0)."""
        return self.correct / self.images if self.images else None


@dataclass
class Pair:
    true: str
    pred: str
    count: int


@dataclass
class Analysis:
    split: str
    source: str
    classes: list[ClassResult]
    pairs: list[Pair]  # most confused first
    confusion: np.ndarray | SparseConfusion | None = None  # [K, K] rows = true, cols = predicted
    reliability: dict[str, list[float]] | None = None  # bin_edges, confidence, accuracy, count
    ece: float | None = None
    acc1_macro: float | None = None

    @property
    def images(self) -> int:
        return sum(c.images for c in self.classes)

    @property
    def acc1(self) -> float | None:
        n = self.images
        return sum(c.correct for c in self.classes) / n if n else None

    def worst(self, n: int | None = None) -> list[ClassResult]:
        """Classes with images, lowest accuracy first (ties: more images first, then by index)."""
        ranked = sorted(
            (c for c in self.classes if c.images), key=lambda c: (c.acc1 or 0.0, -c.images, c.index)
        )
        return ranked if n is None else ranked[:n]

    def without_images(self) -> list[ClassResult]:
        return [c for c in self.classes if not c.images]


def top_pairs(confusion: np.ndarray | SparseConfusion, names: list[str], n: int = 20) -> list[Pair]:
    """The ``n`` largest off-diagonal cells of ``confusion``, largest first (ties by true, then predicted)."""
    return [Pair(names[t], names[p], c) for t, p, c in top_confusion_cells(confusion, n)]


def from_confusion(
    confusion: np.ndarray | SparseConfusion, names: list[str], split: str, source: str, n_pairs: int = 20
) -> Analysis:
    """``confusion``: dense ``[K, K]`` counts or their non-zero cells (the same analysis either way)."""
    if isinstance(confusion, SparseConfusion):
        cells = confusion
    else:
        confusion = np.asarray(confusion, dtype=np.int64)
        cells = SparseConfusion.from_dense(confusion)  # one pass over the K x K cells
    k = cells.num_classes
    names = list(names) + [str(i) for i in range(len(names), k)]
    top, counts = most_confused_with(cells)
    images, correct = (x.tolist() for x in class_counts(cells))
    counts = counts.tolist()
    classes = [
        ClassResult(i, names[i], images[i], correct[i], names[int(top[i])] if counts[i] else None, counts[i])
        for i in range(k)
    ]
    accs = [c.acc1 for c in classes if c.acc1 is not None]
    return Analysis(
        split=split,
        source=source,
        classes=classes,
        pairs=top_pairs(cells, names, n_pairs),
        confusion=confusion,
        acc1_macro=float(np.mean(accs)) if accs else None,
    )


def from_eval(analysis: dict[str, Any]) -> Analysis:
    """The model's ``eval_analysis`` (class_names, confusion, reliability, ece, acc1_macro)."""
    confusion = analysis["confusion"]
    out = from_confusion(
        confusion if isinstance(confusion, SparseConfusion) else np.asarray(confusion),
        [str(n) for n in analysis.get("class_names") or []],
        str(analysis.get("split") or "val"),
        "the last validation",
    )
    rel = analysis.get("reliability")
    if isinstance(rel, dict) and rel.get("bin_edges") is not None:
        out.reliability = {k: [float(x) for x in np.asarray(rel[k]).ravel()] for k in rel}
    out.ece = number(analysis.get("ece"))
    out.acc1_macro = number(analysis.get("acc1_macro")) or out.acc1_macro
    return out


def reliability_bins(prob: np.ndarray, correct: np.ndarray, n_bins: int = RELIABILITY_BINS) -> dict:
    """Equal-width confidence bins (right-closed): mean confidence, accuracy and count of each."""
    ok = np.isfinite(prob)
    prob, correct = np.clip(prob[ok], 0.0, 1.0), correct[ok].astype(np.float64)
    idx = np.clip(np.ceil(prob * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf = np.bincount(idx, weights=prob, minlength=n_bins)
    acc = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf, acc = conf / count, acc / count
    return {
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": np.nan_to_num(conf).tolist(),
        "accuracy": np.nan_to_num(acc).tolist(),
        "count": count.tolist(),
    }


def ece_of(reliability: dict) -> float | None:
    count = np.asarray(reliability["count"], dtype=np.float64)
    if count.sum() == 0:
        return None
    gap = np.abs(np.asarray(reliability["accuracy"]) - np.asarray(reliability["confidence"]))
    return float((count * gap).sum() / count.sum())


def from_predictions(pred: Predictions, names: list[str]) -> Analysis:
    k = max(len(names), int(pred.true_index.max(initial=-1)) + 1, int(pred.pred_index.max(initial=-1)) + 1)
    if dense_confusion(k):
        confusion = np.zeros((k, k), dtype=np.int64)
        np.add.at(confusion, (pred.true_index, pred.pred_index), 1)
    else:
        confusion = SparseConfusion.from_pairs(pred.true_index, pred.pred_index, k)
    out = from_confusion(confusion, names, pred.split, pred.path.name)
    out.reliability = reliability_bins(pred.prob, pred.correct)
    out.ece = ece_of(out.reliability)
    return out


def from_metrics(analysis: dict[str, Any], names: list[str]) -> Analysis:
    """``metrics.json``'s analysis: per-class numbers and the top confusions (no matrix, no reliability)."""
    per_class = analysis.get("per_class") or {}
    classes = []
    for name, info in per_class.items():
        info = info if isinstance(info, dict) else {}
        images = int(info.get("images") or 0)
        acc = number(info.get("acc1"))
        classes.append(
            ClassResult(
                index=int(info["index"]) if isinstance(info.get("index"), int) else len(classes),
                name=str(name),
                images=images,
                correct=round((acc or 0.0) * images),
                top_confusion=info.get("top_confusion"),
                top_confusion_count=int(info.get("top_confusion_count") or 0),
            )
        )
    seen = {c.index for c in classes}
    classes += [ClassResult(i, n, 0, 0) for i, n in enumerate(names) if i not in seen]
    classes.sort(key=lambda c: c.index)
    pairs = [
        Pair(str(p.get("true")), str(p.get("pred")), int(p.get("count") or 0))
        for p in analysis.get("top_confusions") or []
        if isinstance(p, dict)
    ]
    return Analysis(
        split=str(analysis.get("split") or "val"),
        source="metrics.json",
        classes=classes,
        pairs=pairs,
        ece=number(analysis.get("ece")),
        acc1_macro=number(analysis.get("acc1_macro")),
    )


def analysis_of(run: RunFiles, eval_analysis: dict[str, Any] | None = None) -> Analysis | None:
    """The best source there is: the in-memory analysis, the predictions CSV, metrics.json's analysis
    (None for a multi-label run: its pages are report/multilabel.py's)."""
    if (run.analysis or {}).get("task") == "multilabel" or (eval_analysis or {}).get("ap") is not None:
        return None
    if eval_analysis is not None and eval_analysis.get("confusion") is not None:
        return from_eval(eval_analysis)
    names = run.class_names
    if run.predictions is not None and len(run.predictions):
        out = from_predictions(run.predictions, names)
        saved = run.analysis or {}
        if saved.get("split") in (None, out.split):
            out.ece = number(saved.get("ece")) if number(saved.get("ece")) is not None else out.ece
        return out
    if run.analysis is not None and run.analysis.get("per_class"):
        return from_metrics(run.analysis, names)
    return None


# -- the most confident mistakes ----------------------------------------------------------------------
MISTAKES_COLUMNS = ["rank", "index", "file", "true_label", "pred_label", "prob", "image"]


@dataclass
class Mistake:
    rank: int
    index: int
    file: str
    true_label: str
    pred_label: str
    prob: float
    path: Path | None  # the readable image file, None when ``file`` is not one


def select_mistakes(pred: Predictions, run_dir: Path, n: int = 16) -> list[Mistake]:
    """The ``n`` wrong rows with the highest predicted probability (ties: lower index first)."""
    wrong = np.flatnonzero(~pred.correct)
    prob = np.nan_to_num(pred.prob[wrong], nan=-1.0)
    order = wrong[np.lexsort((pred.index[wrong], -prob))][:n]
    return [
        Mistake(
            rank=r + 1,
            index=int(pred.index[i]),
            file=pred.file[i],
            true_label=pred.true_label[i],
            pred_label=pred.pred_label[i],
            prob=float(pred.prob[i]),
            path=image_path(pred.file[i], run_dir),
        )
        for r, i in enumerate(order.tolist())
    ]


def write_mistakes_csv(mistakes: list[Mistake], path: Path) -> None:
    """The grid's rows: ``image`` is the file drawn, empty when it could not be opened."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = SafeCSVWriter(f)
        w.writerow(MISTAKES_COLUMNS)
        for m in mistakes:
            w.writerow([m.rank, m.index, m.file, m.true_label, m.pred_label, f"{m.prob:.6f}", m.path or ""])


def read_mistakes(path: str | os.PathLike) -> list[Mistake]:
    """The rows of a ``mistakes.csv`` written by :func:`write_mistakes_csv` ([] when there is none)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: csv_text(v) for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [
        Mistake(
            rank=int(r["rank"]),
            index=int(r["index"]),
            file=r["file"],
            true_label=r["true_label"],
            pred_label=r["pred_label"],
            prob=number(r["prob"]) or 0.0,
            path=Path(r["image"]) if r.get("image") else None,
        )
        for r in rows
    ]
