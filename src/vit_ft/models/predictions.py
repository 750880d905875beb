"""One pass of a classifier over a split, every image's top-k kept: ``<split>_predictions.csv``.

Under DDP each rank predicts its share of the split (the distributed sampler's); the shares are
gathered with their record indices and the duplicates a sampler pads in are dropped
(:func:`gather_by_index`), so every rank ends with each image once, in record order. Only rank 0
writes the file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics.functional.classification import binary_calibration_error

from vit_ft.io import SafeCSVWriter, atomic_path
from vit_ft.models.analysis import SparseConfusion, dense_confusion, unique_class_names

TOP_K = 5
CSV_HEADER = (
    "index",
    "file",
    "true_index",
    "true_label",
    "pred_index",
    "pred_label",
    "prob",
    "correct",
    "topk",
)


def gather_by_index(
    all_gather: Callable[[torch.Tensor], torch.Tensor],
    world: int,
    index: torch.Tensor,
    *columns: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Every rank's rows (``index`` and ``columns``, one row per sample), gathered, sorted by record
    index, one row per index (samplers may pad with repeats); on the CPU. Collective under DDP:
    every rank calls it, with its own number of rows (``all_gather``: a LightningModule's)."""
    if world > 1:
        dev = index.device
        counts = all_gather(torch.tensor([index.shape[0]], device=dev)).reshape(-1)
        n_max = int(counts.max())
        valid = torch.cat([torch.arange(n_max, device=dev) < c for c in counts])

        def gather(t: torch.Tensor) -> torch.Tensor:
            pad = torch.zeros((n_max - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
            return all_gather(torch.cat([t, pad])).reshape(-1, *t.shape[1:])[valid]

        index, columns = gather(index), tuple(gather(c) for c in columns)
    index, columns = index.cpu(), tuple(c.cpu() for c in columns)
    order = torch.argsort(index, stable=True)
    index, columns = index[order], tuple(c[order] for c in columns)
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return (index[keep], *(c[keep] for c in columns))


@dataclass
class Predictions:
    """Per image of a split (record order; images skipped as unusable are absent): its record index,
    true class, and the ``k`` most probable classes with their softmax probabilities."""

    index: np.ndarray  # int64 [N]
    true: np.ndarray  # int64 [N]
    topk_index: np.ndarray  # int64 [N, k]
    topk_prob: np.ndarray  # float32 [N, k]

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def pred(self) -> np.ndarray:
        return self.topk_index[:, 0]

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.true

    def confusion(self, num_classes: int) -> np.ndarray | SparseConfusion:
        """``[K, K]`` counts, rows = true class, columns = predicted class: a dense array up to
        ``DENSE_CONFUSION_MAX`` classes, its non-zero cells (:class:`SparseConfusion`) above."""
        if not dense_confusion(num_classes):
            return SparseConfusion.from_pairs(self.true, self.pred, num_classes)
        flat = np.bincount(self.true * num_classes + self.pred, minlength=num_classes * num_classes)
        return flat.reshape(num_classes, num_classes).astype(np.int64)

    def ece(self, n_bins: int = 15) -> float | None:
        """Expected calibration error (L1, ``n_bins`` equal-width bins): the validation's ``ece``."""
        conf = np.ascontiguousarray(self.topk_prob[:, 0], dtype=np.float32)
        if not len(self) or not np.isfinite(conf).all():  # no images, or a model that outputs NaN
            return None
        conf = torch.from_numpy(conf)
        right = torch.from_numpy(self.correct.astype(np.int64))
        return float(binary_calibration_error(conf, right, n_bins=n_bins, norm="l1", validate_args=False))


@dataclass
class MultiLabelPredictions:
    """Per image of a split (record order) of a multi-label model: its record index, true labels
    (multi-hot) and every class's sigmoid probability."""

    index: np.ndarray  # int64 [N]
    targets: np.ndarray  # bool [N, K]
    probs: np.ndarray  # float32 [N, K]

    def __len__(self) -> int:
        return int(self.index.shape[0])


MULTILABEL_CSV_HEADER = ("index", "file", "true_labels", "pred_labels", "exact", "probs")


class PredictionPass(L.LightningModule):
    """Runs ``classifier`` over ``(index, x, label)`` batches given to ``trainer.predict``; keeps the top-k.

    ``x`` is whatever the classifier's forward takes (images, or cached features for a linear probe)."""

    def __init__(self, classifier: torch.nn.Module, k: int = TOP_K) -> None:
        super().__init__()
        self.classifier = classifier
        self.k = int(k)
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.result: Predictions | None = None

    def on_predict_start(self) -> None:
        self.parts = []

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:  # every image of this batch was skipped as unusable
            return None
        idx, x, y = batch
        if getattr(self.classifier, "multilabel", False):  # every class's probability, multi-hot targets
            self.parts.append((idx.long(), (y >= 0.5).to(torch.uint8), self.classifier(x).float().sigmoid()))
            return None
        probs = self.classifier(x).float().softmax(-1)
        p, i = probs.topk(min(self.k, probs.shape[1]), dim=1)
        self.parts.append((idx.long(), y.long(), i, p))
        return None

    def on_predict_epoch_end(self) -> None:
        if getattr(self.classifier, "multilabel", False):
            n = int(self.classifier.num_classes)
            if self.parts:
                cols = [torch.cat([p[j] for p in self.parts]) for j in range(3)]
            else:
                cols = [
                    torch.zeros(0, dtype=torch.long, device=self.device),
                    torch.zeros(0, n, dtype=torch.uint8, device=self.device),
                    torch.zeros(0, n, device=self.device),
                ]
            idx, t, p = gather_by_index(self.all_gather, int(self.trainer.world_size), *cols)
            self.result = MultiLabelPredictions(idx.numpy(), t.numpy().astype(bool), p.numpy())
            self.parts = []
            return
        dev, k = self.device, min(self.k, int(getattr(self.classifier, "num_classes", self.k)))
        if self.parts:
            cols = [torch.cat([p[j] for p in self.parts]) for j in range(4)]
        else:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            cols = [
                empty,
                empty,
                torch.zeros(0, k, dtype=torch.long, device=dev),
                torch.zeros(0, k, device=dev),
            ]
        idx, y, i, p = gather_by_index(self.all_gather, int(self.trainer.world_size), *cols)
        self.result = Predictions(idx.numpy(), y.numpy(), i.numpy(), p.numpy())
        self.parts = []


def predict_split(
    trainer: L.Trainer, classifier: torch.nn.Module, loader: Any, k: int = TOP_K
) -> Predictions | MultiLabelPredictions:
    """Top-``k`` predictions of ``classifier`` on ``loader``'s ``(index, x, label)`` batches, every image
    once. Collective under DDP (every rank calls it; every rank gets the whole result)."""
    runner = PredictionPass(classifier, k)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*predict returned None.*")
        trainer.predict(runner, dataloaders=loader, return_predictions=False)
    assert runner.result is not None
    return runner.result


def write_predictions_csv(
    path: str | os.PathLike, preds: Predictions, class_names: Sequence[str], file_name: Callable[[int], str]
) -> str:
    """``preds`` as a UTF-8 CSV (``CSV_HEADER``), written atomically. ``file_name(i)``: what names record ``i``
    (its path); ``topk``: a JSON list of ``[label, probability]``, most probable first."""
    names = unique_class_names(class_names)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = SafeCSVWriter(f)  # a class or file named "=..." stays text in a spreadsheet
        w.writerow(CSV_HEADER)
        for r in range(len(preds)):
            i, t, p = int(preds.index[r]), int(preds.true[r]), int(preds.pred[r])
            topk = [
                [names[int(c)], round(float(q), 6)] for c, q in zip(preds.topk_index[r], preds.topk_prob[r])
            ]
            w.writerow(
                [
                    i,
                    file_name(i),
                    t,
                    names[t],
                    p,
                    names[p],
                    f"{float(preds.topk_prob[r, 0]):.6f}",
                    int(t == p),
                    json.dumps(topk, ensure_ascii=False),
                ]
            )
    return str(path)


def write_multilabel_csv(
    path: str | os.PathLike,
    preds: MultiLabelPredictions,
    class_names: Sequence[str],
    file_name: Callable[[int], str],
    thresholds: Sequence[float],
) -> str:
    """``preds`` as a UTF-8 CSV (``MULTILABEL_CSV_HEADER``), written atomically: the true and the
    predicted labels (probability at or over the class's threshold) separated by spaces, whether the
    sets are equal, and ``probs``: a JSON object of every class's probability."""
    names = unique_class_names(class_names)
    thr = np.asarray(thresholds, dtype=np.float32)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = SafeCSVWriter(f)
        w.writerow(MULTILABEL_CSV_HEADER)
        for r in range(len(preds)):
            i = int(preds.index[r])
            true, pred = preds.targets[r], preds.probs[r] >= thr
            probs = {names[c]: round(float(q), 6) for c, q in enumerate(preds.probs[r])}
            w.writerow(
                [
                    i,
                    file_name(i),
                    " ".join(names[c] for c in np.flatnonzero(true)),
                    " ".join(names[c] for c in np.flatnonzero(pred)),
                    int(bool((true == pred).all())),
                    json.dumps(probs, ensure_ascii=False),
                ]
            )
    return str(path)
