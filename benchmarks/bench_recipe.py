"""recipe=auto against recipe=paper on a small generated folder, at equal epochs, through the real CLI.

A folder of ``--n-train`` images per class (4 classes of coloured shapes on noisy backgrounds, the
quickstart's generator, ``--n-val`` per class for validation) and a tiny ViT from scratch
(ViT-Ti/8 at 32 px, 2 blocks). Each seed runs ``python train.py`` twice with the same command, ``recipe=auto``
(the default: the batch and warmup fit the data, the lr follows the batch) and ``recipe=paper`` (batch
512, 500 warmup steps, as configured); prints val/acc1 side by side with their ratio, and the line
recipe=auto printed.

    python benchmarks/bench_recipe.py                                   # 4 x 50 images, 10 epochs, 3 seeds
    python benchmarks/bench_recipe.py --optimizer sgd --seeds 0        # the paper's optimizer
    python benchmarks/bench_recipe.py --optimizer sgd --n-train 25 --pretrain-epochs 4  # fine-tune a pre-trained ViT
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=50, help="training images per class (4 classes)")
    p.add_argument("--n-val", type=int, default=25, help="validation images per class")
    p.add_argument("--epochs", type=int, default=10, help="trainer.max_epochs of both runs (the default: 10)")
    p.add_argument("--optimizer", default="adamw", help="optimizer config (its default lr_base)")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--depth", type=int, default=2, help="transformer blocks (ViT-Ti has 12)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for both runs")
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="first train the tiny ViT on a larger, separately drawn set of the same kind (4 x 300 images, "
        "labelled only round/angular; AdamW) for this many epochs; both recipes then fine-tune it from a zero-initialised head "
        "(model.weights=<that checkpoint> model.reset_head=true), as a real fine-tuning run starts",
    )
    return p.parse_args(argv)


def train(
    recipe: str, seed: int, data: Path, work: Path, args: argparse.Namespace, name: str | None = None
) -> tuple[float, str, float]:
    """One ``python train.py`` run: (val/acc1, the recipe/lr lines it printed, seconds)."""
    run_dir = work / (name or f"{recipe}-{seed}")
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"recipe={recipe}",
        f"seed={seed}",
        f"data.root={data}",
        "data.num_workers=0",
        "model=vit_tiny",
        f"model.img_size={args.img_size}",
        f"+model.timm_kwargs.depth={args.depth}",
        f"optimizer={args.optimizer}",
        f"trainer.max_epochs={args.epochs}",
        "trainer=cpu",
        "trainer.precision=32",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        "logger=none",
        "test=false",
        f"hydra.run.dir={run_dir}",
        *args.extra,
        *((f"model.weights={args.weights}", "model.reset_head=true") if args.weights else ()),
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}", "WANDB_MODE": "offline"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout + proc.stderr
    lines = [ln.split(" - ", 1)[-1] for ln in out.splitlines() if "recipe=auto:" in ln or "] - lr " in ln]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return float(metrics["value"]), "\n    ".join(lines), seconds


COARSE = {"circle": "round", "square": "round", "cross": "angular", "triangle": "angular"}


def coarse_copy(src: Path, dst: Path) -> Path:
    """``src``'s images under 2 coarse classes (:data:`COARSE`): features that separate the groups, not
    the 4 shapes, as a pre-training on another task would give."""
    import shutil

    for split in ("train", "val"):
        for cls, group in COARSE.items():
            (dst / split / group).mkdir(parents=True, exist_ok=True)
            for f in (src / split / cls).iterdir():
                shutil.copy(f, dst / split / group / f"{cls}_{f.name}")
    return dst


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    args = _args(argv)
    from vit_ft.data.quickstart import make_quickstart_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = Path(
            make_quickstart_dataset(str(work / "data"), n_train=args.n_train, n_val=args.n_val, size=48)
        )
        args.weights = None
        start = "from scratch"
        if args.pretrain_epochs:
            drawn = Path(make_quickstart_dataset(str(work / "drawn"), n_train=300, n_val=30, size=48, seed=1))
            source = coarse_copy(
                drawn, work / "source"
            )  # 2 coarse classes: fine-tuning must learn within them
            keep = (args.optimizer, args.epochs, args.extra)
            args.optimizer, args.epochs, args.extra = "adamw", args.pretrain_epochs, []
            acc, _, secs = train("auto", 0, source, work, args, name="pretrain")
            args.optimizer, args.epochs, args.extra = keep
            args.weights = str(work / "pretrain" / "checkpoints" / "last.ckpt")
            start = (
                f"pre-trained ({args.pretrain_epochs} epochs on 1200 other images labelled round/angular: "
                f"val/acc1 {acc:.3f}, {secs:.0f}s), zero-init head"
            )
        print(
            f"{4 * args.n_train} train / {4 * args.n_val} val images (4 classes), ViT-Ti/8 at {args.img_size} px, "
            f"{args.depth} blocks, {start}, optimizer={args.optimizer}, {args.epochs} epochs each\n"
        )
        for seed in args.seeds:
            auto, auto_lines, t_auto = train("auto", seed, data, work, args)
            paper, paper_lines, t_paper = train("paper", seed, data, work, args)
            if seed == args.seeds[0]:
                print(f"recipe=auto printed:\n    {auto_lines}\nrecipe=paper printed:\n    {paper_lines}\n")
                print(
                    f"{'seed':>4}  {'recipe=auto':>11}  {'recipe=paper':>12}  {'ratio':>6}  {'time auto/paper':>15}"
                )
            ratio = auto / paper if paper else float("inf")
            print(
                f"{seed:>4}  {auto:>11.3f}  {paper:>12.3f}  {ratio:>5.2f}x  {t_auto:>6.0f}s/{t_paper:.0f}s",
                flush=True,
            )
            rows.append((seed, auto, paper))
    a, p = statistics.mean(r[1] for r in rows), statistics.mean(r[2] for r in rows)
    print(f"{'mean':>4}  {a:>11.3f}  {p:>12.3f}  {a / p if p else float('inf'):>5.2f}x   (chance: 0.250)")
    return rows


if __name__ == "__main__":
    main()
