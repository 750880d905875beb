"""Step checkpoints: what one save of a ViT-B/32 costs, and what the default interval costs a run.

1. ``save``: a ViT-B/32 at 384 (random init, SGD momentum buffers after one step) written with
   ``trainer.save_checkpoint`` through vit-ft's atomic checkpoint IO, ``--saves`` times: seconds and MB/s.
2. ``steps``: the same model trained ``--steps`` optimizer steps (random uint8 images) three ways, in
   one run: no step checkpoints; the default ``last_checkpoint`` (``every_minutes=30``); and a save every
   ``--every-n-steps`` steps. Mean step time (all of a step: forward, backward, optimizer, callbacks,
   saves; the first 2 steps left out; the best of ``--rounds`` alternating rounds) and its ratio to no
   step checkpoints (goal for the default: <= 1.02x). The line ``projected`` spreads one measured save over 30 minutes: the default's cost on a
   long run.

    python benchmarks/bench_checkpoint.py                         # ViT-B/32 at 384, batch 4, CPU
    python benchmarks/bench_checkpoint.py --device cuda --batch 64 --steps 50
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from vit_ft.models.classifier import ViTClassifier
from vit_ft.training.checkpoint_io import AtomicCheckpointIO
from vit_ft.training.checkpointing import StepCheckpoint


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_base_patch32_384")
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--depth", type=int, default=None, help="fewer blocks than the backbone's (smoke tests)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per variant")
    p.add_argument("--saves", type=int, default=3, help="timed saves (best and median shown)")
    p.add_argument("--every-n-steps", type=int, default=4, help="the frequent-saves variant")
    p.add_argument("--every-minutes", type=float, default=30.0, help="the default interval")
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds of the three variants; each one's best round"
    )
    p.add_argument("--device", default="cpu")
    return p.parse_args()


class StepTimes(Callback):
    """Wall time between consecutive batch starts: a whole step, including the saves after it."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])][2:]


def make_model(args: argparse.Namespace) -> ViTClassifier:
    torch.manual_seed(0)
    return ViTClassifier(
        backbone=args.backbone,
        weights=None,
        img_size=args.img_size,
        num_classes=args.classes,
        class_names=[str(i) for i in range(args.classes)],
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        scheduler={"warmup_steps": 2},
        timm_kwargs={"depth": args.depth} if args.depth else {},
    )


def loader(args: argparse.Namespace, n: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, args.classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=args.batch, shuffle=False)


def trainer(args: argparse.Namespace, steps: int, callbacks: list, dirpath: Path | None) -> L.Trainer:
    return L.Trainer(
        accelerator=args.device,
        devices=1,
        precision="32",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=dirpath is not None,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(dirpath) if dirpath else None,
    )


def bench_save(args: argparse.Namespace, tmp: Path) -> tuple[list[float], int]:
    model = make_model(args)
    t = trainer(args, 1, [], None)
    t.fit(model, train_dataloaders=loader(args, args.batch))  # one step: SGD momentum buffers exist
    path = tmp / "last.ckpt"
    times = []
    for _ in range(args.saves):
        start = time.perf_counter()
        t.save_checkpoint(path, weights_only=False)
        times.append(time.perf_counter() - start)
    return times, path.stat().st_size


def bench_steps(args: argparse.Namespace, tmp: Path, variant: str) -> list[float]:
    model = make_model(args)
    timer = StepTimes()
    callbacks: list = [timer]
    dirpath = None
    if variant != "none":
        dirpath = tmp / variant
        every_n = args.every_n_steps if variant == "every-n" else None
        every_min = args.every_minutes if variant == "default" else None
        # every_n_epochs=0: no end-of-epoch save (the run is one epoch; its save would come after the timing)
        callbacks.append(
            StepCheckpoint(
                dirpath=str(dirpath),
                filename="last",
                monitor=None,
                every_n_steps=every_n,
                every_minutes=every_min,
                every_n_epochs=0,
            )
        )
    steps = args.steps + 3
    t = trainer(args, steps, callbacks, dirpath)
    t.fit(model, train_dataloaders=loader(args, (steps + 1) * args.batch))
    return timer.step_times()


def main() -> None:
    args = _args()
    lightning_log = logging.getLogger("lightning")
    level, precision = lightning_log.level, torch.get_float32_matmul_precision()
    lightning_log.setLevel(logging.ERROR)
    torch.set_float32_matmul_precision("high")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(args)
    finally:
        lightning_log.setLevel(level)
        torch.set_float32_matmul_precision(precision)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        saves, size = bench_save(args, tmp)
        print(f"{args.backbone} at {args.img_size}, {args.classes} classes, {args.device}")
        best, med = min(saves), statistics.median(saves)
        print(
            f"save: {size / 2**20:.0f} MB checkpoint (weights + SGD momentum + loops + RNG), "
            f"best {best:.2f} s, median {med:.2f} s of {len(saves)} ({size / 2**20 / best:.0f} MB/s)\n"
        )
        variants = ("none", "default", "every-n")
        rounds: dict[str, list[list[float]]] = {v: [] for v in variants}
        for r in range(args.rounds):  # alternating order, so that a slower spell does not favour one
            for v in variants if r % 2 == 0 else variants[::-1]:
                rounds[v].append(bench_steps(args, tmp, v))
        results = {v: min(rounds[v], key=statistics.mean) for v in variants}
    base = statistics.mean(results["none"])
    labels = {
        "none": "no step checkpoints",
        "default": f"default: every {args.every_minutes:g} min",
        "every-n": f"every {args.every_n_steps} steps",
    }
    header = f"{'variant':<26} {'step s (mean)':>14} {'ratio':>7}"
    print(
        f"training, batch {args.batch}, {len(results['none'])} timed steps per variant, "
        f"best of {args.rounds} round(s)"
    )
    print(header)
    print("-" * len(header))
    for v, times in results.items():
        mean = statistics.mean(times)
        print(f"{labels[v]:<26} {mean:>14.3f} {mean / base:>6.3f}x")
    interval = 60.0 * args.every_minutes
    print(
        f"projected: one {med:.2f} s save per {args.every_minutes:g} min adds {100 * med / interval:.3f}% "
        f"to a long run ({1 + med / interval:.4f}x)"
    )


if __name__ == "__main__":
    main()
