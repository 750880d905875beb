"""Per-core decode + transform throughput: torchvision's stock pipeline vs vit-ft's, side by side.

    python benchmarks/bench_decode.py --root ../shared/data/imagenet-samples [--size 384] [--repeat 3]

Stock = what ``torchvision.datasets.ImageFolder`` does (PIL open + convert RGB) followed by
``Resize(size) + ToTensor() + Normalize()`` (eval) or ``RandomResizedCrop(size) + RandomHorizontalFlip()
+ ToTensor() + Normalize()`` (train). Ours = ``build_eval_transform`` / ``build_train_transform``
(decode → crop → resize → uint8 tensor; normalisation happens later on the device). One thread
(``torch.set_num_threads(1)``), so the numbers are per core. Large photos: the JPEGs are upscaled
to ``--large`` (default 4000x3000) into a temporary folder and measured the same way.

Each pipeline is timed in ``--rounds`` alternating rounds and its best round is kept, so that other
work on a shared machine skews both sides alike. Two reference points: ``io+resize`` is
``torchvision.io.decode_jpeg`` of the whole file plus torch's uint8 resize (of the Inception crop for
train): the best a pipeline that decodes every pixel can do; ``decode`` is the bare full-resolution
decode alone, the ceiling of any such pipeline (vit-ft beats both on train and on large photos by
decoding only the crop, at reduced DCT scale, through libjpeg-turbo's region decoding). The
``decode_device=cuda`` rows time its two
halves on this CPU: the worker side (read + header + crop plan, no decoding) and the batched
decode + crop + resize that runs on the GPU there (``torchvision.io.decode_jpeg`` on the CPU here).
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


def _best(fns: dict, files: list[str], repeat: int, min_seconds: float, rounds: int) -> dict:
    """The best per-round rate of each pipeline, rounds alternating between them."""
    best = dict.fromkeys(fns, 0.0)
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = max(best[k], _rate(fn, files, repeat, min_seconds))
    return best


def _decode_only(path: str):
    from torchvision.io import ImageReadMode, decode_jpeg

    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB)


def _io_resize(size: int, train: bool):
    """torchvision.io decode of every pixel + torch's uint8 resize (of the same kind of crop for train)."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    from vit_ft.data.transforms import DecodeRandomResizedCrop, channels_last

    rrc = DecodeRandomResizedCrop(size)

    def run(path: str):
        t = _decode_only(path)
        if train:
            x0, y0, x1, y1 = rrc.plan(t.shape[2], t.shape[1])
            t = t[:, y0:y1, x0:x1]
        # HWC memory first: torch's SIMD uint8 resize is ~2x faster on it, even counting the copy
        t = channels_last(t)
        return TF.resize(t, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)

    return run


def _device_path(tf, files: list[str], batch: int, min_seconds: float) -> tuple[float, float]:
    """decode_device=cuda on this CPU: (worker-side plans/s, batched decode+resize images/s)."""
    from vit_ft.data.datamodule import ImageDataModule
    from vit_ft.data.device_decode import PlannedBatch
    from vit_ft.data.transforms import PlanOnly

    plan = PlanOnly(tf)
    worker = _rate(plan, files, 2, min_seconds / 2)
    dm = ImageDataModule()
    batches = [
        PlannedBatch([(plan(f), 0) for f in files[i : i + batch]], "train", tf.size)
        for i in range(0, len(files), batch)
    ]
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < min_seconds / 2:
        for b in batches:
            dm.decode_planned(b)
            n += len(b)
    return worker, n / (time.perf_counter() - t0)


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
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is kept")
    ap.add_argument("--no-device", action="store_true", help="skip the decode_device=cuda rows")
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
    from vit_ft.data import turbo

    region = turbo.library_path() or "not available (torchvision/PIL decode)"
    print(f"libjpeg-turbo region decoding: {region}")
    print(
        f"per-core images/s (torch threads=1), output {args.size}x{args.size} uint8 (ours) vs float (stock)"
    )
    print(
        f"{'images':28s} {'transform':9s} {'stock':>7s} {'ours':>7s} {'ratio':>6s}"
        f" {'io+resize':>9s} {'ratio':>6s} {'decode':>7s} {'ratio':>6s}"
    )
    device_rows = []
    for name, fs, repeat in sets:
        for train in (False, True):
            ours_tf = build_train_transform(args.size) if train else build_eval_transform(args.size)
            fns = {
                "stock": _stock(args.size, train),
                "ours": ours_tf,
                "io": _io_resize(args.size, train),
                "decode": _decode_only,
            }
            r = _best(fns, fs, repeat, args.min_seconds, args.rounds)
            print(
                f"{name:28s} {'train' if train else 'eval':9s} {r['stock']:7.1f} {r['ours']:7.1f}"
                f" {r['ours'] / r['stock']:5.2f}x {r['io']:9.1f} {r['io'] / r['stock']:5.2f}x"
                f" {r['decode']:7.1f} {r['decode'] / r['stock']:5.2f}x",
                flush=True,
            )
            if not args.no_device:
                device_rows.append((name, train, *_device_path(ours_tf, fs, 32, args.min_seconds)))
    if device_rows:
        print("\ndecode_device=cuda, both halves timed on this CPU (images/s, one thread)")
        print(f"{'images':28s} {'transform':9s} {'worker':>9s} {'batch decode':>13s}")
        for name, train, worker, batched in device_rows:
            print(f"{name:28s} {'train' if train else 'eval':9s} {worker:9.1f} {batched:13.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
