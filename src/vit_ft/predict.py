"""Top-k predictions with class names for image files: what ``python predict.py`` runs (no Hydra here).

``weights`` is anything :func:`vit_ft.weights.load_weights` reads (a vit-ft ``.ckpt``, a
transformers directory or hub id, a timm tag or file, an ``.npz``), with its own head. Labels are
the head's class names: the data set's for a vit-ft checkpoint, ``id2label`` for a transformers
model, ImageNet names (timm's ``ImageNetInfo``) for timm's ImageNet heads; a 1000-, 11821- or
21841/21843-class head that states no names is taken as ImageNet (with a note), any other gets
``class_<i>``.

Images are decoded and resized by the data pipeline's eval transform
(:func:`vit_ft.data.transforms.build_eval_transform` with the weights' preprocessing), so a
prediction sees exactly the pixels ``eval.py`` feeds the model. Normalisation runs on the device,
in batches; bf16 autocast on GPUs that support it. An unusable image ends the run with one line
naming it (``on_bad_image=error``, the default, as for training data) or is skipped with a warning
on stderr and left out of the output (``on_bad_image=skip``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vit_ft.errors import ConfigError
from vit_ft.labels import head_labels
from vit_ft.preprocessing import Normalize

__all__ = [
    "Predictor",
    "find_images",
    "load_predictor",
    "predict",
    "predict_images",
    "check_options",
    "format_prediction",
    "resolve_device",
]


# -- inputs -----------------------------------------------------------------------------------------
def find_images(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Image paths of ``images``: a file (used whatever its extension), a folder (image files found
    recursively, sorted; other files ignored) or a list of either."""
    from vit_ft.data.decode import is_image_file

    if images is None or (isinstance(images, str) and images.strip() in ("", "???")):
        raise ConfigError("images is not set; pass images=<image file or folder>, e.g. images=photos/")
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    if not items:
        raise ConfigError("images=[] names no image; pass an image file or a folder")
    out: list[str] = []
    for item in items:
        path = os.fspath(item)
        expanded = os.path.expanduser(path)
        if os.path.isfile(expanded):
            out.append(path)
        elif os.path.isdir(expanded):
            found = []
            for dirpath, dirnames, filenames in os.walk(expanded, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [
                    os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)
                ]
            if not found:
                raise ConfigError(
                    f"images={path!r} is a folder with no image files (.jpg, .png, .webp, ...); "
                    "pass a folder of images or an image file"
                )
            if expanded != path:  # keep the user's spelling in the output
                found = [path + f[len(expanded) :] for f in found]
            out += sorted(found)
        else:
            raise ConfigError(
                f"images={path!r} does not exist (cwd {os.getcwd()}); pass an image file or folder"
            )
    return out


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
    ) -> None:
        self.device = resolve_device(device)
        self.labels = list(labels)
        self.preprocessing = preprocessing
        self.model = model.eval().to(self.device)
        self.normalizer = Normalize(preprocessing).to(self.device)
        self.autocast_dtype = self._autocast(str(precision))

    def _autocast(self, precision: str) -> torch.dtype | None:
        if precision in ("32", "32-true", "fp32"):
            return None
        cuda = self.device.type == "cuda"
        if precision == "auto":
            return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
        if precision in ("bf16", "bf16-mixed"):
            return torch.bfloat16
        if precision in ("16", "16-mixed", "fp16"):
            if not cuda:
                raise ConfigError("precision=16 needs a CUDA device; use precision=32 or bf16 on the CPU")
            return torch.float16
        raise ConfigError(f"precision={precision!r} must be auto, 32, bf16 or 16")

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
        return logits.float().softmax(-1)


def load_predictor(
    weights: str,
    *,
    backbone: str | None = None,
    img_size: int | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
    notes: list[str] | None = None,
) -> Predictor:
    """A :class:`Predictor` for any weight source, its head kept (``notes`` collects what was
    assumed or changed on the way)."""
    from vit_ft.weights import load_weights

    if weights is None or str(weights).strip() in ("", "???"):
        raise ConfigError(
            "weights is not set; pass a vit-ft .ckpt, a transformers directory or hub id, a timm tag or file, "
            "e.g. weights=google/vit-base-patch32-384"
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
    return Predictor(bb.model, labels, bb.preprocessing, device=device, precision=precision)


# -- batched prediction -----------------------------------------------------------------------------
class _Images(Dataset):
    """Path -> (index, uint8 tensor) or (index, reason) for an unusable file (never raises)."""

    def __init__(self, paths: Sequence[str], transform: Any) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        from vit_ft.data.decode import BadImageError

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
    if on_bad_image not in ("error", "skip"):
        raise ConfigError(f"on_bad_image={on_bad_image!r} must be 'error' or 'skip'")


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
) -> Iterator[dict[str, Any]]:
    """One record ``{"image", "topk": [{"index", "label", "prob"}]}`` per usable image, in order.

    ``num_workers=None``: decode in up to 4 worker processes when there is more than one batch.
    ``progress=None``: a tqdm bar on stderr when there is more than one batch and stderr is a
    terminal. Skipped images (``on_bad_image=skip``) are appended to ``skipped`` as (path, reason).
    """
    from tqdm import tqdm

    from vit_ft.data.transforms import build_eval_transform

    check_options(topk=topk, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image)
    k = min(topk, len(predictor.labels))
    pre = predictor.preprocessing
    transform = build_eval_transform(int(pre.img_size), interpolation=str(pre.interpolation))
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
                    yield {
                        "image": paths[i],
                        "topk": [
                            {"index": int(c), "label": predictor.labels[int(c)], "prob": float(p)}
                            for p, c in zip(top_p[row].tolist(), top_i[row].tolist())
                        ],
                    }
            bar.update(len(idx) + len(bad))
    finally:
        bar.close()


def format_prediction(record: dict[str, Any]) -> str:
    """``path`` then one ``  probability  label`` line per class."""
    lines = [record["image"]]
    lines += [f"  {t['prob']:.4f}  {t['label']}" for t in record["topk"]]
    return "\n".join(lines)


def _write_jsonl(records: Iterable[dict[str, Any]], out: str | None, echo: bool) -> int:
    """Print (``echo``) and write (``out``) the records as they come; the file appears complete or
    not at all (written aside, then renamed)."""
    from tqdm import tqdm

    n = 0
    f = tmp = None
    if out:
        target = Path(os.path.expanduser(str(out)))
        if target.is_dir():
            raise ConfigError(f"out={out!r} is a folder; pass a file name, e.g. out=preds.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        f = open(tmp, "w")  # noqa: SIM115 - closed below
    try:
        for rec in records:
            if echo:
                tqdm.write(format_prediction(rec), file=sys.stdout)
            if f is not None:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    except BaseException:
        if f is not None:
            f.close()
            tmp.unlink(missing_ok=True)
        raise
    if f is not None:
        f.close()
        os.replace(tmp, target)
    return n


def predict(
    weights: str,
    images: str | Sequence[str],
    *,
    topk: int = 5,
    out: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "auto",
    num_workers: int | None = None,
    on_bad_image: str = "error",
    backbone: str | None = None,
    img_size: int | None = None,
    timm_kwargs: dict[str, Any] | None = None,
    quiet: bool = False,
    progress: bool | None = None,
) -> int:
    """The ``predict.py`` job: print (unless ``quiet``) and write (``out=``, JSON lines) the top-k
    classes of every image; return how many images were predicted."""
    check_options(topk=topk, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image)
    paths = find_images(images)
    notes: list[str] = []
    predictor = load_predictor(
        weights,
        backbone=backbone,
        img_size=img_size,
        timm_kwargs=timm_kwargs,
        device=device,
        precision=precision,
        notes=notes,
    )
    for note in notes:
        print(f"weights: {note}", file=sys.stderr)
    skipped: list[tuple[str, str]] = []
    records = predict_images(
        predictor,
        paths,
        topk=topk,
        batch_size=batch_size,
        num_workers=num_workers,
        on_bad_image=on_bad_image,
        progress=progress,
        skipped=skipped,
    )
    n = _write_jsonl(records, out, echo=not quiet)
    if n == 0:
        raise ConfigError(
            f"none of the {len(paths)} image(s) could be read (e.g. {skipped[0][0]}: {skipped[0][1]})"
            if skipped
            else "no image was predicted"
        )
    summary = f"predicted {n} image(s) on {predictor.device}"
    if skipped:
        summary += f", skipped {len(skipped)} unusable"
    if out:
        summary += f"; written to {out}"
    print(summary, file=sys.stderr, flush=True)
    return n
