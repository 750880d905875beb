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

from vit_ft.errors import ConfigError

# PIL's resampling filter codes (what transformers' ``preprocessor_config.json`` stores as ``resample``)
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PIL_FILTER_CODES = {name: code for code, name in PIL_FILTERS.items()}


CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
PREPROCESSING_KEYS = ("img_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


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
        """From :meth:`to_dict`'s form (a checkpoint's, an export's): only these keys, only these types;
        anything else is one :class:`~vit_ft.errors.ConfigError` line naming the key."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"preprocessing={d!r} is not a mapping of img_size, mean, std, ...; the file is damaged"
            )
        extra = sorted(set(d) - set(PREPROCESSING_KEYS))
        if extra:
            raise ConfigError(
                f"preprocessing has the key {extra[0]!r}, which vit-ft never writes (allowed: {', '.join(PREPROCESSING_KEYS)})"
            )
        crop = d.get("crop_pct")
        try:
            pre = cls(
                img_size=int(d["img_size"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                interpolation=str(d.get("interpolation", "bilinear")),
                crop_pct=None if crop is None else float(crop),
                crop_mode=str(d.get("crop_mode") or "center"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"preprocessing={d!r} is not valid ({type(e).__name__}: {e}); the file is damaged"
            ) from None
        if len(pre.mean) != 3 or len(pre.std) != 3 or not all(v > 0 for v in pre.std):
            raise ConfigError(
                f"preprocessing mean={list(pre.mean)} std={list(pre.std)} must be 3 numbers each, std > 0"
            )
        if pre.interpolation not in INTERPOLATIONS or pre.crop_mode not in CROP_MODES:
            raise ConfigError(
                f"preprocessing interpolation={pre.interpolation!r} / crop_mode={pre.crop_mode!r} must be one of "
                f"{', '.join(INTERPOLATIONS)} / {', '.join(CROP_MODES)}"
            )
        if pre.crop_pct is not None and not 0 < pre.crop_pct <= 1:
            raise ConfigError(f"preprocessing crop_pct={pre.crop_pct} must be in (0, 1] or null")
        return pre

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
