"""Generated image files of every kind the loaders must handle (no downloads, all tiny)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def photo(w: int = 48, h: int = 36, seed: int = 0) -> Image.Image:
    """A smooth RGB picture with some structure (so JPEG compresses it like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, 3)
    arr = (base + 80 * np.sin(x[..., None] / (3 + seed % 5) + np.arange(3)) + 40 * (y[..., None] / h)) % 256
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


def exif_rotated_jpeg(orientation: int, w: int = 40, h: int = 24) -> bytes:
    img = photo(w, h, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(img, exif=exif.tobytes())


def unusual_images() -> dict[str, bytes]:
    """``{file name: bytes}`` of valid but unusual images (each must load as RGB)."""
    out = {}
    p = photo()
    out["cmyk.jpg"] = jpeg_bytes(p.convert("CMYK"))
    for name, img, fmt in (
        ("gray.png", p.convert("L"), "PNG"),
        ("gray.jpg", p.convert("L"), "JPEG"),
        ("rgba.png", p.convert("RGBA"), "PNG"),
        ("palette.png", p.convert("P"), "PNG"),
        ("photo.webp", p, "WEBP"),
        ("anim.gif", p.convert("P"), "GIF"),
        ("one.png", Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        ("one.jpg", Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"),
        ("photo.bmp", p, "BMP"),
        ("photo.tif", p, "TIFF"),
    ):
        b = io.BytesIO()
        img.save(b, fmt)
        out[name] = b.getvalue()
    b = io.BytesIO()
    Image.fromarray((np.arange(48 * 36, dtype=np.uint16).reshape(36, 48) * 37).astype(np.uint16)).save(
        b, "PNG"
    )
    out["sixteen.png"] = b.getvalue()
    # palette with a transparent index, and RGBA with a fully transparent corner
    pal = p.convert("P")
    b = io.BytesIO()
    pal.save(b, "PNG", transparency=0)
    out["palette_transparent.png"] = b.getvalue()
    out["rotated.jpg"] = exif_rotated_jpeg(6)
    return out


def bad_images() -> dict[str, bytes]:
    """``{file name: bytes}`` of unusable files (each must raise BadImageError / be skipped)."""
    good = jpeg_bytes(photo(64, 48))
    return {
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "notes_renamed.jpg": b"this is not an image, just text with a .jpg name\n" * 4,
        "header_only.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    }


def write(folder: str, files: dict[str, bytes]) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def class_folder(
    root: str, classes: dict[str, int], size: tuple[int, int] = (40, 30), ext: str = ".jpg", seed: int = 0
):
    """``root/<class>/<class>_<i><ext>`` with ``classes[c]`` photos each."""
    for k, (c, n) in enumerate(classes.items()):
        d = os.path.join(root, c)
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            photo(*size, seed=seed + 31 * k + i).save(os.path.join(d, f"{c}_{i}{ext}"))
