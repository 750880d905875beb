"""What the analysis metrics add to a validation pass: the metrics of a validation before them vs with them.

    python benchmarks/bench_eval_metrics.py                      # 10,000 images, 1000 classes, CPU
    python benchmarks/bench_eval_metrics.py --device cuda

``old``: what every validation step did before (cross-entropy, top-1 and top-5 accuracy);
``old+new``: plus the confusion matrix, the calibration error and the reliability bins, with their
end-of-epoch compute (``AnalysisMetrics``, as ``ClassifierSteps`` runs it; and, for comparison, the
same from torchmetrics' stock classes). Both run
over the same random logits, batch by batch, best of ``--rounds``. The extra time per image is then
put against one ViT forward pass per image (``--model`` at ``--img-size``, random init, batch
``--forward-batch``): the share the new metrics add to a validation pass.
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
)

from vit_ft.models.metrics import ECE_BINS, AnalysisMetrics, ReliabilityBins


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=250, help="validation batch per device")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vit_base_patch32_384", help="timm name; '' skips the forward pass")
    p.add_argument("--img-size", type=int, default=384)
    p.add_argument("--forward-batch", type=int, default=8)
    p.add_argument("--forward-rounds", type=int, default=3)
    return p.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def metrics_pass(logits: torch.Tensor, y: torch.Tensor, k: int, batch: int, variant: str) -> float:
    """Seconds for one validation's metric work over ``logits`` (updates, then the epoch-end compute).

    ``old``: loss, top-1, top-5; ``new``: plus :class:`AnalysisMetrics`, as ``ClassifierSteps`` runs it;
    ``stock``: plus the same from torchmetrics' stock classes (``MulticlassConfusionMatrix``,
    ``MulticlassCalibrationError`` on the softmax probabilities) and the reliability bins."""
    dev = logits.device
    acc1 = MulticlassAccuracy(num_classes=k, top_k=1, average="micro").to(dev)
    acc5 = MulticlassAccuracy(num_classes=k, top_k=5, average="micro").to(dev)
    analysis = AnalysisMetrics(k).to(dev)
    confusion = MulticlassConfusionMatrix(num_classes=k, validate_args=False).to(dev)
    ece = MulticlassCalibrationError(num_classes=k, n_bins=ECE_BINS, norm="l1", validate_args=False).to(dev)
    bins = ReliabilityBins(ECE_BINS).to(dev)
    _sync(dev)
    t0 = time.perf_counter()
    for s in range(0, logits.shape[0], batch):
        lg, t = logits[s : s + batch], y[s : s + batch]
        F.cross_entropy(lg.float(), t)
        acc1.update(lg, t)
        acc5.update(lg, t)
        if variant == "new":
            analysis.update(lg, t)
        elif variant == "stock":
            probs = lg.float().softmax(-1)
            conf, pred = probs.max(dim=1)
            confusion.update(lg, t)
            ece.update(probs, t)
            bins.update(conf, pred == t)
    acc1.compute(), acc5.compute()
    if variant == "new":
        analysis.compute()
    elif variant == "stock":
        confusion.compute().cpu().numpy()
        ece.compute()
        bins.compute()
    _sync(dev)
    return time.perf_counter() - t0


def forward_seconds_per_image(args: argparse.Namespace, device: torch.device) -> float | None:
    if not args.model:
        return None
    net = timm.create_model(args.model, pretrained=False, img_size=args.img_size, num_classes=args.classes)
    net = net.to(device).eval()
    x = torch.randn(args.forward_batch, 3, args.img_size, args.img_size, device=device)
    best = float("inf")
    with torch.inference_mode():
        net(x)  # warm-up
        for _ in range(args.forward_rounds):
            _sync(device)
            t0 = time.perf_counter()
            net(x)
            _sync(device)
            best = min(best, time.perf_counter() - t0)
    return best / args.forward_batch


def main() -> None:
    args = _args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    # Logits of a model that is right about 3 times in 4, with a spread of confidences.
    y = torch.randint(0, args.classes, (args.images,), generator=g)
    logits = torch.randn(args.images, args.classes, generator=g) * 2
    logits[torch.arange(args.images), y] += 6 * torch.rand(args.images, generator=g)
    logits, y = logits.to(device), y.to(device)
    metrics_pass(logits, y, args.classes, args.batch, "new")  # warm-up
    best = {v: float("inf") for v in ("old", "new", "stock")}
    for _ in range(args.rounds):  # alternating, so a busy moment of the machine hits every variant
        for v in best:
            best[v] = min(best[v], metrics_pass(logits, y, args.classes, args.batch, v))
    old, both, stock = best["old"], best["new"], best["stock"]
    n = args.images
    print(f"validation metrics: {n} images, {args.classes} classes, batch {args.batch}, {device}")
    print(f"{'':<24}{'old':>12}{'old+new':>12}{'ratio':>10}")
    print(f"{'seconds':<24}{old:>12.4f}{both:>12.4f}{both / old:>9.2f}x")
    print(f"{'ms per 1000 images':<24}{1000 * old * 1000 / n:>12.2f}{1000 * both * 1000 / n:>12.2f}")
    print(
        f"(the same from torchmetrics' stock MulticlassConfusionMatrix, a K² bincount per batch, and "
        f"MulticlassCalibrationError on the [N, K] probabilities: {stock:.4f} s, {stock / old:.2f}x)"
    )
    fwd = forward_seconds_per_image(args, device)
    if fwd is not None:
        extra = (both - old) / n
        print(
            f"{args.model} at {args.img_size}, forward: {1000 * fwd:.2f} ms per image; the new metrics add "
            f"{1000 * extra:.4f} ms per image = {100 * extra / fwd:.4f}% of a validation pass "
            f"(all metrics: {100 * both / n / fwd:.4f}%)"
        )


if __name__ == "__main__":
    main()
