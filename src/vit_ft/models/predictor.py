"""Batched top-k prediction with class names: a network with its labels and preprocessing, fed by the
data pipeline's eval transform.

``weights`` is anything :func:`vit_ft.weights.load_weights` reads (a vit-ft ``.ckpt``, a transformers
directory or hub id, a timm tag or file, an ``.npz``), with its own head. Labels are the head's class
names: the data set's for a vit-ft checkpoint, ``id2label`` for a transformers model, ImageNet names
(timm's ``ImageNetInfo``) for timm's ImageNet heads; a 1000-, 11821- or 21841/21843-class head that
states no names is taken as ImageNet (with a note), any other gets ``class_<i>``.

Images are decoded and resized by :func:`vit_ft.data.transforms.build_eval_transform` with the
weights' preprocessing, so a prediction sees exactly the pixels ``eval.py`` feeds the model.
Normalisation runs on the device, in batches; bf16 autocast on GPUs that support it.

An ``.onnx`` file written by ``export.py format=onnx`` runs through ONNX Runtime (CUDA provider when
present, else CPU) with the preprocessing and class names stored in it (:mod:`vit_ft.weights.onnx_read`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vit_ft.checkpoint_format import MULTILABEL_ATTR
from vit_ft.data.bad_images import check_on_bad_image
from vit_ft.data.decode import BadImageError
from vit_ft.data.transforms import build_eval_transform, parse_eval_crop
from vit_ft.errors import ConfigError
from vit_ft.labels import head_labels
from vit_ft.models.features import FeatureHeadNet, head_features
from vit_ft.preprocessing import Normalize
from vit_ft.training.precision import autocast_dtype
from vit_ft.weights import load_weights
from vit_ft.weights.onnx_read import open_onnx, require


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; or any torch device string."""
    name = "auto" if device in (None, "") else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name!r} but CUDA is not available here; use device=auto or device=cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r}: there are {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r} but MPS is not available here; use device=auto or device=cpu")
    return dev


# -- the model --------------------------------------------------------------------------------------
class Predictor:
    """A network with its labels and preprocessing: uint8 ``[B, 3, H, W]`` in, probabilities out."""

    def __init__(
        self,
        model: torch.nn.Module,
        labels: Sequence[str],
        preprocessing: Any,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.labels = list(labels)
        # a multi-label head: sigmoid probabilities, each label over its own threshold (None: softmax)
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.preprocessing = preprocessing
        self.model = model.eval().to(self.device)
        self.normalizer = Normalize(preprocessing).to(self.device)
        self.autocast_dtype = autocast_dtype(precision, self.device.type)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        x = self.normalizer(x)
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with ctx:
            logits = self.model(x)
        return logits.float().sigmoid() if self.thresholds is not None else logits.float().softmax(-1)


def load_predictor(
    weights: str,
    *,
    backbone: str | None = None,
    img_size: int | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    notes: list[str] | None = None,
    threshold: float | None = None,
) -> Predictor:
    """A :class:`Predictor` for any weight source, its head kept (``notes`` collects what was
    assumed or changed on the way). A multi-label head (a multi-label vit-ft checkpoint, or exported
    with its thresholds) predicts every label over its threshold: the weights' own, or ``threshold``
    for all."""
    if weights is None or str(weights).strip() in ("", "???"):
        raise ConfigError(
            "weights is not set; pass a vit-ft .ckpt, a transformers directory or hub id, a timm tag or file, "
            "e.g. weights=google/vit-base-patch32-384"
        )
    if str(weights).lower().endswith(".onnx"):
        return load_onnx_predictor(
            str(weights), img_size=img_size, device=device, notes=notes, threshold=threshold
        )
    bb = load_weights(str(weights), backbone=backbone, img_size=img_size, timm_kwargs=timm_kwargs)
    if bb.num_classes < 1:
        raise ConfigError(
            f"weights={weights!r} have no classification head, so there is nothing to predict; pass a "
            "fine-tuned vit-ft .ckpt or weights with a classifier (e.g. an ImageNet-1k fine-tuned ViT)"
        )
    labels, note = head_labels(bb.num_classes, bb.class_names)
    if notes is not None:
        notes += bb.notes
        if note:
            notes.append(note)
    features = head_features(bb.arch)  # a linear probe's head on token features (e.g. last4)
    thresholds = chosen_thresholds(getattr(bb.model, MULTILABEL_ATTR, None), threshold, weights)
    model = FeatureHeadNet(bb.model, features) if features else bb.model
    return Predictor(
        model, labels, bb.preprocessing, device=device, precision=precision, thresholds=thresholds
    )


def chosen_thresholds(
    stored: list[float] | None, threshold: float | None, weights: str
) -> list[float] | None:
    """A multi-label head's thresholds: the stored per-class ones, or ``threshold=`` for all of them;
    one line when ``threshold=`` is given for single-label weights."""
    if threshold is None:
        return stored
    if stored is None:
        raise ConfigError(
            f"threshold={threshold} applies to multi-label models, and weights={weights!r} is single-label "
            "(softmax); leave threshold out (topk= picks how many classes are shown)"
        )
    return [float(threshold)] * len(stored)


def load_onnx_predictor(
    weights: str,
    *,
    img_size: int | None = None,
    device: str = "auto",
    notes: list[str] | None = None,
    threshold: float | None = None,
) -> Predictor:
    """A :class:`Predictor` on ONNX Runtime for a vit-ft ``.onnx`` file: images are decoded and
    normalised on the CPU as the file's metadata says, then fed to its session."""
    require("onnxruntime")
    net, pre, labels = open_onnx(weights, device="auto" if device in (None, "") else str(device))
    if img_size is not None and int(img_size) != pre.img_size:
        raise ConfigError(
            f"img_size={img_size} but {weights} was exported at {pre.img_size} px; drop img_size "
            f"or export again with img_size={img_size}"
        )
    if notes is not None:
        notes.append(f"ONNX Runtime ({net.provider}) with the file's preprocessing")
    thresholds = chosen_thresholds(getattr(net, MULTILABEL_ATTR, None), threshold, weights)
    return Predictor(net, labels, pre, device="cpu", precision="32", thresholds=thresholds)


# -- batched prediction -----------------------------------------------------------------------------
class _Images(Dataset):
    """Path -> (index, uint8 tensor) or (index, reason) for an unusable file (never raises)."""

    def __init__(self, paths: Sequence[str], transform: Any) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        try:
            return i, self.transform(os.path.expanduser(self.paths[i]))
        except BadImageError as e:
            return i, e.reason


def _collate(items: list[tuple[int, torch.Tensor | str]]):
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    bad = [(i, x) for i, x in items if not isinstance(x, torch.Tensor)]
    batch = torch.stack([x.contiguous() for _, x in good]) if good else None
    return [i for i, _ in good], batch, bad


def check_options(
    *, topk: Any = 5, batch_size: Any = 32, num_workers: Any = None, on_bad_image: Any = "error"
) -> None:
    """Raise :class:`ConfigError` for an invalid option (before any weights are read)."""
    for key, value in (("topk", topk), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{key}={value!r} must be a positive integer, e.g. {key}={5 if key == 'topk' else 32}"
            )
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0
    ):
        raise ConfigError(f"num_workers={num_workers!r} must be 0 or more (or null: automatic)")
    check_on_bad_image(on_bad_image, "on_bad_image")


def predict_images(
    predictor: Predictor,
    paths: Sequence[str],
    *,
    topk: int = 5,
    batch_size: int = 32,
    num_workers: int | None = None,
    on_bad_image: str = "error",
    progress: bool | None = None,
    skipped: list[tuple[str, str]] | None = None,
    eval_crop: Any = "auto",
) -> Iterator[dict[str, Any]]:
    """One record ``{"image", "topk": [{"index", "label", "prob"}]}`` per usable image, in order.

    ``num_workers=None``: decode in up to 4 worker processes when there is more than one batch.
    ``progress=None``: a tqdm bar on stderr when there is more than one batch and stderr is a
    terminal. Skipped images (``on_bad_image=skip``) are appended to ``skipped`` as (path, reason).
    ``eval_crop``: as ``data.eval_crop`` (``auto``: the weights' crop, as ``eval.py`` uses it).
    """
    check_options(topk=topk, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image)
    k = min(topk, len(predictor.labels))
    pre = predictor.preprocessing
    crop = parse_eval_crop(eval_crop)
    crop_pct = getattr(pre, "crop_pct", None) if crop == "auto" else (None if crop == "none" else crop)
    transform = build_eval_transform(
        int(pre.img_size),
        interpolation=str(pre.interpolation),
        crop_pct=crop_pct,
        crop_mode=getattr(pre, "crop_mode", "center"),
    )
    many = len(paths) > batch_size
    if num_workers is None:
        num_workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if many else 0
    loader = DataLoader(
        _Images(paths, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=int(num_workers),
        collate_fn=_collate,
        pin_memory=predictor.device.type == "cuda",
    )
    if progress is None:
        progress = many and sys.stderr.isatty()
    bar = tqdm(total=len(paths), unit="img", desc="predict", file=sys.stderr, disable=not progress)
    try:
        for idx, batch, bad in loader:
            for i, reason in bad:
                if on_bad_image == "error":
                    raise ConfigError(
                        f"unusable image {paths[i]}: {reason}; fix or remove it, or pass on_bad_image=skip"
                    )
                tqdm.write(f"warning: skipping unusable image {paths[i]}: {reason}", file=sys.stderr)
                if skipped is not None:
                    skipped.append((paths[i], reason))
            if batch is not None:
                probs = predictor(batch)
                top_p, top_i = probs.topk(k, dim=-1)
                for row, i in enumerate(idx):
                    rec: dict[str, Any] = {"image": paths[i]}
                    if predictor.thresholds is not None:  # multi-label: every label over its threshold
                        rec["labels"] = _over_thresholds(probs[row], predictor)
                    rec["topk"] = [
                        {"index": int(c), "label": predictor.labels[int(c)], "prob": float(p)}
                        for p, c in zip(top_p[row].tolist(), top_i[row].tolist())
                    ]
                    yield rec
            bar.update(len(idx) + len(bad))
    finally:
        bar.close()


def _over_thresholds(probs: torch.Tensor, predictor: Predictor) -> list[dict[str, Any]]:
    """``[{"index", "label", "prob"}]`` of the labels at or over their thresholds, most probable first."""
    thr = torch.tensor(predictor.thresholds, device=probs.device)
    on = torch.nonzero(probs >= thr).flatten().tolist()
    on.sort(key=lambda c: -float(probs[c]))
    return [{"index": c, "label": predictor.labels[c], "prob": float(probs[c])} for c in on]
