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


@dataclass
class Preprocessing:
    """Square input size, normalisation and resize filter."""

    img_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"
    # Evaluation: resize the shorter side to img_size / crop_pct, then centre-crop img_size (None: plain resize)
    crop_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if d["crop_pct"] is None:  # a plain resize: the dict checkpoints have always stored
            del d["crop_pct"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            img_size=int(d["img_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            crop_pct=None if d.get("crop_pct") is None else float(d["crop_pct"]),
        )

    def with_size(self, img_size: int) -> Preprocessing:
        return Preprocessing(int(img_size), self.mean, self.std, self.interpolation, self.crop_pct)


def preprocessing_from_timm(model: nn.Module, img_size: int) -> Preprocessing:
    """The normalisation and filter timm's pretrained config gives ``model``, at ``img_size``."""
    cfg = timm.data.resolve_model_data_config(model)
    return Preprocessing(
        img_size=img_size,
        mean=tuple(cfg.get("mean", (0.5, 0.5, 0.5))),
        std=tuple(cfg.get("std", (0.5, 0.5, 0.5))),
        interpolation=cfg.get("interpolation", "bilinear"),
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
