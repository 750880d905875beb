"""Per-core decode + transform throughput: torchvision's stock pipeline vs vit-ft's, side by side.

    python benchmarks/bench_decode.py --root ../shared/data/imagenet-samples [--size 384] [--repeat 3]

Stock = what ``torchvision.datasets.ImageFolder`` does (PIL open + convert RGB) followed by
``Resize(size) + ToTensor() + Normalize()`` (eval) or ``RandomResizedCrop(size) + RandomHorizontalFlip()
+ ToTensor() + Normalize()`` (train). Ours = ``build_eval_transform`` / ``build_train_transform``
(decode → crop → resize → uint8 tensor; normalisation happens later on the device). One thread
(``torch.set_num_threads(1)``), so the numbers are per core. Large photos: the JPEGs are upscaled
to ``--large`` (default 4000x3000) into a temporary folder and measured the same way.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import torch
from PIL import Image

from vit_ft.data.decode import is_image_file
from vit_ft.data.transforms import build_eval_transform, build_train_transform


def _stock(size: int, train: bool):
    import torchvision.transforms as T

    norm = T.Normalize([0.5] * 3, [0.5] * 3)
    if train:
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    else:
        tf = T.Compose([T.Resize(size), T.ToTensor(), norm])

    def run(path: str):
        with open(path, "rb") as f:  # torchvision.datasets.folder.pil_loader
            img = Image.open(f).convert("RGB")
        return tf(img)

    return run


def _rate(fn, files: list[str], repeat: int, min_seconds: float) -> float:
    fn(files[0])
    n, t0 = 0, time.perf_counter()
    for _ in range(repeat):
        for f in files:
            fn(f)
            n += 1
    while time.perf_counter() - t0 < min_seconds:
        for f in files:
            fn(f)
            n += 1
    return n / (time.perf_counter() - t0)


def _make_large(files: list[str], folder: str, size: tuple[int, int], count: int) -> list[str]:
    out = []
    for i, f in enumerate(files[:count]):
        img = Image.open(f).convert("RGB").resize(size, Image.BICUBIC)
        path = os.path.join(folder, f"large_{i}.jpg")
        img.save(path, quality=92)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="folder of real photos (JPEGs), searched recursively")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--repeat", type=int, default=2, help="passes over the photos per measurement")
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--large", default="4000x3000", help="size of the generated large photos ('' to skip)")
    ap.add_argument("--large-count", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(
        p for p in glob.glob(os.path.join(args.root, "**", "*"), recursive=True) if is_image_file(p)
    )
    if not files:
        raise SystemExit(f"error: no images under {args.root}")
    sets = [(f"photos ({len(files)} files)", files, args.repeat)]
    tmp = tempfile.TemporaryDirectory(prefix="bench-large-")
    if args.large:
        w, h = (int(v) for v in args.large.lower().split("x"))
        sets.append(
            (
                f"large {w}x{h} ({args.large_count} files)",
                _make_large(files, tmp.name, (w, h), args.large_count),
                1,
            )
        )
    print(
        f"per-core images/s (torch threads=1), output {args.size}x{args.size} uint8 (ours) vs float (stock)"
    )
    print(f"{'images':34s} {'transform':9s} {'stock':>8s} {'ours':>8s} {'ratio':>7s}")
    for name, fs, repeat in sets:
        for train in (False, True):
            stock = _rate(_stock(args.size, train), fs, repeat, args.min_seconds)
            ours_tf = build_train_transform(args.size) if train else build_eval_transform(args.size)
            ours = _rate(ours_tf, fs, repeat, args.min_seconds)
            print(
                f"{name:34s} {'train' if train else 'eval':9s} {stock:8.1f} {ours:8.1f} {ours / stock:6.2f}x"
            )
    tmp.cleanup()


if __name__ == "__main__":
    main()
