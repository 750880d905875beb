"""Train and eval transforms: image file (path, bytes, HF image dict or PIL image) in, uint8 CHW out.

Normalisation happens later, on the device and in batch (see ``ViTClassifier.normalize``), so the
DataLoader moves 4× fewer bytes. The defaults are the paper's: Inception crop + horizontal flip for
training, a plain resize to ``img_size``×``img_size`` (no crop) for evaluation, no colour jitter; weights
whose preprocessing has a ``crop_pct`` (timm's) are evaluated with timm's resize + centre crop.

Both transforms decode and resize in one step (:func:`vit_ft.data.decode.decode`): the crop box is
drawn from the image header before decoding, so JPEGs decode at reduced DCT scale when the box is
large, and resizing runs on uint8 tensors (SIMD kernels in torch) instead of PIL. RandAugment and the
other timm policies (``auto_augment``) are timm's own, applied to the resized crop as in timm.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_interp_mode

from vit_ft.data.decode import EncodedJpeg, decode, orient, plan_jpeg
from vit_ft.errors import ConfigError

_RANDOM_INTERPOLATIONS = ("bilinear", "bicubic")


def _interp(name: str):
    return str_to_interp_mode(name)


def _resize(t: torch.Tensor, size: tuple[int, int], interpolation) -> torch.Tensor:
    """Resize a uint8 ``[3, h, w]`` tensor to ``size=(h, w)``; always returns a new tensor.

    The result may have channels-last strides (what torch's SIMD uint8 kernels produce); collation
    copies it into the batch anyway, so making it contiguous here would only cost time.
    """
    if tuple(t.shape[-2:]) == tuple(size):
        return t.clone()
    return TF.resize(channels_last(t), list(size), interpolation=interpolation, antialias=True)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` ([3, h, w] uint8) with HWC memory and no gaps between rows, copying only if needed.

    torch's SIMD uint8 resize needs exactly that layout; a crop view of a wider decode (or a
    transposed EXIF-rotated one) takes a generic path about 2x slower than the copy plus the fast one.
    """
    c, h, w = t.shape
    if t.stride() == (1, w * c, c) or h == 1 or w == 1:
        return t
    return t.unsqueeze(0).contiguous(memory_format=torch.channels_last)[0]


def parse_eval_crop(value: Any) -> str | float:
    """``data.eval_crop``: ``auto`` (the weights' crop), ``none`` (plain square resize) or a fraction in (0, 1]."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return "none"
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0.0 < float(number) <= 1.0:
        raise ConfigError(
            f"data.eval_crop={value!r} must be auto (the weights' own crop), none (resize to the square, no "
            "crop) or a crop fraction in (0, 1] such as 0.875"
        )
    return float(number)


def eval_geometry(
    width: int, height: int, img_size: int, crop_pct: float | None, crop_mode: str = "center"
) -> tuple[int, int, int, int]:
    """``(resized_h, resized_w, top, left)``: the size an image of ``width``×``height`` is resized to,
    and where the ``img_size`` square is cut from it — timm's eval transform
    (``transforms_imagenet_eval``) to the pixel: ``Resize(floor(img_size / crop_pct))`` (the shorter
    side, aspect kept; ``squash``: both sides), then torchvision's ``CenterCrop(img_size)``.
    ``crop_pct=None``: a plain resize to ``img_size``×``img_size``.
    """
    if crop_pct is None:
        return img_size, img_size, 0, 0
    s = math.floor(img_size / crop_pct)
    if crop_mode == "squash":
        rh = rw = s
    elif width <= height:  # torchvision's Resize(int): the shorter side to s, the longer truncated
        rw, rh = s, int(s * height / width)
    else:
        rh, rw = s, int(s * width / height)
    return rh, rw, int(round((rh - img_size) / 2.0)), int(round((rw - img_size) / 2.0))


class DecodeResize:
    """Eval: decode, resize and centre-crop to ``img_size``×``img_size`` (see :func:`eval_geometry`).

    ``crop_pct=None`` (the ViT paper, transformers' ViT processors): a plain resize to the square.
    With a ``crop_pct`` the whole image is resized to ``img_size / crop_pct`` and the centre cut out,
    exactly as timm does (resizing only the box would filter its edges differently); JPEGs may still
    decode at reduced DCT scale as long as the decode stays >= the resized size.
    """

    def __init__(
        self,
        img_size: int,
        interpolation: str = "bilinear",
        crop_pct: float | None = None,
        crop_mode: str = "center",
    ) -> None:
        self.size = (int(img_size), int(img_size))
        self.interpolation = interpolation
        self.crop_pct = None if crop_pct is None else float(crop_pct)
        self.crop_mode = crop_mode
        self._mode = _interp("bilinear" if interpolation == "random" else interpolation)

    def geometry(self, width: int, height: int) -> tuple[int, int, int, int]:
        return eval_geometry(width, height, self.size[0], self.crop_pct, self.crop_mode)

    def __call__(self, src: Any) -> torch.Tensor:
        if self.crop_pct is None:
            t = decode(src, out_size=(self.size[1], self.size[0]))
            return _resize(t, self.size, self._mode)
        seen: list[tuple[int, int]] = []

        def whole(w: int, h: int) -> tuple[int, int, int, int]:  # records the oriented size, keeps it all
            seen.append((w, h))
            return (0, 0, w, h)

        s = math.floor(self.size[0] / self.crop_pct)
        t = decode(src, out_size=(s, s), plan=whole)  # shorter side (squash: both) stays >= s
        rh, rw, top, left = self.geometry(*seen[0])
        t = _resize(t, (rh, rw), self._mode)
        return t[:, top : top + self.size[0], left : left + self.size[1]]

    def __repr__(self) -> str:
        crop = "" if self.crop_pct is None else f", crop_pct={self.crop_pct}, crop_mode={self.crop_mode}"
        return f"DecodeResize(size={self.size}, interpolation={self.interpolation}{crop})"


class DecodeRandomResizedCrop:
    """Train: Inception crop (``scale``, ``ratio``) + horizontal flip, then timm's ``auto_augment``."""

    def __init__(
        self,
        img_size: int,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        interpolation: str = "bilinear",
        auto_augment: str | None = None,
    ) -> None:
        self.size = (int(img_size), int(img_size))
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)
        self.interpolation = interpolation
        self._modes = [
            _interp(m) for m in (_RANDOM_INTERPOLATIONS if interpolation == "random" else [interpolation])
        ]
        self.auto_augment = auto_augment
        self._augment: Callable | None = None
        if auto_augment:
            # timm's own policy objects (RandAugment, AutoAugment, AugMix), exactly as create_transform builds them.
            _, secondary, _ = create_transform(
                (3, *self.size),
                is_training=True,
                auto_augment=auto_augment,
                interpolation="bilinear" if interpolation == "random" else interpolation,
                color_jitter=0.0,
                use_prefetcher=True,
                separate=True,
            )
            self._augment = secondary

    def plan(self, w: int, h: int) -> tuple[int, int, int, int]:
        i, j, ch, cw = RandomResizedCropAndInterpolation.get_params(
            torch.empty(0, h, w), self.scale, self.ratio
        )
        cw, ch = max(1, cw), max(1, ch)  # tiny images (1x1) can round to an empty crop
        return min(j, w - cw), min(i, h - ch), min(j, w - cw) + cw, min(i, h - ch) + ch

    def __call__(self, src: Any) -> torch.Tensor:
        t = decode(src, out_size=(self.size[1], self.size[0]), plan=self.plan)
        mode = self._modes[0] if len(self._modes) == 1 else random.choice(self._modes)
        flip = self.hflip > 0 and random.random() < self.hflip
        # Flipping commutes with the resize (same pixels either way): flip the smaller of the two.
        if flip and t.shape[-1] * t.shape[-2] <= self.size[0] * self.size[1]:
            t, flip = t.flip(-1), False
        t = _resize(t, self.size, mode)
        if flip:
            t = t.flip(-1)
        if self._augment is not None:
            img = Image.fromarray(t.permute(1, 2, 0).numpy())
            img = self._augment(img)
            t = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return t

    def __repr__(self) -> str:
        return (
            f"DecodeRandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip={self.hflip}, interpolation={self.interpolation}, auto_augment={self.auto_augment})"
        )


class PlannedJpeg(NamedTuple):
    """What a worker returns for a JPEG under ``decode_device=cuda``: bytes + crop + flip, no pixels."""

    jpeg: EncodedJpeg
    flip: bool
    interpolation: str  # "bilinear" | "bicubic"
    index: int = -1  # the record's index in its split (set by the dataset; -1 when streamed)
    crop: tuple[int, int, int, int] | None = None  # eval crop: (resized h, w, top, left), see eval_geometry


class PlanOnly:
    """Worker side of ``decode_device=cuda``: plan the crop from the header, leave decoding to the device.

    Wraps a :class:`DecodeResize` or :class:`DecodeRandomResizedCrop` (without ``auto_augment``): a
    plain RGB/grayscale JPEG becomes a :class:`PlannedJpeg` with the same random crop, interpolation
    and flip the wrapped transform would draw; every other file (PNG, WebP, CMYK JPEG, ...) is decoded
    here by the wrapped transform, as with ``decode_device=cpu``. See :func:`finish_on_device`.
    """

    def __init__(self, transform: DecodeResize | DecodeRandomResizedCrop) -> None:
        if not supports_device_decode(transform):
            raise ValueError(f"{transform!r} cannot decode on the device")
        self.transform, self.size = transform, transform.size
        self.train = isinstance(transform, DecodeRandomResizedCrop)

    def __call__(self, src: Any) -> torch.Tensor | PlannedJpeg:
        tf = self.transform
        jpeg = plan_jpeg(src, tf.plan if self.train else None)
        if jpeg is None:
            return tf(src)
        if not self.train:
            mode = "bilinear" if tf.interpolation == "random" else tf.interpolation
            crop = tf.geometry(*jpeg.size) if tf.crop_pct is not None else None
            return PlannedJpeg(jpeg, False, mode, crop=crop)
        modes = _RANDOM_INTERPOLATIONS if tf.interpolation == "random" else (tf.interpolation,)
        mode = modes[0] if len(modes) == 1 else random.choice(modes)
        flip = tf.hflip > 0 and random.random() < tf.hflip
        return PlannedJpeg(jpeg, flip, mode)

    def __repr__(self) -> str:
        return f"PlanOnly({self.transform!r})"


def supports_device_decode(transform: Any) -> bool:
    """Whether ``transform``'s work can move to the device (timm's PIL augmentations cannot)."""
    if isinstance(transform, DecodeRandomResizedCrop):
        return not transform.auto_augment
    return isinstance(transform, DecodeResize)


def resize_uint8(
    t: torch.Tensor, size: tuple[int, int], interpolation: str, *, via_float: bool
) -> torch.Tensor:
    """Antialiased resize of a uint8 ``[3, h, w]`` tensor to ``size=(h, w)``.

    ``via_float``: compute in float32, then round and clamp back to uint8; what torchvision does on
    CUDA (its native uint8 kernels are CPU-only), spelled out here so it can be tested on the CPU.
    """
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    mode = _interp(interpolation)
    if not via_float:
        return TF.resize(t, list(size), interpolation=mode, antialias=True)
    x = TF.resize(t.float(), list(size), interpolation=mode, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def finish_on_device(
    img: torch.Tensor,
    planned: PlannedJpeg,
    size: tuple[int, int],
    *,
    oriented: bool = False,
    via_float: bool | None = None,
) -> torch.Tensor:
    """Orient, crop, resize and flip one decoded full-resolution JPEG (on whatever device it is)."""
    if not oriented:
        img = orient(img, planned.jpeg.orientation)
    x0, y0, x1, y1 = planned.jpeg.box
    h, w = img.shape[-2:]
    if (x0, y0, x1, y1) != (0, 0, w, h):
        img = img[:, min(y0, h - 1) : max(min(y1, h), 1), min(x0, w - 1) : max(min(x1, w), 1)]
    if via_float is None:
        via_float = img.device.type != "cpu"
    if planned.crop is not None:  # eval crop: resize the whole image, cut the centre (as DecodeResize)
        rh, rw, top, left = planned.crop
        out = resize_uint8(img, (rh, rw), planned.interpolation, via_float=via_float)
        return out[:, top : top + size[0], left : left + size[1]]
    out = resize_uint8(img, size, planned.interpolation, via_float=via_float)
    return out.flip(-1) if planned.flip else out


def build_train_transform(
    img_size: int,
    *,
    interpolation: str = "bilinear",
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = None,
) -> Callable:
    return DecodeRandomResizedCrop(
        img_size,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        interpolation=interpolation,
        auto_augment=auto_augment,
    )


def build_eval_transform(
    img_size: int,
    *,
    interpolation: str = "bilinear",
    crop_pct: float | None = None,
    crop_mode: str = "center",
) -> Callable:
    return DecodeResize(img_size, interpolation=interpolation, crop_pct=crop_pct, crop_mode=crop_mode)
