"""Folder vs WebDataset shards: images/s of one DataLoader worker on many small files, side by side.

1. ``images/s``: one loader worker decoding and transforming (eval transform, ``--img-size``) every
   training image of a generated folder of ``--images`` small JPEGs, read as the folder (one open per
   image) and as shards (one open per shard), then again with ``--latency`` seconds added to every file
   open (a network file system's per-file cost: NFS, Lustre, an object-store mount). Best of ``--rounds``.
2. ``fast-forward``: what a resumed epoch pays to skip samples it already trained on: reading every
   shard's tar headers (no image bytes), per 10,000 samples; a resume reads at most one shard's.
3. ``memory``: what each loader worker holds per sample (the pickled dataset) for N and 4N samples:
   a folder's path array grows with the data; the shards' state is one int64 label per sample.
4. ``remote shards``: the shards behind a ``pipe:`` command (what an object store's CLI gives), read in
   the training order for 2 epochs by ``--workers`` loader workers: bytes fetched from the source and
   images/s, streamed vs ``data.shard_cache`` (each shard fetched once into a local folder).

    python benchmarks/bench_shards.py                       # 4000 images of 64 px, 1 worker
    python benchmarks/bench_shards.py --images 20000 --latency 0.005
"""

from __future__ import annotations

import argparse
import builtins
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vit_ft.data import ImageFolderDataModule, WebDatasetDataModule
from vit_ft.data.shards import write_shards
from vit_ft.data.tar_stream import iter_members
from vit_ft.preprocessing import Preprocessing


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4000)
    p.add_argument("--size", type=int, default=64, help="stored image side (px)")
    p.add_argument("--img-size", type=int, default=32, help="network input side (px)")
    p.add_argument("--latency", type=float, default=0.002, help="seconds added to each file open")
    p.add_argument("--shard-size", default="2MB")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="loader workers of the remote-shards section")
    return p.parse_args(argv)


def make_folder(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        img.save(d / f"{i:07d}.jpg", quality=90)
    for c in range(4):  # a tiny val split: the benchmark reads train only
        d = root / "val" / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (c * 60, 0, 0)).save(d / "v.jpg")
    return root


class SlowOpen:
    """``builtins.open`` with ``latency`` seconds added to each open of a file under ``root``."""

    def __init__(self, root: str, latency: float) -> None:
        self.root, self.latency, self.real = str(root), latency, builtins.open

    def __call__(self, file, *args, **kwargs):
        if isinstance(file, (str, Path)) and str(file).startswith(self.root):
            time.sleep(self.latency)
        return self.real(file, *args, **kwargs)


def images_per_s(dm, n_expected: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        loader = dm._loader("train", train=False)  # eval transform, index order: every image once
        t0 = time.perf_counter()
        n = sum(len(b[1]) for b in loader)
        best = min(best, time.perf_counter() - t0)
        assert n == n_expected, (n, n_expected)
    return n_expected / best


def modules(folder: Path, shards: Path, index: dict, img_size: int):
    common = dict(batch_size=64, num_workers=1, persistent_workers=False, val_fraction=0.0)
    f = ImageFolderDataModule(root=str(folder), **common)
    pattern = str(shards / index["splits"]["train"]["pattern"])
    s = WebDatasetDataModule(train=pattern, **common)
    for dm in (f, s):
        dm.configure_preprocessing(Preprocessing(img_size))
        dm.setup()
    return f, s


def main(argv=None) -> None:
    args = _args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = make_folder(tmp / "folder", args.images, args.size)
        t0 = time.perf_counter()
        index = write_shards(str(folder), str(tmp / "shards"), shard_size=args.shard_size, workers=2)
        n_shards = len(index["splits"]["train"]["shards"])
        print(
            f"{args.images} images of {args.size} px -> {n_shards} shards in {time.perf_counter() - t0:.1f}s"
        )
        f, s = modules(folder, tmp / "shards", index, args.img_size)
        print(f"\n{'one loader worker':<34}{'folder':>10}{'shards':>10}{'ratio':>8}")
        for label, latency in (
            ("images/s, local disk", 0.0),
            (f"images/s, +{args.latency * 1e3:g} ms per open", args.latency),
        ):
            if latency:
                builtins.open = SlowOpen(str(tmp), latency)
            try:
                a = images_per_s(f, args.images, args.rounds)
                b = images_per_s(s, args.images, args.rounds)
            finally:
                if isinstance(builtins.open, SlowOpen):
                    builtins.open = builtins.open.real
            print(f"{label:<34}{a:>10.0f}{b:>10.0f}{b / a:>7.2f}x")

        urls = s.splits["train"].urls
        t0 = time.perf_counter()
        members = sum(1 for u in urls for _ in iter_members(u))
        dt = time.perf_counter() - t0
        print(
            f"\nfast-forward (tar headers only): {dt / args.images * 1e4:.3f} s per 10,000 samples "
            f"({members} members of {n_shards} shards read in {dt:.2f}s)"
        )

        print(f"\n{'worker state per sample':<34}{'folder':>10}{'shards':>10}")
        a = len(pickle.dumps(f.splits["train"].index)) / args.images  # paths: grows with each name
        for mult in (1, 4):
            ss = s.dataset("train", None, False)
            sp = s.splits["train"]
            fake = type(sp)(sp.urls * mult, list(sp.counts) * mult, np.tile(sp.labels, mult), "train")
            ss.split = fake
            ss.bad = torch.zeros(len(fake), dtype=torch.uint8)
            b = len(pickle.dumps(ss)) / (args.images * mult)
            print(f"{f'bytes per sample, {mult}N samples':<34}{a:>10.1f}{b:>10.1f}")

        remote_shards(tmp, index, args)


def remote_shards(tmp: Path, index: dict, args: argparse.Namespace) -> None:
    """Section 4: the shards behind ``pipe:``, streamed vs ``data.shard_cache``."""
    import warnings

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores
    log = tmp / "fetched.log"
    fetch = tmp / "fetch.sh"  # logs the bytes it serves, then serves them
    fetch.write_text(f'stat -c %s "$1" >> {log}\ncat "$1"\n')
    shards = tmp / "shards"
    pattern = f"pipe:sh {fetch} {shards}/{index['splits']['train']['pattern']}"
    total = sum((shards / sh["name"]).stat().st_size for sh in index["splits"]["train"]["shards"])
    print(
        f"\nremote shards (pipe:), {args.workers} workers, 2 epochs{'streamed':>10}{'cached':>10}{'ratio':>8}"
    )
    fetched, speed = {}, {}
    for mode, cache in (("streamed", None), ("cached", str(tmp / "cache"))):
        log.write_text("")
        dm = WebDatasetDataModule(
            train=pattern,
            val=pattern,
            index=str(shards / "index.json"),
            shard_cache=cache,
            batch_size=64,
            num_workers=args.workers,
            persistent_workers=False,
        )
        dm.configure_preprocessing(Preprocessing(args.img_size))
        dm.setup()
        dm.trainer = type("T", (), {"world_size": 1, "global_rank": 0})()
        t0, n = time.perf_counter(), 0
        for epoch in (0, 1):
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)
            n += sum(len(b[1]) for b in loader)
        speed[mode] = n / (time.perf_counter() - t0)
        fetched[mode] = sum(int(x) for x in log.read_text().split()) / total
    print(
        f"{'data set sizes fetched':<43}{fetched['streamed']:>9.1f}x{fetched['cached']:>9.1f}x"
        f"{fetched['streamed'] / fetched['cached']:>7.1f}x"
    )
    print(
        f"{'loader images/s':<43}{speed['streamed']:>10.0f}{speed['cached']:>10.0f}"
        f"{speed['cached'] / speed['streamed']:>7.2f}x"
    )


if __name__ == "__main__":
    main()
