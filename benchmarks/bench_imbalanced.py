"""Imbalanced classes: what ``data.sampler=balanced`` and ``model.class_weights=balanced`` do to the
mean per-class accuracy (``val/acc1_macro``) on a generated 60:6:6 folder with a balanced val split.

    PYTHONPATH=src python benchmarks/bench_imbalanced.py [--epochs 6] [--train 60 6 6] [--val 30]

Three ``train.py`` configs (a tiny ViT from scratch, on the CPU), in process, on the same folder and
seed: plain, ``data.sampler=balanced``, ``model.class_weights=balanced``; printed side by side with the
best ``val/acc1_macro`` and ``val/acc1`` of each and the ratio to plain. The classes differ by
colour, with noise enough that they overlap: plain training leans to the large class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

CLASSES = ["common", "rare_a", "rare_b"]
# Mean colour per class (RGB in [0, 1]): the classes lie on a line, the common one in the middle.
MEANS = np.array([[0.5, 0.5, 0.5], [0.38, 0.5, 0.62], [0.62, 0.5, 0.38]])


def imbalanced_images(
    counts: list[int], size: int = 32, seed: int = 0, spread: float = 0.06, noise: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images [N, size, size, 3], int64 labels [N])``: ``counts[c]`` images of class ``c``, each
    its class' mean colour plus a per-image colour offset (``spread``) and pixel noise (``noise``)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    offset = rng.normal(0, spread, (len(labels), 1, 1, 3))
    pixels = rng.normal(0, noise, (len(labels), size, size, 3))
    x = MEANS[labels][:, None, None, :] + offset + pixels
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8), labels


def make_imbalanced_folder(
    root: str, train: list[int] = (60, 6, 6), val: int = 30, size: int = 32, seed: int = 0
) -> str:
    """``root/{train,val}/<class>/*.png``: ``train`` images per class, a balanced val split."""
    from PIL import Image

    for split, counts, s in (("train", list(train), seed), ("val", [val] * len(train), seed + 1)):
        images, labels = imbalanced_images(counts, size, s)
        for i, (img, y) in enumerate(zip(images, labels, strict=True)):
            d = os.path.join(root, split, CLASSES[y])
            os.makedirs(d, exist_ok=True)
            Image.fromarray(img).save(os.path.join(d, f"{i:04d}.png"))
    return root


VARIANTS = {
    "plain": [],
    "sampler": ["data.sampler=balanced"],
    "weights": ["model.class_weights=balanced"],
}


def run(root: str, out: str, extra: list[str], epochs: int, seed: int) -> dict:
    """One ``train.py`` config in process; its metrics.json."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from vit_ft.tasks.train import train

    conf = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")
    overrides = [
        f"data.root={root}",
        f"paths.output_dir={out}",
        "logger=none",
        "model=vit_tiny",
        "model.img_size=32",
        "+model.timm_kwargs.depth=2",
        "trainer=cpu",
        "trainer.precision=32",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0",
        f"trainer.max_epochs={epochs}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.hflip=0",
        "data.train_scale=[0.5,1.0]",
        "optimizer=adamw",
        "optimizer.lr=0.002",
        "scheduler.warmup_steps=5",
        "monitor=val/acc1_macro",
        "test=false",
        "callbacks.run_report=null",
        f"seed={seed}",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    train(cfg)
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train", type=int, nargs="+", default=[60, 6, 6])
    ap.add_argument("--val", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_imbalanced_folder(os.path.join(tmp, "data"), args.train, args.val)
        rows = []
        for name, extra in VARIANTS.items():
            t0 = time.perf_counter()
            m = run(root, os.path.join(tmp, name), extra, args.epochs, args.seed)
            macro = m["best"]["score"]
            acc1 = m["final"].get("val/acc1")
            rows.append((name, macro, acc1, time.perf_counter() - t0))
    base = rows[0][1]
    print(
        f"train {':'.join(map(str, args.train))}, val {args.val} per class, {args.epochs} epochs, seed {args.seed}"
    )
    print(
        f"{'variant':<10} {'best val/acc1_macro':>20} {'ratio to plain':>15} {'final val/acc1':>15} {'time':>7}"
    )
    for name, macro, acc1, dt in rows:
        ratio = macro / base if base else float("nan")
        print(f"{name:<10} {macro:>20.3f} {ratio:>15.2f} {acc1:>15.3f} {dt:>6.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
