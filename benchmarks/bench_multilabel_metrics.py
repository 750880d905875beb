"""What multi-label metrics cost against single-label ones, over one validation of the same size.

    python benchmarks/bench_multilabel_metrics.py                 # 10,000 images, 1000 classes, CPU
    python benchmarks/bench_multilabel_metrics.py --device cuda --images 50000

``single``: :class:`SingleLabelMetrics` with its analysis (loss, top-1/5, confusion, ECE, reliability),
as a single-label ``val`` stream runs it; ``multi``: :class:`MultiLabelMetrics` with its analysis (BCE,
every score kept for exact AP, the epoch-end mAP, micro AP, F1, exact match and the per-class max-F1
thresholds). Both over random logits (multi-label targets: 3% positives), batch by batch, updates and
the epoch-end compute, best of ``--rounds``; printed side by side with their ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from vit_ft.models.metrics import SingleLabelMetrics
from vit_ft.models.multilabel_metrics import MultiLabelMetrics


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    return p.parse_args()


def one_pass(ev, logits: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    dev = logits.device
    ev = ev.to(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for s in range(0, logits.shape[0], batch):
        ev.update(logits[s : s + batch], y[s : s + batch])
    ev.compute()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def main() -> None:
    a = _args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(a.images, a.classes, generator=g).to(dev)
    y1 = torch.randint(0, a.classes, (a.images,), generator=g).to(dev)
    ym = (torch.rand(a.images, a.classes, generator=g) < 0.03).float().to(dev)
    single = min(
        one_pass(SingleLabelMetrics("val", a.classes, True), logits, y1, a.batch) for _ in range(a.rounds)
    )
    multi = min(
        one_pass(MultiLabelMetrics("val", a.classes, True), logits, ym, a.batch) for _ in range(a.rounds)
    )
    print(f"{a.images} images x {a.classes} classes on {dev}, batch {a.batch}, best of {a.rounds}")
    print(f"{'single-label metrics':<22} {single:8.3f} s  ({1e6 * single / a.images:7.1f} us/image)")
    print(f"{'multi-label metrics':<22} {multi:8.3f} s  ({1e6 * multi / a.images:7.1f} us/image)")
    print(f"{'ratio multi / single':<22} {multi / single:8.2f}x")


if __name__ == "__main__":
    main()
