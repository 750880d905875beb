"""A small, learnable data set of real image files, made once and deterministically.

Four classes of coloured shapes on noisy backgrounds, saved as JPEG and PNG in class folders
(``train/`` and ``val/``), so the quickstart exercises exactly the path a user's own folder takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross")
_HUES = {"circle": (220, 60, 50), "square": (50, 170, 70), "triangle": (50, 90, 220), "cross": (230, 200, 40)}
VERSION = 1


def _draw(cls: str, rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(30, 200, size=3)
    grad = np.linspace(0, 1, size)[None, :, None] * rng.integers(-60, 60, size=3)
    bg = np.clip(base + grad + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(np.clip(c + rng.integers(-35, 36), 0, 255)) for c in _HUES[cls])
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(rng.integers(r + 2, size - r - 2)) for _ in range(2))
    if cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif cls == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif cls == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def make_quickstart_dataset(
    root: str, n_train: int = 120, n_val: int = 30, size: int = 96, seed: int = 0
) -> str:
    """Write the data set to ``root`` unless it is already there; return ``root``.

    The folder appears atomically (written aside, then renamed), so concurrent DDP ranks and
    interrupted runs never see half a data set.
    """
    root = os.path.expanduser(root)
    if os.path.isfile(os.path.join(root, ".complete")):
        return root
    parent = os.path.dirname(os.path.abspath(root)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".quickstart-", dir=parent)
    try:
        rng = np.random.default_rng(seed)
        for split, n in (("train", n_train), ("val", n_val)):
            for cls in CLASSES:
                d = os.path.join(tmp, split, cls)
                os.makedirs(d)
                for i in range(n):
                    img = _draw(cls, rng, size)
                    if i % 4 == 3:
                        img.save(os.path.join(d, f"{cls}_{i:04d}.png"))
                    else:
                        img.save(os.path.join(d, f"{cls}_{i:04d}.jpg"), quality=90)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(f"vit-ft quickstart v{VERSION}\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not os.path.isfile(os.path.join(root, ".complete")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
