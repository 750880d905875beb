"""What a network expects at its input, and the one place uint8 images become its float input.

:class:`Preprocessing` travels with every network (weights state it, checkpoints store it, exports
write it); :class:`Normalize` applies it on the device, in batch: training, feature extraction for
probes and prediction all call the same module, so they all see the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
from torch import nn

# PIL's resampling filter codes (what transformers' ``preprocessor_config.json`` stores as ``resample``)
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PIL_FILTER_CODES = {name: code for code, name in PIL_FILTERS.items()}


CROP_MODES = ("center", "squash")


@dataclass
class Preprocessing:
    """Square input size, normalisation, resize filter, and the evaluation crop.

    ``crop_pct``: the evaluation transform resizes to ``img_size / crop_pct`` and cuts the central
    ``img_size`` square, as timm's eval transform does (``crop_mode`` ``center``: the shorter side to
    that size, aspect kept; ``squash``: both sides). ``None``: a plain resize to the square, no crop
    (the ViT paper's evaluation, and what transformers' ViT processors do).
    """

    img_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    crop_pct: float | None = None
    crop_mode: str = "center"

    def to_dict(self) -> dict[str, Any]:
        """Plain types; without crop keys when there is no crop (as before crops existed)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_pct is None:
            del d["crop_pct"], d["crop_mode"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        crop = d.get("crop_pct")
        return cls(
            img_size=int(d["img_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            crop_pct=None if crop is None else float(crop),
            crop_mode=str(d.get("crop_mode") or "center"),
        )

    def with_size(self, img_size: int) -> Preprocessing:
        return Preprocessing(
            int(img_size), self.mean, self.std, self.interpolation, self.crop_pct, self.crop_mode
        )


def preprocessing_from_timm(model: nn.Module, img_size: int) -> Preprocessing:
    """The normalisation, filter and evaluation crop timm's pretrained config gives ``model``, at
    ``img_size`` (what ``timm.data.resolve_data_config({}, model=model)`` resolves; timm's default
    ``crop_pct`` 0.875 where the config has none)."""
    cfg = timm.data.resolve_model_data_config(model)
    crop = cfg.get("crop_pct")
    mode = cfg.get("crop_mode") or "center"
    return Preprocessing(
        img_size=img_size,
        mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(cfg.get("std", (0.5, 0.5, 0.5))),
        interpolation=cfg.get("interpolation", "bilinear"),
        crop_pct=None if crop is None else float(crop),
        crop_mode=mode if mode in CROP_MODES else "center",
    )


class Normalize(nn.Module):
    """uint8 ``[B, 3, H, W]`` in 0..255 -> ``(x/255 - mean)/std`` as one fused multiply-add.

    Float input passes through unchanged (it is taken as already normalised). The constants are
    non-persistent buffers: they follow the module to its device and never enter a state dict.
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        super().__init__()
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            return torch.addcmul(self.shift, x.float(), self.scale)
        return x
