"""Training throughput: vit-ft's LightningModule + Trainer versus a bare PyTorch loop, eager and
with ``model.compile=true``.

Same model (ViT-B/32 at 384 by default), batch, data, optimizer (fused SGD where torch has it, as vit-ft
builds it), clipping and precision, in one run; vit-ft runs with its non-finite guard on (as train.py
does: it clips with the norm it checks, decided on the device, read only at logging steps);
prints images/s side by side, the ratios (vit-ft/bare: goal >= 0.95; compiled/eager vit-ft: goal >= 1.0
on CPU, a gain on GPU), the model FLOP/s of each as a fraction of this machine's matmul peak at that
precision (measured in the same run), and the compile time (the first step's forward and backward
compilation; it is outside the timed steps).

    python benchmarks/bench_train.py                      # ViT-B/32 at 384, batch 8, fp32 and bf16-mixed, CPU
    python benchmarks/bench_train.py --steps 20 --device cuda --batch 64
    python benchmarks/bench_train.py --no-compile         # without the compiled column
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from vit_ft.models.classifier import ViTClassifier
from vit_ft.training.nonfinite import NonFiniteLossGuard
from vit_ft.training.optim import build_optimizer, build_scheduler

try:  # the optimizer vit-ft builds (fused where torch has a fused kernel)
    from vit_ft.models.steps import fused_optimizer
except ImportError:  # an older vit-ft: the plain one
    fused_optimizer = None


def make_model(args: argparse.Namespace, compile: bool = False) -> ViTClassifier:
    torch.manual_seed(0)
    return ViTClassifier(
        compile=compile,
        compile_mode=args.compile_mode,
        backbone=args.backbone,
        weights=None,
        img_size=args.img_size,
        num_classes=args.classes,
        class_names=[str(i) for i in range(args.classes)],
        timm_kwargs=dict(
            getattr(args, "timm_kwargs", None) or {}
        ),  # e.g. a tiny depth (gpu_report --dry-run)
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        scheduler={"warmup_steps": 2},
    )


def make_data(args: argparse.Namespace, n_batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    n = args.batch * n_batches
    x = torch.randint(0, 256, (n, 3, args.img_size, args.img_size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, args.classes, (n,), generator=g)
    # pinned batches (gpu_report on CUDA): the host-to-device copy overlaps the step, as in vit-ft's loaders
    pin = bool(getattr(args, "pin_memory", False))
    return DataLoader(TensorDataset(x, y), batch_size=args.batch, shuffle=False, pin_memory=pin)


DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # else fp32


def autocast(device: str, precision: str):
    if precision in DTYPES:
        return torch.autocast(device_type=device, dtype=DTYPES[precision])
    return torch.autocast(device_type=device, enabled=False)


def bare_loop(args: argparse.Namespace, precision: str) -> float:
    """Images/s of a plain loop: normalise, forward, loss, backward, clip, step, schedule."""
    module = make_model(args).to(args.device)
    model = module.model
    model.train()
    cfg = {"name": "sgd", "lr": 0.01, "momentum": 0.9}
    opt = fused_optimizer(model, cfg) if fused_optimizer is not None else build_optimizer(model, **cfg)
    sched = build_scheduler(opt, total_steps=args.steps + args.warmup, warmup_steps=2)
    loader = make_data(args, args.steps + args.warmup)
    t0 = None
    for i, (x, y) in enumerate(loader):
        if i == args.warmup:
            sync(args.device)
            t0 = time.perf_counter()
        x, y = x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)
        with autocast(args.device, precision):
            logits = model(module.normalize(x))
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    sync(args.device)
    return args.steps * args.batch / (time.perf_counter() - t0)


class Timer(L.Callback):
    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.t0, self.t1 = warmup, device, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        sync(self.device)
        self.t1 = time.perf_counter()


def lightning_loop(args: argparse.Namespace, precision: str, compile: bool = False) -> tuple[float, Any]:
    """Images/s of vit-ft's Trainer run, and the model's compiled forward (``None`` when eager)."""
    model = make_model(args, compile=compile)
    timer = Timer(args.warmup, args.device)
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=args.steps + args.warmup,
        gradient_clip_val=1.0,
        gradient_clip_algorithm="norm",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=50,
        callbacks=[timer, NonFiniteLossGuard()],  # the guard is always on in train.py
    )
    trainer.fit(model, train_dataloaders=make_data(args, args.steps + args.warmup))
    return args.steps * args.batch / (timer.t1 - timer.t0), model.compiled


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_flops_per_image(args: argparse.Namespace) -> float:
    model = make_model(args).model.to(args.device)
    x = torch.randn(1, 3, args.img_size, args.img_size, device=args.device)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return float(fc.get_total_flops())


def matmul_peak(device: str, precision: str, n: int = 2048, reps: int = 10) -> float:
    dtype = DTYPES.get(precision, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_base_patch32_384")
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument(
        "--repeats", type=int, default=2, help="alternate bare/Lightning this many times; best of each"
    )
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="compiled column")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (model.compile_mode)")
    args = p.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    flops = train_flops_per_image(args)
    print(
        f"{args.backbone} at {args.img_size}, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"model FLOPs per training image (fwd+bwd): {flops / 1e9:.1f} GFLOP\n")
    header = (
        f"{'precision':<11} {'bare img/s':>10} {'vit-ft img/s':>12} {'ratio':>6} {'compiled img/s':>14} "
        f"{'comp/eager':>10} {'peak TFLOP/s':>12} {'bare %peak':>10} {'vit-ft %peak':>12} "
        f"{'compiled %peak':>14} {'compile s':>9}"
    )
    print(header)
    print("-" * len(header))
    notes = []
    for precision in args.precision:
        bare, ours, compiled, compile_s = [], [], [], []
        for _ in range(args.repeats):  # alternate, so all see the same machine load
            bare.append(bare_loop(args, precision))
            ours.append(lightning_loop(args, precision)[0])
            if args.compile:
                rate, fn = lightning_loop(args, precision, compile=True)
                if fn is not None and fn.active:
                    compiled.append(rate)
                    compile_s.append(fn.compile_seconds or float("nan"))
                elif fn is not None:
                    notes.append(f"{precision}: compilation failed, eager instead ({fn.failure})")
        peak = matmul_peak(args.device, precision)
        b, o = max(bare), max(ours)
        c = max(compiled) if compiled else float("nan")
        cs = compile_s[0] if compile_s else float("nan")  # the first (cold) compilation
        print(
            f"{precision:<11} {b:>10.2f} {o:>12.2f} {o / b:>6.3f} {c:>14.2f} {c / o:>10.3f} {peak / 1e12:>12.3f} "
            f"{100 * b * flops / peak:>9.1f}% {100 * o * flops / peak:>11.1f}% {100 * c * flops / peak:>13.1f}% "
            f"{cs:>9.1f}",
            flush=True,
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
