"""The multi-label evaluator, :class:`MultiLabelMetrics` (an :class:`~vit_ft.models.metrics.Evaluator`):
loss, mAP, F1 at the thresholds in use, exact match, and per class AP, F1, support and the max-F1
threshold, from every image's scores (:class:`ScoreStore`) and one sort of all classes
(:func:`ranked_curves`). :func:`multilabel_scores` is the same computation on scores already gathered
(the predictions files, the report).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from vit_ft.models.metrics import Evaluator, MeanLoss, synced_count


class ScoreStore(Metric):
    """Every image's sigmoid probabilities ``[N, K]`` and multi-hot targets, concatenated over ranks by
    torchmetrics' state sync (``dist_reduce_fx="cat"``): exact average precision and per-class
    thresholds need the scores themselves (binned curves would trade exactness for memory; at 50,000
    images x 1,000 classes the scores take 200 MB on each rank at compute)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("probs", [], dist_reduce_fx="cat")
        self.add_state("targets", [], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.targets.append((targets >= 0.5).to(torch.uint8))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        def cat(x: Any) -> torch.Tensor:
            return torch.cat(x) if isinstance(x, list) else x

        return cat(self.probs), cat(self.targets)


def ranked_curves(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per column of ``probs`` ``[N, K]`` (one sort of all columns at once): the exact average precision
    (sklearn's definition: ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds, ties grouped; NaN
    without a positive) and the threshold of max F1 (a prediction is ``prob >= threshold``; halfway
    between the last score predicted positive and the next lower score)."""
    s, order = probs.sort(dim=0, descending=True, stable=True)
    y = targets.gather(0, order).double()
    tp, fp = y.cumsum(0), (1 - y).cumsum(0)
    cut = torch.ones_like(s, dtype=torch.bool)  # the last row of each run of equal scores
    cut[:-1] = s[:-1] != s[1:]
    pos = y.sum(0)
    tp_cut = torch.where(cut, tp, torch.zeros_like(tp))
    prev = torch.cat([torch.zeros_like(tp[:1]), tp_cut.cummax(0).values[:-1]])  # tp at the previous cut
    precision = tp / (tp + fp)
    ap = torch.where(cut, (tp - prev) * precision, torch.zeros_like(tp)).sum(0) / pos
    f1 = torch.where(cut, 2 * tp / (tp + fp + pos), torch.full_like(tp, -1.0))
    # The threshold sits halfway between the chosen score and the next lower one (0 below the last): a
    # threshold equal to a val image's score would flip that image's label on the slightest numerical
    # difference (another batch size, ONNX Runtime, a GPU).
    below = torch.cat([s[1:], torch.zeros_like(s[:1])])
    at = f1.argmax(0, keepdim=True)
    best = ((s.gather(0, at) + below.gather(0, at)) / 2).squeeze(0)
    nan = torch.full_like(ap, float("nan"))
    return {"ap": torch.where(pos > 0, ap, nan), "best": torch.where(pos > 0, best.double(), nan)}


def multilabel_scores(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None
) -> dict[str, Any]:
    """Multi-label metrics of ``probs`` ``[N, K]`` against multi-hot ``targets`` at ``thresholds`` (``[K]``,
    default 0.5): ``mAP`` (macro AP over the classes with a positive), ``mAP_micro`` (AP of all pairs
    pooled), ``f1_micro``, ``f1_macro`` (mean over classes that have a positive or a prediction),
    ``exact_match`` (rows whose predicted set is the true one), and per class ``ap`` (NaN without a
    positive), ``f1``, ``support``, and ``best_thresholds`` (per class the threshold of max F1 on these
    scores; 0.5 for a class without a positive). Exact AP from one sort of all classes
    (:func:`ranked_curves`): torchmetrics' functional AP loops over classes, 20x slower at 1,000."""
    probs, targets = probs.float().cpu(), targets.cpu().long()
    n, k = probs.shape
    thr = torch.full((k,), 0.5) if thresholds is None else thresholds.float().cpu()
    support = targets.sum(0)
    has = support > 0
    pred = (probs >= thr).long()
    tp = (pred * targets).sum(0).double()
    fp = (pred * (1 - targets)).sum(0).double()
    fn = ((1 - pred) * targets).sum(0).double()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))
    nan = float("nan")
    best = torch.full((k,), 0.5)
    ap = torch.full((k,), nan, dtype=torch.float64)
    ap_micro = nan
    if n and bool(has.any()):
        curves = ranked_curves(probs, targets)
        ap = curves["ap"]
        best = torch.where(has, curves["best"].float(), best)
        ap_micro = float(ranked_curves(probs.reshape(-1, 1), targets.reshape(-1, 1))["ap"][0])
    tot = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "images": n,
        "mAP": float(ap[has].mean()) if bool(has.any()) else nan,
        "mAP_micro": ap_micro,
        "f1_micro": float(2 * tp.sum() / tot) if tot > 0 else nan,
        "f1_macro": float(f1[~f1.isnan()].mean()) if bool((~f1.isnan()).any()) else nan,
        "exact_match": float((pred == targets).all(1).double().mean()) if n else nan,
        "ap": ap.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "thresholds": thr.tolist(),
        "best_thresholds": best.tolist(),
    }


class MultiLabelMetrics(Evaluator):
    """``<prefix>/loss`` (BCE with logits), ``mAP``, ``mAP_micro``, ``f1_micro``, ``f1_macro`` (at
    :attr:`thresholds`, the ones in use: the model's), ``exact_match``; :attr:`analysis` (with
    ``analysis=True``): every :func:`multilabel_scores` entry, per class and the thresholds of max F1."""

    progress = ("loss", "mAP")

    def __init__(self, prefix: str, num_classes: int, analysis: bool = False) -> None:
        super().__init__(prefix)
        self.num_classes, self.keep_analysis = int(num_classes), bool(analysis)
        self.loss = MeanLoss()
        self.scores = ScoreStore()
        self.thresholds: torch.Tensor | None = None  # set by the module before compute (None: 0.5)

    NAMES = ("loss", "mAP", "mAP_micro", "f1_micro", "f1_macro", "exact_match")

    def names(self) -> list[str]:
        """Every ``<prefix>/<metric>`` name :meth:`compute` may give (what ``monitor`` may name)."""
        return [f"{self.prefix}/{n}" for n in self.NAMES]

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        logits = logits.float()
        self.loss.update(F.binary_cross_entropy_with_logits(logits, target.float()), target.shape[0])
        self.scores.update(logits.sigmoid(), target)

    def compute(self, analysis: bool = True) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        self.analysis = None
        if synced_count(self.loss):  # the same answer on every rank: all compute, or none
            probs, targets = self.scores.compute()  # every rank's scores (a collective under DDP)
            res = multilabel_scores(probs, targets, self.thresholds)
            out += [("loss", self.loss.compute())]
            out += [(m, res[m]) for m in self.NAMES[1:]]
            if self.keep_analysis and analysis:
                self.analysis = res
        self.reset()
        return [(f"{self.prefix}/{name}", value) for name, value in out]

    def reset(self) -> None:
        self.loss.reset()
        self.scores.reset()
