"""Check every image under a folder on all cores; write a report of the bad ones.

    python -m vit_ft.data.scan ROOT [--report bad_images.csv] [--workers N]

Every image file (by extension; hidden files and folders skipped, as the loaders do) is fully
decoded as training would decode it. For a folder of class folders (``ROOT/train/<class>`` or
``ROOT/<class>``) it also prints the training classes' counts, range and imbalance ratio. The report (CSV, or JSON when the name ends in ``.json``) lists
``path,reason`` for each unusable file; the exit status is 1 when there is any, 0 when all are good,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from vit_ft.data.decode import check_image, is_image_file
from vit_ft.data.folder import scan_classes, walk_files, warn_outside
from vit_ft.errors import ConfigError
from vit_ft.io import SafeCSVWriter
from vit_ft.progress import track


def iter_images(root: str):
    """Image files under ``root``, as the loaders find them (folder links followed once each; one
    warning for links that leave ``root``)."""
    outside: list[str] = []
    for dirpath, filenames in walk_files(root, root, outside):
        for f in filenames:
            if is_image_file(f):
                yield os.path.join(dirpath, f)
    warn_outside(outside, root)


IMBALANCE_HINT_RATIO = 10.0


def imbalance_summary(counts: Any, class_names: list[str] | None = None) -> str:
    """One line on the class counts of a training split: their range and imbalance ratio (largest /
    smallest count), and, over :data:`IMBALANCE_HINT_RATIO`, the two switches that help."""
    counts = [int(c) for c in counts]
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(counts))]
    if not counts:
        return "class counts: no classes"
    hi, lo = max(range(len(counts)), key=counts.__getitem__), min(range(len(counts)), key=counts.__getitem__)
    ratio = counts[hi] / counts[lo] if counts[lo] else float("inf")
    line = (
        f"class counts (train): {counts[lo]} ({names[lo]}) to {counts[hi]} ({names[hi]}) images per class "
        f"over {len(counts)} classes; imbalance ratio {ratio:.1f}"
    )
    if ratio > IMBALANCE_HINT_RATIO:
        line += (
            "; imbalanced: try data.sampler=balanced (or sqrt) or model.class_weights=balanced, "
            "and monitor=val/acc1_macro"
        )
    return line


def folder_class_counts(root: str) -> tuple[list[str], list[int]] | None:
    """``(class names, images per class)`` of the training classes of an image folder as
    ``data=imagefolder`` reads it (``root/train/<class>`` or ``root/<class>``); None when ``root`` is
    not laid out that way."""
    base = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    try:
        found = scan_classes(base, "root", root)
    except (ConfigError, OSError):
        return None
    if len(found) < 2:
        return None
    classes = sorted(found)
    return classes, [len(found[c]) for c in classes]


def _check(path: str) -> tuple[str, str | None]:
    return path, check_image(path)


def scan(root: str, workers: int | None = None) -> tuple[int, list[tuple[str, str]]]:
    """``(number of images checked, [(path, reason), ...] for the bad ones)``."""
    paths = list(iter_images(root))
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(paths) < 64:
        results = track(map(_check, paths), len(paths), "scan", unit="img")
        bad = [(p, r) for p, r in results if r is not None]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = pool.map(_check, paths, chunksize=max(1, min(256, len(paths) // (workers * 8))))
            bad = [(p, r) for p, r in track(results, len(paths), "scan", unit="img") if r is not None]
    return len(paths), sorted(bad)


def write_report(path: str, bad: list[tuple[str, str]], n_checked: int, root: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump(
                {"root": root, "checked": n_checked, "bad": [{"path": p, "reason": r} for p, r in bad]},
                f,
                indent=1,
            )
    else:
        with open(path, "w", newline="") as f:
            w = SafeCSVWriter(f)  # a path starting "=" stays text in a spreadsheet
            w.writerow(["path", "reason"])
            w.writerows(bad)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vit_ft.data.scan", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder to check (recursively)")
    ap.add_argument(
        "--report", default="bad_images.csv", help="report file: .csv or .json (default bad_images.csv)"
    )
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # progress lines when stderr is no terminal
    if not os.path.isdir(args.root):
        print(f"error: {args.root!r} is not a folder", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    n, bad = scan(args.root, args.workers)
    write_report(args.report, bad, n, args.root)
    dt = time.perf_counter() - t0
    print(f"checked {n} images in {dt:.1f}s: {len(bad)} unusable; report: {args.report}")
    for p, r in bad[:20]:
        print(f"  {p}: {r}")
    if len(bad) > 20:
        print(f"  ... and {len(bad) - 20} more (see the report)")
    if bad:
        print("train with data.on_bad_image=skip to leave them out, or remove them")
    classes = folder_class_counts(args.root)
    if classes is not None:
        print(imbalance_summary(classes[1], classes[0]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
