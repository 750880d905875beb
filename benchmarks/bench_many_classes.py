"""The confusion matrix of many classes: the dense ``[K, K]`` int64 path (what every class count used
before ``DENSE_CONFUSION_MAX``) vs the sparse one (a cell code per image; what K > 2048 uses now).

    python benchmarks/bench_many_classes.py                      # K = 1000, 10000, 21843; 5000 images; CPU
    python benchmarks/bench_many_classes.py --device cuda --images 20000

Per K, each path runs the evaluator's confusion metric over the same random predictions, batch by
batch (``update``), then its epoch-end ``compute`` (``AnalysisMetrics.counts``: what the evaluator
hands on), then the host's ``analysis_summary`` (metrics.json's ``analysis``). Printed: the seconds of
update+compute and of the summary (best of ``--rounds``), the metric state's bytes after the updates and
the summary's peak numpy memory (tracemalloc), dense beside sparse with their ratio. The dense path is
skipped above ``--dense-max`` classes (21,843 classes: a 3.8 GB state, and the summary copies it).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from typing import Any

import torch

from vit_ft.models import analysis as analysis_module
from vit_ft.models.analysis import analysis_summary
from vit_ft.models.metrics import AnalysisMetrics


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[1000, 10_000, 21_843])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--batch", type=int, default=250, help="validation batch per device")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dense-max", type=int, default=10_000, help="the largest K the dense path is run for")
    return p.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(metric: Any) -> int:
    out = 0
    for value in metric.metric_state.values():
        for t in value if isinstance(value, list) else [value]:
            out += t.numel() * t.element_size()
    return out


def one_path(k: int, dense: bool, pred: torch.Tensor, y: torch.Tensor, batch: int, rounds: int) -> dict:
    """Seconds of update+compute and of the summary (best of ``rounds``), state bytes, summary peak bytes."""
    analysis_module.DENSE_CONFUSION_MAX = k if dense else k - 1
    names = [f"class {i}" for i in range(k)]
    best_eval = best_summary = float("inf")
    state = peak = 0
    for _ in range(rounds):
        metrics = AnalysisMetrics(k).to(pred.device)
        _sync(pred.device)
        t0 = time.perf_counter()
        for s in range(0, pred.shape[0], batch):
            metrics.confusion.update(pred[s : s + batch], y[s : s + batch])
        _sync(pred.device)
        state = _state_bytes(metrics.confusion)
        confusion = metrics.counts()  # numpy [K, K] or the non-zero cells, on the host
        best_eval = min(best_eval, time.perf_counter() - t0)
        del metrics
        tracemalloc.start()
        t0 = time.perf_counter()
        analysis_summary(confusion, names, split="val", ece=None)
        best_summary = min(best_summary, time.perf_counter() - t0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del confusion
    return {"eval": best_eval, "summary": best_summary, "state": state, "peak": peak}


def _mb(n: float) -> str:
    return f"{n / 2**20:9.2f} MB"


def main() -> None:
    args = _args()
    dev = torch.device(args.device)
    default = analysis_module.DENSE_CONFUSION_MAX
    print(f"{args.images} images, batch {args.batch}, device {dev}, best of {args.rounds}")
    head = f"{'K':>6} {'path':<7} {'update+compute':>15} {'summary':>9} {'state':>12} {'summary peak':>13}"
    print(head)
    for k in args.classes:
        g = torch.Generator().manual_seed(k)
        y = torch.randint(0, k, (args.images,), generator=g)
        right = torch.rand(args.images, generator=g) < 0.7  # 70% right; the rest: one of 50 near classes
        pred = torch.where(right, y, (y + torch.randint(1, 50, (args.images,), generator=g)) % k)
        pred, y = pred.to(dev), y.to(dev)
        rows = {"sparse": one_path(k, False, pred, y, args.batch, args.rounds)}
        if k <= args.dense_max:
            rows["dense"] = one_path(k, True, pred, y, args.batch, args.rounds)
        for name in ("dense", "sparse"):
            r = rows.get(name)
            if r is None:
                print(
                    f"{k:>6} {name:<7} skipped: a {k * k * 8 / 2**30:.1f} GB int64 state (--dense-max {args.dense_max})"
                )
                continue
            print(f"{k:>6} {name:<7} {r['eval'] * 1e3:12.1f} ms {r['summary'] * 1e3:6.1f} ms "
                  f"{_mb(r['state'])} {_mb(r['peak'])}")  # fmt: skip
        if "dense" in rows:
            d, s = rows["dense"], rows["sparse"]
            print(f"{k:>6} {'ratio':<7} {d['eval'] / s['eval']:12.1f} x  {d['summary'] / s['summary']:6.1f} x "
                  f"{d['state'] / s['state']:9.0f} x  {d['peak'] / max(s['peak'], 1):9.1f} x   (dense / sparse)")  # fmt: skip
    analysis_module.DENSE_CONFUSION_MAX = default


if __name__ == "__main__":
    main()
