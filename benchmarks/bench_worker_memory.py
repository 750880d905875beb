"""DataLoader worker memory across epochs: vit-ft's numpy-backed index vs a Python list of paths.

    python benchmarks/bench_worker_memory.py       # 1,281,167 ImageNet-like paths, 2 workers, 5 epochs

vit-ft's loaders fork their workers (default start method on Linux) and keep them (persistent), so the
workers share the parent's memory copy-on-write. Reading a ``str`` from a Python list writes its reference
count, so each page of path objects a worker reads gets copied into that worker. ``FileIndex`` keeps the
paths in one numpy array, which reads never write. Every side uses the real ``TransformedDataset`` (and
``FileRecords``), shuffle, persistent workers, and a transform that returns a small tensor computed from
the path (no file I/O), so the index is the only difference. Each side runs in its own fresh process:

* no index: a data set of the same length that holds no paths (the baseline);
* Python list: absolute ``str`` paths and labels in lists (what torchvision's ImageFolder keeps);
* numpy S: ``FileIndex`` as vit-ft builds it (relative paths as ``np.bytes_``, plus the root), plain workers;
* numpy U: the same with absolute paths as ``np.str_`` (4 bytes a character; vit-ft's folder index
  before 2026-11-24);
* vit-ft: numpy S with vit-ft's own ``worker_init_fn``, which calls ``gc.freeze()`` in each worker.

Measured at the end of each epoch: (a) the whole process tree: the sum over the parent and the workers of
``Pss_Anon + Pss_Shmem`` (/proc/PID/smaps_rollup). PSS splits each shared page between the processes that
map it, so the sum counts every page once. File-backed pages (libraries in the page cache) are left out:
their PSS also moves when unrelated processes map the same libraries. (b) Per worker: ``Private_Dirty``,
and the minor page faults during the epoch (/proc/PID/stat ``minflt``, in MiB of 4 KiB pages).

Results (2026-11-24, the project's 2-core Firecracker VM, Linux 6.18, Python 3.11, torch 2.14, 271 s):
1,281,167 paths, 2 workers, batch 512, epoch 5. Tree, MiB (difference to no index): no index 859, list
1,298 (+439), numpy S 925 (+65), numpy U 1,138 (+279), vit-ft 646 (-213). Per-worker Private_Dirty, MiB:
155, 294, 155, 155, 15. Index held by the parent: list 145, S 56, U 269 MiB.

* No worker copies a numpy index: the workers of numpy S and U hold as much private memory as the
  no-index workers (-0.3 and -0.1 MiB of difference). The tree pays for the index once, in the parent
  (S: +65 = 56 MiB of arrays + ~10 MiB of parent heap left over from building them; U: +279). The
  Python list costs +138 MiB in every worker (its str objects, all read during epoch 1), +439 MiB in all.
* Worker memory is flat across epochs 2-5 for every side (+0.0 MiB of Private_Dirty; the ~10 MiB of page
  faults per epoch reuse memory the worker freed; no index over 14 epochs: flat too, parent 523-529 MiB).
  Before that, each plain worker copies ~140 MiB once. The index plays no part in it: the copy comes with
  the worker's first full garbage collection, which writes the GC header of every object the worker
  inherited (torch, Lightning, ...: ~500 MiB of parent heap), in epoch 1 or 2 depending on allocation
  counts. vit-ft's workers ``gc.freeze()`` those objects when they start, so it never comes (15 MiB per
  worker, -278 MiB for the tree with 2 workers; the parent's own GC is left alone).
* Parent writes after the fork do not show up as worker private memory here. When the parent's own GC
  writes those headers, the parent gets its own copies and the originals stay shared by the two workers
  (Shared, not Private, in both), so PSS counts them but Private_Dirty does not. With one worker they do
  count as its Private: a parent ``gc.collect()`` took that worker from 19 to 157 MiB of Private_Dirty
  with no new page faults in the worker.

Why the earlier status was "not understood" (no index 531 MiB, list +182, numpy +259 MiB private per
worker): that version ran each side in a ``spawn``-ed process, and multiprocessing makes ``spawn`` the
default start method inside such a process, so the DataLoader spawned its workers. Each worker was then
a fresh interpreter (531 MiB of torch & co.) that unpickled its own copy of the data set (U array:
1,281,167 x 53 chars x 4 B = 259 MiB; list of str: 182 MiB). This version forces ``fork``, which is what
vit-ft gets on Linux, and checks that the workers were forked. Under ``spawn`` (macOS, Windows, or
``multiprocessing_context="spawn"``) every worker holds a full copy of the index, and a U index is then
larger than the list.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from vit_ft.data.folder import FileIndex
from vit_ft.data.loader_policy import seed_worker
from vit_ft.data.records import FileRecords, TransformedDataset

KINDS = {
    "none": "no index",
    "list": "Python list",
    "S": "numpy S",
    "U": "numpy U",
    "vit-ft": "vit-ft",
}
ROOT = "/data/imagenet"
MIB = 1024 * 1024


class ListRecords:
    """The naive index: Python lists of paths and labels (what torchvision's ImageFolder keeps)."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, i: int) -> str:
        return self.paths[i]


class NoIndex:
    """Baseline: same length, same output, no paths at all."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.labels = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return self.n

    def source(self, i: int) -> str:
        return ROOT + "/train/n01440764/n01440764_0000000.JPEG"


def path_length(src: str) -> torch.Tensor:
    """The transform: a tensor, as real transforms return (its allocations drive the workers' GC)."""
    return torch.tensor([len(src)], dtype=torch.int16)


def smaps(pid: int) -> dict[str, float]:
    """Fields of /proc/<pid>/smaps_rollup in MiB, plus ``minflt`` (minor page faults, a count)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    with open(f"/proc/{pid}/stat") as f:
        out["minflt"] = int(f.read().rsplit(")", 1)[1].split()[7])
    return out


def build(kind: str, n: int):
    """The records of one side, built the way the real code builds them; returns (records, MiB of index)."""
    if kind == "none":
        return NoIndex(n), 0.0
    wnids = [f"n{1440764 + 7919 * c:08d}" for c in range(1000)]
    rel = [f"train/{wnids[i % 1000]}/{wnids[i % 1000]}_{i:07d}.JPEG" for i in range(n)]
    classes = list(range(1000))  # labels share one int object per class, as ImageFolder's do
    if kind == "list":
        paths = [f"{ROOT}/{p}" for p in rel]
        labels = [classes[i % 1000] for i in range(n)]
        size = sys.getsizeof(paths) + sys.getsizeof(labels) + sum(map(sys.getsizeof, paths))
        return ListRecords(paths, labels), size / MIB
    labels = np.array([i % 1000 for i in range(n)], dtype=np.int64)
    if kind == "U":  # absolute paths as np.str_ (what data=imagefolder kept before 2026-11-24)
        index = FileIndex(np.array([f"{ROOT}/{p}" for p in rel], dtype=np.str_), labels)
    else:  # folder._to_index and imagenet._build: relative paths as np.bytes_, and the root
        index = FileIndex(np.array([os.fsencode(p) for p in rel], dtype=np.bytes_), labels, ROOT)
    del rel, wnids
    gc.collect()
    return FileRecords(index), (index.paths.nbytes + index.labels.nbytes) / MIB


def measure(kind: str, args: argparse.Namespace) -> dict:
    """In a fresh process: build one side's index, run ``args.epochs`` epochs, read memory after each."""
    # A spawn-ed process makes spawn its own default start method; vit-ft's loaders fork (Linux default).
    mp.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    records, index_mib = build(kind, args.n)
    loader = DataLoader(
        TransformedDataset(records, path_length),
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=True,
        # vit-ft's own worker init (ImageDataModule's loaders): gc.freeze() in each worker at start
        worker_init_fn=seed_worker if kind == "vit-ft" else None,
    )
    epochs = []
    for _ in range(args.epochs):
        for _batch in loader:
            pass
        workers = loader._iterator._workers
        assert all(w._popen.method == "fork" for w in workers), "workers were not forked"
        parent, ws = smaps(os.getpid()), [smaps(w.pid) for w in workers]
        tree = sum(p.get("Pss_Anon", p["Pss"]) + p.get("Pss_Shmem", 0.0) for p in [parent, *ws])
        epochs.append(
            {
                "tree": tree,
                "private": sum(w["Private_Dirty"] for w in ws) / len(ws),
                "minflt": sum(w["minflt"] for w in ws) / len(ws),
            }
        )
    del loader
    return {"index_mib": index_mib, "epochs": epochs}


def _measure_into(queue, kind: str, args: argparse.Namespace) -> None:
    queue.put(measure(kind, args))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_281_167, help="index size (ImageNet-1k train has 1,281,167)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=512)
    args = p.parse_args()

    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # each side in its own clean interpreter, nothing inherited
    res = {}
    for kind in KINDS:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure_into, args=(queue, kind, args))
        proc.start()
        res[kind] = queue.get()
        proc.join()
    wall = time.perf_counter() - t0

    w = 17
    head = f"{'epoch':<6}" + "".join(f"{name:>{w}}" for name in KINDS.values())
    base = res["none"]["epochs"]
    print(
        f"{args.n:,} paths, {args.workers} forked persistent workers, batch {args.batch}, "
        f"{args.epochs} epochs, shuffle ({wall:.0f}s)"
    )
    print(
        "index held by the parent, MiB: "
        + ", ".join(f"{KINDS[k]} {res[k]['index_mib']:.0f}" for k in KINDS if k != "none")
    )
    print("\nwhole tree (parent + workers), sum of PSS of anonymous + shared memory, MiB (vs no index):")
    print(head)
    for e in range(args.epochs):
        cells = [f"{base[e]['tree']:>{w}.0f}"]
        for k in list(KINDS)[1:]:
            t, d = res[k]["epochs"][e]["tree"], res[k]["epochs"][e]["tree"] - base[e]["tree"]
            cells.append(f"{t:.0f} ({d:+.0f})".rjust(w))
        print(f"{e + 1:<6}" + "".join(cells))

    print("\nper worker: Private_Dirty, MiB (page faults during the epoch, MiB):")
    print(head)
    prev = dict.fromkeys(KINDS, 0.0)
    for e in range(args.epochs):
        cells = []
        for k in KINDS:
            r = res[k]["epochs"][e]
            faulted = (r["minflt"] - prev[k]) * 4096 / MIB
            prev[k] = r["minflt"]
            cells.append(f"{r['private']:.1f} ({faulted:.0f})".rjust(w))
        print(f"{e + 1:<6}" + "".join(cells))

    print()
    last, steady = args.epochs - 1, min(1, args.epochs - 1)
    at = {k: res[k]["epochs"][last] for k in KINDS}
    sides = [k for k in KINDS if k != "none"]
    print(
        "per-worker copy of the index (Private_Dirty vs no index, last epoch), MiB: "
        + ", ".join(f"{KINDS[k]} {at[k]['private'] - at['none']['private']:+.1f}" for k in sides)
    )
    print(
        "whole-tree cost of the index (vs no index, last epoch), MiB: "
        + ", ".join(f"{KINDS[k]} {at[k]['tree'] - at['none']['tree']:+.0f}" for k in sides)
    )
    print(
        f"per-worker Private_Dirty growth, epoch {steady + 1} -> {last + 1}, MiB: "
        + ", ".join(
            f"{KINDS[k]} {at[k]['private'] - res[k]['epochs'][steady]['private']:+.1f}" for k in KINDS
        )
    )
    print(
        "gc.freeze() in the workers (vit-ft vs numpy S, last epoch), MiB: per worker "
        f"{at['vit-ft']['private'] - at['S']['private']:+.1f}, whole tree "
        f"{at['vit-ft']['tree'] - at['S']['tree']:+.0f}"
    )


if __name__ == "__main__":
    main()
