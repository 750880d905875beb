"""Top-k class names for images: ``python predict.py weights=<weights> images=<file or folder>``.

``weights`` is anything vit-ft reads (a vit-ft ``.ckpt``, a transformers directory or hub id such as
``google/vit-base-patch32-384``, a timm tag or file, an ``.npz``), used with its own head, or an
``.onnx`` file written by ``export.py format=onnx`` (run by ONNX Runtime with the preprocessing and
class names stored in it; ``precision`` does not apply).
``images`` is an image file, a folder (searched recursively) or a list ``images=[a.jpg,b.png]``.
Options: ``topk=5``, ``out=preds.jsonl`` (JSON lines ``{"image", "topk": [{"index", "label",
"prob"}]}``; a multi-label model adds ``"labels"``: every label over its threshold, and
``threshold=0.5`` sets one threshold for all), ``batch_size=32``, ``device=auto|cpu|cuda[:i]``, ``precision=auto|32|bf16|16``
(auto: bf16 autocast on GPUs that support it), ``num_workers`` (decoding processes; null:
automatic), ``on_bad_image=error|skip``, ``quiet=true`` (no per-image printing), ``img_size`` /
``backbone`` / ``timm_kwargs`` (as in training). Predictions go to stdout, notes and the progress
bar to stderr; nothing else is written (no Hydra output folder).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from vit_ft.data.folder import find_images
from vit_ft.data.transforms import parse_eval_crop
from vit_ft.errors import ConfigError
from vit_ft.io import atomic_path
from vit_ft.models.predictor import check_options, load_predictor, predict_images
from vit_ft.settings_ranges import check_ranges
from vit_ft.tasks.cli import NoRunDirConfig
from vit_ft.tasks.run_lock import refuse_live_run
from vit_ft.weights.io import check_weights_source


@dataclass
class PredictConfig(NoRunDirConfig):
    weights: str | None = None
    images: Any = None
    topk: int = 5
    out: str | None = None
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"
    num_workers: int | None = None
    on_bad_image: str = "error"
    quiet: bool = False
    backbone: str | None = None
    img_size: int | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # for a plain timm state dict
    eval_crop: Any = "auto"  # auto: the weights' own eval crop | none: plain resize | a crop_pct, e.g. 0.875
    threshold: float | None = (
        None  # multi-label models: one threshold for every label (null: the weights' own)
    )


def predict(cfg: DictConfig) -> int:
    check_ranges(cfg)
    if cfg.out:
        refuse_live_run(os.path.dirname(os.path.abspath(str(cfg.out))), "out")
    images = cfg.images
    if OmegaConf.is_list(images):
        images = [str(i) for i in OmegaConf.to_container(images)]
    elif images is not None:
        images = str(images)
    return predict_files(
        cfg.weights,
        images,
        topk=cfg.topk,
        out=cfg.out,
        batch_size=cfg.batch_size,
        device=cfg.device,
        precision=cfg.precision,
        num_workers=cfg.num_workers,
        on_bad_image=cfg.on_bad_image,
        quiet=cfg.quiet,
        backbone=cfg.backbone,
        img_size=cfg.img_size,
        timm_kwargs=OmegaConf.to_container(cfg.timm_kwargs, resolve=True),
        eval_crop=cfg.eval_crop,
        threshold=cfg.threshold,
    )


def format_prediction(record: dict[str, Any]) -> str:
    """``path`` then one ``  probability  label`` line per class (a multi-label model: the labels over
    their thresholds, or ``(no label over its threshold)``)."""
    lines = [record["image"]]
    if "labels" in record:
        lines += [f"  {t['prob']:.4f}  {t['label']}" for t in record["labels"]] or [
            "  (no label over its threshold)"
        ]
        return "\n".join(lines)
    lines += [f"  {t['prob']:.4f}  {t['label']}" for t in record["topk"]]
    return "\n".join(lines)


def _echo_and_write(records: Iterable[dict[str, Any]], f: Any, echo: bool) -> int:
    n = 0
    for rec in records:
        if echo:
            tqdm.write(format_prediction(rec), file=sys.stdout)
        if f is not None:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_jsonl(records: Iterable[dict[str, Any]], out: str | None, echo: bool) -> int:
    """Print (``echo``) and write (``out``) the records as they come; the file appears complete or
    not at all (written aside, then renamed)."""
    if not out:
        return _echo_and_write(records, None, echo)
    target = Path(os.path.expanduser(str(out)))
    if target.is_dir():
        raise ConfigError(f"out={out!r} is a folder; pass a file name, e.g. out=preds.jsonl")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        return _echo_and_write(records, f, echo)


def predict_files(
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
    eval_crop: Any = "auto",
    threshold: float | None = None,
) -> int:
    """The ``predict.py`` job: print (unless ``quiet``) and write (``out=``, JSON lines) the top-k
    classes of every image; return how many images were predicted."""
    check_options(topk=topk, batch_size=batch_size, num_workers=num_workers, on_bad_image=on_bad_image)
    parse_eval_crop(eval_crop)
    if not str(weights or "").lower().endswith(".onnx"):
        check_weights_source(weights, "weights")
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
        threshold=threshold,
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
        eval_crop=eval_crop,
    )
    n = write_jsonl(records, out, echo=not quiet)
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
