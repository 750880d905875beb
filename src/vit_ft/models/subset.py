"""Scoring an evaluation set whose classes are some of the model's, and ReaL-style labels.

A set's classes are matched to the model's by name (ImageNet-R/-A name 200 of ImageNet's 1000): its
logits are the model's at those classes (``logits[:, index]``), top-1/top-5 and the loss are taken over
them, and a set label ``j`` means the model's class ``index[j]``. A class the model does not know stops
the run with one line before anything is evaluated.

A labels file (``labels_file=``, JSON: file name -> list of acceptable classes, as indices of the model's
classes or class names; or a list in the order of the set's sorted bare file names, as ImageNet
ReaL's ``real.json`` for ``ILSVRC2012_val_*.JPEG`` in class folders) makes top-1 right when it is one of the image's acceptable classes: ``<set>/real_acc1``,
over the images whose list is not empty (the others are left out of it).

:class:`SubsetMetrics` is the :class:`~vit_ft.models.metrics.Evaluator` of one such set (metric names
``<set>/...``); :func:`evaluate_set` is one pass of a classifier over a set (every rank its share; the
predict loop does not repeat images under DDP, so the metrics count each image once) that also keeps
the top-k for ``<set>_predictions.csv``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from vit_ft.data.extra_eval import KEY, ExtraSet
from vit_ft.errors import ConfigError
from vit_ft.models.metrics import Evaluator, SingleLabelMetrics
from vit_ft.models.predictions import TOP_K, PredictionPass, Predictions

LISTED = 20  # model classes named in the unknown-class line


def class_index(set_classes: Sequence[str], model_classes: Sequence[str], where: str) -> torch.Tensor | None:
    """The model's index of each of the set's classes (matched by name), or None when they are the
    model's own, in its order. An unknown name is one ConfigError listing (some of) the model's classes."""
    set_classes, model_classes = [str(c) for c in set_classes], [str(c) for c in model_classes]
    if set_classes == model_classes:
        return None
    pos: dict[str, int] = {}
    for i, c in enumerate(model_classes):
        pos.setdefault(c, i)  # a repeated name (ImageNet's two cranes): its first index
    unknown = [c for c in set_classes if c not in pos]
    if unknown:
        known = ", ".join(model_classes[:LISTED]) + (
            f" ... ({len(model_classes)} in all)" if len(model_classes) > LISTED else ""
        )
        raise ConfigError(
            f"{where} has {len(unknown)} class(es) the model does not know: {unknown[:10]}; "
            f"name its class folders after the model's classes: {known}"
        )
    return torch.tensor([pos[c] for c in set_classes], dtype=torch.long)


def subset_logits(logits: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``logits[:, index]`` (the set's classes, in the set's order); ``logits`` when ``index`` is None."""
    return logits if index is None else logits.index_select(1, index.to(logits.device))


def _accepted(value: Any, model_classes: Sequence[str], where: str) -> frozenset[int]:
    pos = {str(c): i for i, c in reversed(list(enumerate(model_classes)))}
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {value!r} must be a list of class indices or names (may be empty)")
    out = set()
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ConfigError(f"{where}: {v!r} is not a class index or name")
        if isinstance(v, int):
            if not 0 <= v < len(model_classes):
                raise ConfigError(
                    f"{where}: class index {v} is outside the model's 0..{len(model_classes) - 1}"
                )
            out.add(v)
        elif v in pos:
            out.add(pos[v])
        else:
            raise ConfigError(
                f"{where}: class {v!r} is not one of the model's ({len(model_classes)} classes)"
            )
    return frozenset(out)


def read_labels_file(path: str, s: ExtraSet, model_classes: Sequence[str]) -> list[frozenset[int] | None]:
    """Per record of ``s``: its acceptable model classes, or None (not in the file). Keys are file names
    relative to the set's root, or bare file names."""
    where = f"{KEY}.{s.name}.labels_file"
    path = os.path.expanduser(str(path))
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError(f"{where}={path!r} cannot be read ({e.strerror or e}); check the path") from None
    except ValueError as e:
        raise ConfigError(f"{where}={path!r} is not JSON ({e}); write file name -> list of classes") from None
    keys = [s.file_key(i) for i in range(len(s))]
    if isinstance(raw, list):  # ImageNet ReaL's real.json: one list per image, by sorted bare file name
        if len(raw) != len(keys):
            raise ConfigError(
                f"{where}={path!r} is a list of {len(raw)} entries for {len(keys)} images; give one per "
                "image (in sorted bare file-name order) or a mapping file name -> list"
            )
        raw = dict(zip(sorted(keys, key=lambda k: (os.path.basename(k), k)), raw))
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}={path!r} must hold a JSON object: file name -> list of classes")
    by_base = {os.path.basename(str(k)): v for k, v in raw.items()}
    out: list[frozenset[int] | None] = []
    for k in keys:
        v = raw.get(k, by_base.get(os.path.basename(k)))
        out.append(None if v is None else _accepted(v, model_classes, f"{where} [{k}]"))
    if all(v is None for v in out):
        raise ConfigError(
            f"{where}={path!r} names none of the set's {len(keys)} images (e.g. {keys[0]!r}); key it by "
            "file name relative to the set's folder"
        )
    return out


class RealAccuracy(Metric):
    """Top-1 against a list of acceptable classes: right / images with a non-empty list (sums over ranks)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, accepted: Sequence[frozenset[int] | None]) -> None:
        """``pred``: ``[N]`` predicted model classes; ``accepted``: per image its classes (None/empty: left out)."""
        pred = pred.tolist()
        scored = [(p, a) for p, a in zip(pred, accepted) if a]
        self.correct += sum(p in a for p, a in scored)
        self.count += len(scored)

    def compute(self) -> torch.Tensor:
        return self.correct.double() / self.count if int(self.count) else torch.tensor(float("nan"))


class SubsetMetrics(Evaluator):
    """The evaluator of an extra set: :class:`SingleLabelMetrics` (with the analysis) over the set's
    classes' logits, named ``<prefix>/...``, and ``<prefix>/real_acc1`` with a labels file."""

    progress = ("loss", "acc1")

    def __init__(
        self, prefix: str, num_classes: int, index: torch.Tensor | None = None, real: bool = False
    ) -> None:
        super().__init__(prefix)
        self.base = SingleLabelMetrics(prefix, num_classes, analysis=True)
        self.register_buffer("index", index, persistent=False)
        self.real = RealAccuracy() if real else None

    def update(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        accepted: Sequence[frozenset[int] | None] | None = None,
    ) -> None:
        """``logits``: the model's ``[N, K_model]``; ``target``: the set's labels; ``accepted``: ReaL lists."""
        sub = subset_logits(logits, self.index)
        self.base.update(sub, target)
        if self.real is not None and accepted is not None:
            pred = sub.argmax(dim=1)
            self.real.update(pred if self.index is None else self.index[pred], accepted)

    def compute(self, analysis: bool = True) -> list[tuple[str, Any]]:
        out = self.base.compute(analysis)
        self.analysis = self.base.analysis
        if self.real is not None:
            out.append((f"{self.prefix}/real_acc1", self.real.compute()))  # a collective: every rank
            self.real.reset()
        return out


class _SubsetNet(nn.Module):
    """A classifier seen through the set's classes (for the prediction pass's top-k)."""

    def __init__(self, classifier: nn.Module, index: torch.Tensor | None, num_classes: int) -> None:
        super().__init__()
        self.classifier, self.index, self.num_classes = classifier, index, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return subset_logits(self.classifier(x), self.index)


class ExtraEvalPass(PredictionPass):
    """One pass over an extra set: the evaluator updated per batch, the top-k kept per image."""

    def __init__(self, classifier: nn.Module, metrics: SubsetMetrics, accepted: list | None, k: int = TOP_K):
        super().__init__(_SubsetNet(classifier, metrics.index, metrics.base.acc1.num_classes), k)
        self.metrics, self.accepted = metrics, accepted
        self.logged: list[tuple[str, Any]] = []

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:  # every image of this batch was skipped as unusable
            return None
        idx, x, y = batch
        logits = self.classifier.classifier(x).float()
        acc = [self.accepted[int(i)] for i in idx.tolist()] if self.accepted is not None else None
        self.metrics.update(logits, y, acc)
        probs = subset_logits(logits, self.metrics.index).softmax(-1)
        p, i = probs.topk(min(self.k, probs.shape[1]), dim=1)
        self.parts.append((idx.long(), y.long(), i, p))
        return None

    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        self.logged = self.metrics.compute(analysis=True)


@dataclass
class PreparedSet:
    """An extra set with what the model's classes make of it: the class index and the ReaL lists."""

    set: ExtraSet
    index: torch.Tensor | None
    accepted: list[frozenset[int] | None] | None

    @property
    def name(self) -> str:
        return self.set.name


def prepare_sets(sets: Sequence[ExtraSet], model_classes: Sequence[str]) -> list[PreparedSet]:
    """Every set matched to the model's classes and its labels file read: all checks before any pass."""
    out = []
    for s in sets:
        index = class_index(s.class_names, model_classes, f"{KEY}.{s.name}")
        accepted = read_labels_file(s.labels_file, s, model_classes) if s.labels_file else None
        out.append(PreparedSet(s, index, accepted))
    return out


@dataclass
class SetResult:
    """What one pass over a set gave: the logged ``(name, value)`` pairs, the evaluator's analysis
    (confusion over the set's classes: dense, or its non-zero cells above ``DENSE_CONFUSION_MAX``; ECE)
    and the predictions (every rank the whole of them)."""

    logged: list[tuple[str, Any]]
    analysis: dict[str, Any] | None
    predictions: Predictions


def evaluate_set(trainer: L.Trainer, classifier: nn.Module, loader: Any, ps: PreparedSet) -> SetResult:
    """``classifier`` over ``loader``'s ``(index, x, label)`` batches of ``ps``. Collective under DDP."""
    metrics = SubsetMetrics(ps.name, len(ps.set.class_names), ps.index, real=ps.accepted is not None)
    runner = ExtraEvalPass(classifier, metrics, ps.accepted)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*predict returned None.*")
        trainer.predict(runner, dataloaders=loader, return_predictions=False)
    assert runner.result is not None
    return SetResult(runner.logged, metrics.analysis, runner.result)
