"""A linear probe with cached features vs with the frozen backbone in the loop, and the k-NN
evaluation on the same cached features, in one run.

    python benchmarks/bench_probe.py                       # small ViT, generated images, ~2 min on 2 cores
    python benchmarks/bench_probe.py --backbone vit_base_patch32_384 --img-size 384 \\
        --weights google/vit-base-patch32-384 --root /path/to/images --batch-size 512 --workers 8

Both probes train the same head (same init, optimizer, schedule, batches of the same size) for
``--epochs`` epochs with Lightning and validate every epoch; the in-loop probe reads images with
the eval transform (no augmentation), so both see the same inputs. Printed: wall time of each
(the cached one split into feature extraction and head training), their ratio, the validation
accuracy of each, and the marginal cost of ``--extra-epochs`` more probe epochs on each path. The
k-NN column (``experiment=knn``: DINO's weighted vote, k = 10, 20, 100, 200 in one pass) votes on the
cached features: seconds per evaluation (median of ``--knn-repeats``) and its k=20 top-1.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings

import lightning as L
import torch

from vit_ft.data import ImageFolderDataModule
from vit_ft.models.classifier import ViTClassifier
from vit_ft.probe.extract import split_features
from vit_ft.probe.features import clear_memory_cache
from vit_ft.probe.knn import DEFAULT_K, effective_ks, knn_evaluate, knn_metrics
from vit_ft.probe.linear import FeatureDataModule, LinearProbe
from vit_ft.probe.settings import LinearProbeSettings


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="vit_small_patch16_224")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8, help="timm patch_size (ignored with --weights)")
    p.add_argument(
        "--depth", type=int, default=6, help="timm depth override (random init only; 0: the model's)"
    )
    p.add_argument("--weights", default=None, help="hub id, timm tag or file; default: random init")
    p.add_argument("--root", default=None, help="image folder; default: generated shapes in a temp dir")
    p.add_argument("--n-train", type=int, default=60, help="generated images per class (train)")
    p.add_argument("--n-val", type=int, default=20, help="generated images per class (val)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--extra-epochs", type=int, default=20, help="measure the cost of this many more epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batchnorm", action="store_true", help="BatchNorm without affine before the head")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--knn-repeats", type=int, default=5, help="k-NN evaluations timed (median reported)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    return p.parse_args()


def _classifier(a: argparse.Namespace, class_names: list[str]) -> ViTClassifier:
    torch.manual_seed(0)
    kwargs = {}
    if a.weights is None:
        kwargs["patch_size"] = a.patch_size
        if a.depth:
            kwargs["depth"] = a.depth
    return ViTClassifier(
        backbone=a.backbone,
        weights=a.weights,
        img_size=a.img_size,
        class_names=class_names,
        freeze_backbone=True,
        reset_head=True,
        timm_kwargs=kwargs,
        optimizer={"name": "sgd", "lr": a.lr, "momentum": 0.9, "weight_decay": 0.0},
        scheduler={"warmup_steps": 0, "decay": "cosine"},
    )


def _datamodule(a: argparse.Namespace, root: str, pre) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(
        root=root, batch_size=a.batch_size, num_workers=a.workers, persistent_workers=a.workers > 0
    )
    dm.setup()
    dm.configure_preprocessing(pre)
    dm.train_with_eval_transform()  # in-loop probe without augmentation
    return dm


def _trainer(a: argparse.Namespace, epochs: int) -> L.Trainer:
    return L.Trainer(
        accelerator=a.accelerator,
        devices=1,
        precision=a.precision,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _fit(a, module, dm, epochs: int) -> tuple[float, float]:
    L.seed_everything(0, verbose=False)
    trainer = _trainer(a, epochs)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - t, float(trainer.callback_metrics["val/acc1"])


def main() -> None:
    a = _args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if a.precision is None:
        a.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    tmp = tempfile.TemporaryDirectory(prefix="bench-probe-")
    root = a.root
    if root is None:
        from vit_ft.data.quickstart import make_quickstart_dataset

        root = make_quickstart_dataset(os.path.join(tmp.name, "shapes"), n_train=a.n_train, n_val=a.n_val)
    probe_dm = ImageFolderDataModule(root=root, batch_size=a.batch_size, num_workers=0)
    probe_dm.setup()
    class_names = list(probe_dm.class_names)

    def fresh() -> tuple[ViTClassifier, ImageFolderDataModule]:
        clf = _classifier(a, class_names)
        return clf, _datamodule(a, root, clf.preprocessing)

    clf, dm = fresh()
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])
    print(
        f"{a.backbone} at {a.img_size}px ({sum(p.numel() for p in clf.model.parameters()) / 1e6:.1f}M params), "
        f"{len(class_names)} classes, train {n_train} / val {n_val} images, batch {a.batch_size}, "
        f"{a.epochs} epochs, {a.precision}, torch threads {torch.get_num_threads()}",
        flush=True,
    )

    # Cached: one extraction pass (to disk, as a real run does), then the head on features.
    settings = LinearProbeSettings(cache_dir=os.path.join(tmp.name, "features"), batchnorm=a.batchnorm)
    clear_memory_cache()
    trainer = _trainer(a, 1)
    t0 = time.perf_counter()
    feats, _ = split_features(clf, dm, ["train", "val"], settings, trainer)
    extract_s = time.perf_counter() - t0
    head_s, acc_cached = _fit(
        a, LinearProbe(clf, batchnorm=a.batchnorm), FeatureDataModule(dm, feats), a.epochs
    )
    cached_s = extract_s + head_s

    # k-NN on the same cached features: train = the neighbour bank, val = the queries.
    tr, va = feats["train"], feats["val"]
    ks = effective_ks(DEFAULT_K, len(tr))
    device = "cuda" if torch.cuda.is_available() and a.accelerator != "cpu" else "cpu"
    knn_times = []
    for _ in range(max(1, a.knn_repeats)):
        t0 = time.perf_counter()
        counts = knn_evaluate(
            tr.features, tr.labels, va.features, va.labels, len(class_names), ks, device=device
        )
        counts = {k: c.cpu() for k, c in counts.items()}  # waits for the device
        knn_times.append(time.perf_counter() - t0)
    knn_s = sorted(knn_times)[len(knn_times) // 2]
    knn_k = min(ks, key=lambda k: abs(k - 20))
    acc_knn = knn_metrics(counts, len(va), len(class_names))[f"knn/k{knn_k}/acc1"]

    clf2, dm2 = fresh()
    loop_s, acc_loop = _fit(a, LinearProbe(clf2, batchnorm=a.batchnorm, in_loop=True), dm2, a.epochs)

    # Marginal cost of more epochs: cached from the cache (no extraction), in-loop measured per epoch.
    clf3, dm3 = fresh()
    t0 = time.perf_counter()
    feats3, rep = split_features(clf3, dm3, ["train", "val"], settings, _trainer(a, 1))
    reload_s = time.perf_counter() - t0
    assert {r["source"] for r in rep.values()} <= {"memory", "disk"}
    base_s, _ = _fit(a, LinearProbe(clf3, batchnorm=a.batchnorm), FeatureDataModule(dm3, feats3), a.epochs)
    clf4, dm4 = fresh()
    feats4, _ = split_features(clf4, dm4, ["train", "val"], settings, _trainer(a, 1))
    more_s, _ = _fit(
        a, LinearProbe(clf4, batchnorm=a.batchnorm), FeatureDataModule(dm4, feats4), a.epochs + a.extra_epochs
    )
    cached_per_epoch = max(0.0, more_s - base_s) / a.extra_epochs
    loop_per_epoch = loop_s / a.epochs

    w = 34
    print()
    print(f"{'':{w}}{'cached':>12}{'in the loop':>14}{'k-NN (cached)':>16}")
    print(f"{'feature extraction (once)':{w}}{extract_s:>11.2f}s{'-':>14}{'(shared)':>16}")
    print(
        f"{f'evaluation: probe {a.epochs} epochs / k-NN':{w}}{head_s:>11.2f}s{loop_s:>13.2f}s{knn_s:>15.3f}s"
    )
    print(f"{'total wall time':{w}}{cached_s:>11.2f}s{loop_s:>13.2f}s{extract_s + knn_s:>15.2f}s")
    print(f"{f'val/acc1 (k-NN: k={knn_k})':{w}}{acc_cached:>12.4f}{acc_loop:>14.4f}{acc_knn:>16.4f}")
    print(f"{'extra cost per probe epoch':{w}}{cached_per_epoch:>11.3f}s{loop_per_epoch:>13.3f}s{'-':>16}")
    print(f"{'fingerprint + cache lookup':{w}}{reload_s:>11.2f}s{'-':>14}{'-':>16}")
    print()
    print(
        f"speed-up {loop_s / cached_s:.1f}x at {a.epochs} epochs (goal >= 5x); accuracy difference "
        f"{100 * abs(acc_cached - acc_loop):.1f} points (goal <= 1); each extra epoch costs "
        f"{cached_per_epoch:.3f}s cached vs {loop_per_epoch:.3f}s in the loop "
        f"({loop_per_epoch / max(cached_per_epoch, 1e-3):.0f}x)"
    )
    print(
        f"k-NN on the cached features: {knn_s:.3f}s per evaluation (k = {', '.join(map(str, ks))} in one pass, "
        f"{len(va)} queries x {len(tr)} neighbours on {device}) vs {head_s:.2f}s for the cached linear "
        f"probe's {a.epochs} epochs ({head_s / max(knn_s, 1e-6):.0f}x)"
    )
    tmp.cleanup()


if __name__ == "__main__":
    main()
