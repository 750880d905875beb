"""Peak memory of one training step: plain vs gradient checkpointing vs LoRA vs both, side by side.

    python benchmarks/bench_memory.py                                  # ViT-B/32 @384 and ViT-L/16 @224, batch 8
    python benchmarks/bench_memory.py --models b32 --batch 32          # one model, another batch

Each variant is vit-ft's own ``ViTClassifier`` (random init: no download) with ``grad_checkpointing``
and/or ``lora`` (rank 8 on qkv unless ``--rank`` / ``--targets`` say otherwise), fed the same uint8
batch, after a warm-up forward and backward on one image: forward, cross-entropy, backward, one AdamW step (timm's, as training builds it: its state is
created in that step). Every variant runs in its own fresh process, so that peaks do not mix.

* CPU: resident memory (``/proc/self/status``), with glibc's mmap threshold fixed at 64 KiB in the
  measuring processes so that freed tensors leave RSS. ``weights`` = RSS after building the model minus
  before; ``activations`` = RSS after the forward minus before it (what backward keeps); ``step peak``
  = the peak RSS during the step (``VmHWM``, reset through ``/proc/self/clear_refs`` just before)
  minus the RSS before it; ``total`` = weights + step peak.
* CUDA: the same from ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` (bf16 autocast
  unless ``--fp32``).

Targets (issue 12): gradient checkpointing keeps <= 0.5x the activations of plain; LoRA (rank 8) needs
<= 0.6x the total of full fine-tuning.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

MODELS = {
    # name: (timm backbone, image size, extra timm kwargs)
    "b32": ("vit_base_patch32_384", 384, {}),
    "l16": ("vit_large_patch16_224", 224, {}),
    "tiny": ("vit_tiny_patch16_224", 32, {"patch_size": 8, "depth": 2}),  # for the tests
}
VARIANTS = {
    "plain": (False, False),
    "ckpt": (True, False),
    "lora": (False, True),
    "lora+ckpt": (True, True),
}
MIB = 2**20
COLLECT = True  # gc.collect() before each reading (cheap in the fresh measuring process)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class Meter:
    """Current and peak memory of this process: RSS on CPU, the caching allocator's on CUDA."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def now(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        if COLLECT:
            gc.collect()
        return _status_kib("VmRSS") * 1024

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> int:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _status_kib("VmHWM") * 1024


def measure(
    model: str, variant: str, batch: int, rank: int, targets: list[str], device: str, amp: bool
) -> dict:
    """One training step of one variant in this process; memory figures in bytes."""
    import peft.tuners.lora  # noqa: F401 - imported before measuring: a library is not weights
    import torch
    import torch.nn.functional as F

    from vit_ft.models.classifier import ViTClassifier
    from vit_ft.training.optim import build_optimizer

    backbone, size, kwargs = MODELS[model]
    ckpt, lora = VARIANTS[variant]
    cuda = device == "cuda"
    meter = Meter(cuda)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    x, y = x.to(device), y.to(device)
    before_model = meter.now()
    m = ViTClassifier(
        backbone=backbone,
        weights=None,
        img_size=size,
        num_classes=10,
        timm_kwargs=dict(kwargs),
        grad_checkpointing=ckpt,
        lora={"rank": rank, "alpha": 16, "targets": targets} if lora else None,
    ).to(device)
    m.train()
    opt = build_optimizer(m.model, name="adamw", lr=1e-4, weight_decay=0.05)
    # Warm-up forward and backward on one image (lazy kernels and buffers), no optimizer step (its
    # state is part of the step measured below).
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
        F.cross_entropy(m(x[:1]).float(), y[:1]).backward()
    opt.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    params = sum(p.numel() for p in m.parameters())
    before_step = meter.now()
    meter.reset_peak()
    t0 = time.perf_counter()
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
        loss = F.cross_entropy(m(x).float(), y)
    after_forward = meter.now()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = meter.peak()
    return {
        "model": model,
        "variant": variant,
        "params": params,
        "trainable": trainable,
        "weights": before_step - before_model,
        "activations": after_forward - before_step,
        "step_peak": peak - before_step,
        "total": before_step - before_model + peak - before_step,
        "seconds": seconds,
        "loss": loss.item(),
    }


def _one_process(args: argparse.Namespace, model: str, variant: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_src(), os.environ.get("PYTHONPATH")]))}
    # glibc: every allocation over 64 KiB is its own mapping, returned to the system when freed (no
    # dynamic threshold), so RSS follows the live tensors instead of what the heap kept from earlier.
    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--one", model, variant, *_common(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{model} {variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _src() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _common(args: argparse.Namespace) -> list[str]:
    out = [
        "--batch",
        str(args.batch),
        "--rank",
        str(args.rank),
        "--device",
        args.device,
        "--targets",
        *args.targets,
    ]
    return out + (["--fp32"] if args.fp32 else [])


def table(results: list[dict]) -> str:
    """The side-by-side table: MiB, and each variant's ratios to plain."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in results):
        rows = {r["variant"]: r for r in results if r["model"] == model}
        base = rows.get("plain")
        lines.append(f"\n{model}: {MODELS[model][0]} @{MODELS[model][1]}")
        lines.append(
            f"{'variant':<10} {'trainable':>11} {'weights':>9} {'activ.':>9} {'step pk':>9} {'total':>9} "
            f"{'activ./plain':>13} {'total/plain':>12} {'s':>7} {'loss':>8}"
        )
        for name, r in rows.items():
            ra = f"{r['activations'] / base['activations']:.2f}x" if base and base["activations"] > 0 else "-"
            rt = f"{r['total'] / base['total']:.2f}x" if base and base["total"] > 0 else "-"
            lines.append(
                f"{name:<10} {r['trainable']:>11,} {r['weights'] / MIB:>9.1f} {r['activations'] / MIB:>9.1f} "
                f"{r['step_peak'] / MIB:>9.1f} {r['total'] / MIB:>9.1f} {ra:>13} {rt:>12} {r['seconds']:>7.2f} "
                f"{r['loss']:>8.4f}"
            )
        if base and "ckpt" in rows and "lora" in rows:
            ok_ckpt = rows["ckpt"]["activations"] <= 0.5 * base["activations"]
            ok_lora = rows["lora"]["total"] <= 0.6 * base["total"]
            lines.append(
                f"targets: checkpointing activations <= 0.5x plain: {'met' if ok_ckpt else 'NOT met'}; "
                f"LoRA total <= 0.6x plain: {'met' if ok_lora else 'NOT met'}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["b32", "l16"], choices=sorted(MODELS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", nargs="+", default=["qkv"])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA (CPU is always fp32)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    amp = args.device == "cuda" and not args.fp32
    if args.one:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads()))
        print(json.dumps(measure(*args.one, args.batch, args.rank, args.targets, args.device, amp)))
        return
    print(
        f"one training step (forward, backward, AdamW), batch {args.batch}, device {args.device}, "
        f"{'bf16 autocast' if amp else 'fp32'}, LoRA rank {args.rank} on {args.targets}; MiB; each in a fresh process"
    )
    results = []
    for model in args.models:
        for variant in args.variants:
            results.append(_one_process(args, model, variant))
            print(f"  done {model} {variant}: {results[-1]['seconds']:.1f}s", file=sys.stderr, flush=True)
    print(table(results))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
