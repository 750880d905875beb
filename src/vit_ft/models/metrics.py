"""What an evaluation stream logs, one :class:`Evaluator` per stream (``val``, ``test``, ``val_ema``, ``test_ema``).

An evaluator is updated with ``(logits, targets)`` per batch and, at the end of the epoch, gives the
``(name, value)`` pairs the module logs, gathered over ranks (torchmetrics' ``compute`` is the
collective; every rank calls it). :class:`SingleLabelMetrics` is the single-label one: loss, top-1,
top-5 (with 5 or more classes), mean-per-class accuracy and, for ``val``/``test``, the analysis
(confusion matrix, ECE, reliability bins; the matrix is dense up to ``DENSE_CONFUSION_MAX`` classes,
its non-zero cells above); the multi-label one is
:class:`~vit_ft.models.multilabel_metrics.MultiLabelMetrics`. Metric states are not persistent:
checkpoints hold none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryCalibrationError,
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
)
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from vit_ft.models.analysis import SparseConfusion, dense_confusion, per_class_accuracy

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


class ReliabilityBins(Metric):
    """The reliability diagram: per equal-width bin of top-1 confidence, how many predictions fell in
    it, their summed confidence and how many were right. Sums, so DDP adds the ranks' counts.

    Bins are those of torchmetrics' calibration error (``[i/n, (i+1)/n)``), except that a confidence
    of exactly 1 counts in the last bin."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, n_bins: int = ECE_BINS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = int(n_bins)
        self.add_state("count", torch.zeros(self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        # Summed confidence in millionths: an integer state, which no precision setting converts to bf16.
        self.add_state("confidence_e6", torch.zeros(self.n_bins, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        """``confidence``: ``[N]`` probability of the predicted class; ``correct``: ``[N]`` whether it was right."""
        conf = confidence.float()
        edges = torch.linspace(0, 1, self.n_bins + 1, device=conf.device)
        b = (torch.bucketize(conf, edges, right=True) - 1).clamp_(0, self.n_bins - 1)
        # index_put_ with accumulate: deterministic on every device (bincount is not on CUDA)
        self.count.index_put_((b,), torch.ones_like(b), accumulate=True)
        self.correct.index_put_((b,), correct.long(), accumulate=True)
        self.confidence_e6.index_put_((b,), (conf * 1e6).round().long(), accumulate=True)

    def compute(self) -> dict[str, list[float]]:
        """``bin_edges`` (n+1), and per bin the mean ``confidence``, the ``accuracy`` (NaN when empty), ``count``."""
        count = self.count.cpu().double()
        conf = (self.confidence_e6.cpu().double() / 1e6 / count).tolist()
        acc = (self.correct.cpu().double() / count).tolist()
        return {
            "bin_edges": torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64).tolist(),
            "confidence": conf,
            "accuracy": acc,
            "count": [int(c) for c in count.tolist()],
        }


class ConfusionMatrix(MulticlassConfusionMatrix):
    """torchmetrics' multiclass confusion matrix (its state, DDP sum and compute), counted in place:
    an update costs O(batch), where the parent's adds a K² bincount per batch (and, under
    deterministic algorithms or on MPS, builds a ``[batch, K²]`` comparison: 2 GB for 1000 classes)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: ``[N, K]`` logits or probabilities, or ``[N]`` class indices; ``target``: ``[N]``."""
        pred = preds.argmax(dim=1) if preds.ndim == target.ndim + 1 else preds
        target = target.long()
        self.confmat.index_put_((target, pred.long()), torch.ones_like(target), accumulate=True)


class SparseConfusionMatrix(Metric):
    """The confusion matrix of many classes, as the cell code ``true * K + predicted`` of every image
    (8 bytes an image; a list state, so DDP concatenates the ranks'): nothing ``K x K``, on the
    device or in ``compute``, which gives the non-zero cells (:class:`SparseConfusion`)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.add_state("codes", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: ``[N, K]`` logits or probabilities, or ``[N]`` class indices; ``target``: ``[N]``."""
        pred = preds.argmax(dim=1) if preds.ndim == target.ndim + 1 else preds
        self.codes.append(target.long().reshape(-1) * self.num_classes + pred.long().reshape(-1))

    def _sync_dist(self, dist_sync_fn: Any = gather_all_tensors, process_group: Any = None) -> None:
        # A rank without images would send torchmetrics' float32 placeholder among int64 codes.
        if isinstance(self.codes, list) and not self.codes:
            self.codes.append(torch.zeros(0, dtype=torch.int64, device=self.device))
        super()._sync_dist(dist_sync_fn, process_group)

    def compute(self) -> SparseConfusion:
        codes = self.codes
        if isinstance(codes, list):
            codes = dim_zero_cat(codes) if codes else torch.zeros(0, dtype=torch.int64)
        cells, counts = torch.unique(codes.long(), return_counts=True)  # sorted: by true, then predicted
        k = self.num_classes
        cells, counts = cells.cpu().numpy(), counts.cpu().numpy().astype(np.int64)
        return SparseConfusion(k, cells // k, cells % k, counts)


class AnalysisMetrics(torch.nn.Module):
    """What an evaluation adds to loss, top-1 and top-5: the confusion matrix, the expected calibration
    error (top-label, L1, ``n_bins`` equal-width bins) and the reliability bins. ``compute`` gathers
    them over ranks (a collective under DDP). No persistent state: checkpoints are unchanged.

    The matrix is dense (:class:`ConfusionMatrix`, ``K²`` int64) up to ``DENSE_CONFUSION_MAX``
    classes, and :class:`SparseConfusionMatrix` above (8 bytes an image)."""

    def __init__(self, num_classes: int, n_bins: int = ECE_BINS) -> None:
        super().__init__()
        self.confusion: Metric = (
            ConfusionMatrix(num_classes=num_classes, validate_args=False)
            if dense_confusion(num_classes)
            else SparseConfusionMatrix(num_classes)
        )
        # torchmetrics' binary calibration error on (top-1 confidence, correct) is the number
        # MulticlassCalibrationError gives, without its second pass over the [N, K] probabilities.
        self.ece = BinaryCalibrationError(n_bins=n_bins, norm="l1", validate_args=False)
        self.reliability = ReliabilityBins(n_bins)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        # Top-1 class and its softmax probability, without materialising the [N, K] probabilities.
        top, pred = logits.float().max(dim=1)
        conf = (top - torch.logsumexp(logits.float(), dim=1)).exp()
        correct = pred == target
        self.confusion.update(pred, target)
        # float32 as the confidences: a rank without images sends torchmetrics' float32 placeholder
        self.ece.update(conf, correct.float())
        self.reliability.update(conf, correct)

    def counts(self) -> np.ndarray | SparseConfusion:
        """The confusion matrix over every rank's images (a collective under DDP): numpy int64 ``[K, K]``
        (rows = true class), or its non-zero cells above ``DENSE_CONFUSION_MAX`` classes."""
        confusion = self.confusion.compute()
        if isinstance(confusion, SparseConfusion):
            return confusion
        return confusion.cpu().numpy().astype(np.int64)

    def compute(self) -> dict[str, Any]:
        """``confusion`` (:meth:`counts`), ``ece`` (NaN without images), ``reliability``."""
        confusion = self.counts()  # every rank's counts (a sum over ranks)
        # An evaluation without images (every one skipped as unusable) has no calibration error.
        ece = float(self.ece.compute()) if int(confusion.sum()) else float("nan")
        return {
            "confusion": confusion,
            "ece": ece,
            "reliability": self.reliability.compute(),
        }

    def reset(self) -> None:
        for m in (self.confusion, self.ece, self.reliability):
            m.reset()


class PerClassCounts(Metric):
    """Images and right top-1 answers per class (sums, so DDP adds the ranks'); ``compute``: their mean
    per-class accuracy over the classes with images (NaN without any): ``acc1_macro`` in O(K) memory."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        k = int(num_classes)
        self.add_state("images", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("right", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        target = target.long()
        right = (logits.argmax(dim=1) == target).long()
        self.images.index_put_((target,), torch.ones_like(target), accumulate=True)
        self.right.index_put_((target,), right, accumulate=True)

    def compute(self) -> float:
        images, right = self.images.cpu().double(), self.right.cpu().double()
        has = images > 0
        return float((right[has] / images[has]).mean()) if bool(has.any()) else float("nan")


class MeanLoss(Metric):
    """The per-image mean of batch losses (each weighted by its batch size), as Lightning's epoch mean of
    a logged tensor is. The sum stays float32 whatever dtype a precision setting casts the module to."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _apply(self, fn: Any, exclude_state: Any = ()) -> Any:
        total = self.total
        this = super()._apply(fn, exclude_state=(*exclude_state, "total"))
        this.total = total.to(this.device)  # moves, never casts
        return this

    def update(self, loss: torch.Tensor, n: int) -> None:
        self.total = self.total + loss.detach().float() * n
        self.count += n

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class Evaluator(nn.Module):
    """One evaluation stream: ``update(logits, targets)`` per batch, :meth:`compute` at the epoch end.

    ``compute`` returns the ``(name, value)`` pairs to log (names ``<prefix>/<metric>``; none when the
    stream saw no batch on any rank) and leaves :attr:`analysis` (``None`` unless asked for and kept),
    then resets. :attr:`progress` names the metrics shown in the progress bar."""

    progress: tuple[str, ...] = ()

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.analysis: dict[str, Any] | None = None

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, analysis: bool = True) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Every ``<prefix>/<metric>`` name :meth:`compute` may give (what ``monitor`` may name)."""
        raise NotImplementedError


class SingleLabelMetrics(Evaluator):
    """``<prefix>/loss`` (cross-entropy), ``acc1``, ``acc5`` (``num_classes >= 5``), ``acc1_macro`` (the
    mean of the per-class accuracies, from a confusion matrix: what ``monitor=val/acc1_macro`` follows)
    and, with ``analysis=True``, ``ece`` (:attr:`analysis`: confusion, ece, reliability, acc1_macro)."""

    progress = ("loss", "acc1")

    def __init__(self, prefix: str, num_classes: int, analysis: bool = False) -> None:
        super().__init__(prefix)
        k = int(num_classes)
        self.loss = MeanLoss()
        self.acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro")
        self.acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro") if k >= 5 else None
        self.extra = AnalysisMetrics(k) if analysis else None
        # acc1_macro's counts: the analysis' confusion matrix, or per-class counts of its own
        self.per_class = None if analysis else PerClassCounts(k)
        self.num_classes = k

    def names(self) -> list[str]:
        return stream_metric_names(self.prefix, self.num_classes, self.extra is not None)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self.loss.update(F.cross_entropy(logits.float(), target), target.shape[0])
        self.acc1.update(logits, target)
        if self.acc5 is not None:
            self.acc5.update(logits, target)
        if self.extra is not None:
            self.extra.update(logits, target)
        else:
            self.per_class.update(logits, target)

    def compute(self, analysis: bool = True) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        self.analysis = None
        res = self.extra.compute() if self.extra is not None and analysis else None
        if synced_count(self.loss):  # the same answer on every rank: all compute, or none
            out += [("loss", self.loss.compute()), ("acc1", self.acc1.compute())]
            if self.acc5 is not None:
                out.append(("acc5", self.acc5.compute()))
            if res is not None:
                macro = _macro(res["confusion"])
            elif self.extra is not None:  # the sanity check: the analysis is not computed
                macro = _macro(self.extra.counts())
            else:
                macro = self.per_class.compute()
            out.append(("acc1_macro", macro))
        if res is not None:
            macro = _macro(res["confusion"])
            if not out:  # no image: the analysis still says NaN
                out.append(("acc1_macro", macro))
            out.append(("ece", res["ece"]))
            self.analysis = {"acc1_macro": macro, **res}
        self.reset()
        return [(f"{self.prefix}/{name}", value) for name, value in out]

    def reset(self) -> None:
        for m in (self.loss, self.acc1, self.acc5, self.extra, self.per_class):
            if m is not None:
                m.reset()


def stream_metric_names(prefix: str, num_classes: int, analysis: bool) -> list[str]:
    """The names a :class:`SingleLabelMetrics` stream gives (``<prefix>/<metric>``)."""
    out = ["loss", "acc1"] + (["acc5"] if int(num_classes) >= 5 else []) + ["acc1_macro"]
    out += ["ece"] if analysis else []
    return [f"{prefix}/{n}" for n in out]


def _macro(confusion: Any) -> float:
    """Mean per-class accuracy of a confusion matrix (dense or sparse; classes with images); NaN without any."""
    macro = per_class_accuracy(confusion)[1]
    return float("nan") if macro is None else float(macro)


def synced_count(m: MeanLoss) -> int:
    """``m``'s image count summed over ranks (a collective under DDP)."""
    count = m.count.clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(count)
    return int(count)
