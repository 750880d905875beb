"""The evaluation streams of a classifier and the metric names a training run logs.

:func:`eval_streams` gives a classifier its evaluators (``val``, ``test`` and, with an EMA, ``val_ema``,
``test_ema``), single-label (:mod:`~vit_ft.models.metrics`) or multi-label
(:mod:`~vit_ft.models.multilabel_metrics`); :func:`known_metric_names` is every name such a run logs
while it trains: what ``monitor`` and ``optimized_metric`` may name; :func:`metric_mode` says which way
is better.
"""

from __future__ import annotations

from torch import nn

from vit_ft.models.metrics import SingleLabelMetrics, stream_metric_names
from vit_ft.models.multilabel_metrics import MultiLabelMetrics

TRAIN_METRICS = ("train/loss", "train/acc1", "train/lr")  # what ClassifierSteps._log_train logs


def metric_mode(name: str) -> str:
    """``min`` for a metric that is better lower (a loss, the calibration error), else ``max``: the
    best checkpoint's mode, early stopping's, and the Optuna study's direction."""
    leaf = str(name).rsplit("/", 1)[-1].lower()
    return "min" if "loss" in leaf or leaf in ("ece", "lr") else "max"


def known_metric_names(num_classes: int, ema: bool, task: str = "single") -> list[str]:
    """Every metric a training run of a ``num_classes`` classifier logs while it trains (the train
    steps' and the validation streams'): what ``monitor`` and ``optimized_metric`` may name."""
    if task == "multilabel":  # no train/acc1 (ClassifierSteps._log_train logs none for multi-hot targets)
        streams = ["val", "val_ema"] if ema else ["val"]
        return [f"{p}/{n}" for p in streams for n in MultiLabelMetrics.NAMES] + ["train/loss", "train/lr"]
    names = stream_metric_names("val", num_classes, analysis=True)
    if ema:
        names += stream_metric_names("val_ema", num_classes, analysis=False)
    return names + list(TRAIN_METRICS)


def eval_streams(num_classes: int, ema: bool, task: str = "single") -> nn.ModuleDict:
    """The evaluators of a classifier: ``val`` and ``test`` (with the analysis), ``val_ema`` and
    ``test_ema`` (loss and accuracies of the EMA weights) when it keeps an EMA; single-label or
    multi-label (``task``) alike."""
    prefixes = ["val", "test"] + (["val_ema", "test_ema"] if ema else [])
    cls = MultiLabelMetrics if task == "multilabel" else SingleLabelMetrics
    return nn.ModuleDict({p: cls(p, num_classes, analysis=not p.endswith("_ema")) for p in prefixes})
