"""Top-k class names for images: ``python predict.py weights=<weights> images=<file or folder>``.

``weights`` is anything vit-ft reads (a vit-ft ``.ckpt``, a transformers directory or hub id such as
``google/vit-base-patch32-384``, a timm tag or file, an ``.npz``), used with its own head.
``images`` is an image file, a folder (searched recursively) or a list ``images=[a.jpg,b.png]``.
Options: ``topk=5``, ``out=preds.jsonl`` (JSON lines ``{"image", "topk": [{"index", "label",
"prob"}]}``), ``batch_size=32``, ``device=auto|cpu|cuda[:i]``, ``precision=auto|32|bf16|16``
(auto: bf16 autocast on GPUs that support it), ``num_workers`` (decoding processes; null:
automatic), ``on_bad_image=error|skip``, ``quiet=true`` (no per-image printing), ``img_size`` /
``backbone`` / ``timm_kwargs`` (as in training). Predictions go to stdout, notes and the progress
bar to stderr; nothing else is written (no Hydra output folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_ft.predict import predict as run_predict


@dataclass
class PredictConfig:
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
    # no outputs/<date>/ folder, no log file: predict only prints and writes out=
    defaults: list[Any] = field(
        default_factory=lambda: [
            "_self_",
            {"override hydra/job_logging": "none"},
            {"override hydra/hydra_logging": "none"},
        ]
    )
    hydra: Any = field(default_factory=lambda: {"run": {"dir": "."}, "output_subdir": None})


def predict(cfg: DictConfig) -> int:
    images = cfg.images
    if OmegaConf.is_list(images):
        images = [str(i) for i in OmegaConf.to_container(images)]
    elif images is not None:
        images = str(images)
    return run_predict(
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
    )
