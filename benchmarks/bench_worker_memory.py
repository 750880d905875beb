"""DataLoader worker memory across epochs: vit-ft's numpy-backed index vs a Python list of paths.

Workers are forked; reading a Python ``str`` from a list writes its reference count, so every page of
the list a worker touches is copied into that worker (copy-on-write) and its private memory grows
towards the size of the whole index. vit-ft's ``FileIndex`` keeps paths in one numpy array: reads
touch no per-item objects, and workers stay flat. Both sides use the real ``TransformedDataset`` with a
transform that only looks at the path (no file I/O), so the index is the only difference.

    python benchmarks/bench_worker_memory.py                 # 1,281,167 ImageNet-like paths, 2 workers, 3 epochs

The baseline is the same DataLoader over a data set of the same length that holds no index at all.

Status (2026-11-24, the 2-core Firecracker VM this project develops on): NOT a win yet, and not
understood. Each side measured in its own spawned process, 1,281,167 paths, 2 workers: no index 531 MiB,
list +182 MiB, numpy +259 MiB per worker (flat over epochs 1-3 for all three). In-process runs gave other
numbers (no index 15 -> 155 MiB between epochs 1 and 2, with the growth in malloc arenas even for a data
set with no paths). Re-measure on a normal Linux host before drawing conclusions.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from vit_ft.data.datamodule import FileRecords, TransformedDataset
from vit_ft.data.folder import FileIndex


class ListRecords:
    """The naive index: Python lists of paths and labels (what torchvision's ImageFolder keeps)."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, i: int) -> str:
        return self.paths[i]


def path_length(src: str) -> torch.Tensor:
    return torch.tensor([len(src)], dtype=torch.int16)


def private_mib(pid: int) -> float:
    """Private (unshared) resident memory of a process, from /proc/<pid>/smaps_rollup."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total / 1024


def run(records, args: argparse.Namespace) -> list[float]:
    ds = TransformedDataset(records, path_length)
    loader = DataLoader(
        ds, batch_size=args.batch, shuffle=True, num_workers=args.workers, persistent_workers=True
    )
    per_epoch = []
    for _ in range(args.epochs):
        for _batch in loader:
            pass
        pids = [w.pid for w in loader._iterator._workers]
        per_epoch.append(sum(private_mib(p) for p in pids) / len(pids))
    del loader
    return per_epoch


class NoIndex:
    """Baseline: same length, same output, no paths at all."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.labels = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def source(self, i: int) -> str:
        return "/data/imagenet/train/n01440764/n01440764_0000000.JPEG"


def measure(kind: str, n: int, args: argparse.Namespace) -> list[float]:
    """In a fresh interpreter: build an ``n``-path index of ``kind`` and run ``args.epochs`` epochs."""
    torch.set_num_threads(1)
    if kind == "none":
        return run(NoIndex(n), args)
    wnids = [f"n{1440764 + 7919 * c:08d}" for c in range(1000)]
    paths = [f"/data/imagenet/train/{wnids[i % 1000]}/{wnids[i % 1000]}_{i:07d}.JPEG" for i in range(n)]
    labels = [i % 1000 for i in range(n)]
    if kind == "list":
        return run(ListRecords(paths, labels), args)
    index = FileIndex(np.array(paths, dtype=np.str_), np.array(labels, dtype=np.int64))
    del paths, labels  # as vit-ft's folder scan does: only the numpy arrays are kept
    gc.collect()
    return run(FileRecords(index), args)


def _measure_into(queue, kind: str, n: int, args: argparse.Namespace) -> None:
    queue.put(measure(kind, n, args))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_281_167, help="index size (ImageNet-1k train has 1,281,167)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args()

    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # each measurement in its own clean (non-daemonic) process
    res = {}
    for kind in ("none", "list", "numpy"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure_into, args=(queue, kind, args.n, args))
        proc.start()
        res[kind] = queue.get()
        proc.join()
    print(f"{args.n:,} paths, {args.workers} workers, {args.epochs} epochs ({time.perf_counter() - t0:.0f}s)")
    print("private memory per worker above the same DataLoader over a data set with no index, MiB:\n")
    print(f"{'epoch':<6} {'no index':>9} {'Python list':>12} {'vit-ft numpy':>13}")
    for e in range(args.epochs):
        base = res["none"][e]
        print(f"{e + 1:<6} {base:>9.1f} {res['list'][e] - base:>+12.1f} {res['numpy'][e] - base:>+13.1f}")


if __name__ == "__main__":
    main()
