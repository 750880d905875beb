"""The ViT paper's few-shot linear evaluation: regularised least squares on frozen features.

For ``k`` shots, ``k`` training images per class are drawn (per class, per seed); their features are
whitened with the support set's mean and standard deviation, a constant bias feature is appended,
and the ridge regression to ``{-1, 1}^K`` targets is solved in closed form (big_vision's recipe,
``evaluators/fewshot_lsr``): one eigendecomposition of the Gram matrix (``X^T X`` or ``X X^T``,
whichever is smaller) serves every L2 strength. The class with the largest output is the prediction.
Accuracy on the evaluation split is reported as mean ± standard deviation over the seeds.

Pure tensors in, numbers out: no network, no config, no files, so it is tested and timed on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vit_ft.errors import ConfigError

BIAS_CONSTANT = 100.0  # large, so the bias is almost unregularised (as in big_vision)
DEFAULT_L2 = 2.0**10
L2_GRID = tuple(2.0**i for i in range(-10, 21, 2))

Split = tuple[torch.Tensor, torch.Tensor]  # features [N, D], labels [N]


# -- the closed form --------------------------------------------------------------------------------
def _prepare(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = (x.double() - mean) / std
    return torch.cat([x, torch.full((x.shape[0], 1), BIAS_CONSTANT, dtype=x.dtype)], dim=1)


def ridge_cache(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Everything the solution for any L2 strength needs, from support features ``x`` [N, D]."""
    x = x.double()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True) + 1e-5
    xa = _prepare(x, mean, std)
    t = 2.0 * torch.nn.functional.one_hot(y.long(), num_classes).double() - 1.0
    n, d = xa.shape
    if n >= d:  # (X^T X + l2 I)^-1 X^T Y
        eigs, q = torch.linalg.eigh(xa.T @ xa)
        rhs, lhs = q.T @ (xa.T @ t), q
    else:  # X^T (X X^T + l2 I)^-1 Y
        eigs, q = torch.linalg.eigh(xa @ xa.T)
        rhs, lhs = q.T @ t, xa.T @ q
    return {"eigs": eigs, "rhs": rhs, "lhs": lhs, "mean": mean, "std": std}


def ridge_weights(cache: dict[str, torch.Tensor], l2: float) -> torch.Tensor:
    """``W`` [D+1, K] minimising ``|X W - Y|^2 + l2 |W|^2`` (X whitened, with the bias column)."""
    return cache["lhs"] @ (cache["rhs"] / (cache["eigs"][:, None] + float(l2)))


def ridge_accuracies(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    l2_regs: tuple[float, ...] | list[float],
) -> list[float]:
    """Test accuracy of the fit on ``(x_train, y_train)`` for each L2 strength."""
    cache = ridge_cache(x_train, y_train, num_classes)
    xt = _prepare(x_test, cache["mean"], cache["std"])
    out = []
    for l2 in l2_regs:
        pred = (xt @ ridge_weights(cache, l2)).argmax(1)
        out.append(float((pred == y_test.long()).double().mean()) if len(y_test) else float("nan"))
    return out


def sample_shots(labels: np.ndarray, shots: int, seed: int, num_classes: int) -> np.ndarray:
    """Row indices of ``shots`` examples of every class, drawn without replacement, per class."""
    rng = np.random.default_rng([int(seed), int(shots)])
    out = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < shots:
            raise ConfigError(f"class {c} has {len(rows)} examples, fewer than {shots} shots")
        out.append(rng.choice(rows, size=shots, replace=False))
    return np.sort(np.concatenate(out))


def select_l2(
    x_train: torch.Tensor, y_train: torch.Tensor, rows: np.ndarray, num_classes: int, val: Split | None = None
) -> float:
    """The grid value with the best accuracy on held-out data: ``val``, or else the training
    images outside the support set ``rows`` (none left: the default 2^10)."""
    if val is not None and len(val[1]):
        xh, yh = val
    else:
        rest = np.setdiff1d(np.arange(len(y_train)), rows)
        if len(rest) == 0:
            return DEFAULT_L2
        xh, yh = x_train[rest], y_train[rest]
    accs = ridge_accuracies(x_train[rows], y_train[rows], xh, yh, num_classes, L2_GRID)
    best = max(accs)
    # Ties: the strongest regularisation among the best (the most conservative fit).
    return max(l2 for l2, a in zip(L2_GRID, accs, strict=True) if a == best)


# -- the evaluation ---------------------------------------------------------------------------------
@dataclass
class FewshotResult:
    final: dict[str, float]  # fewshot/<k>shot/acc, .../acc_std (and .../log2_l2 with l2_reg=auto)
    per_seed: dict[str, list[float]]  # "<k>shot": accuracy of each seed
    l2_selected: dict[str, list[float]] | None  # "<k>shot": the L2 of each seed (l2_reg=auto only)


def fewshot_evaluation(
    train: Split,
    evaluation: Split,
    class_names: list[str],
    shots: list[int],
    seeds: int,
    l2_reg: float | str,
    base_seed: int = 0,
    val: Split | None = None,
) -> FewshotResult:
    """Accuracy on ``evaluation`` of ridge fits on ``shots`` train images per class, over ``seeds`` draws
    (seed ``base_seed + j``); ``l2_reg="auto"`` picks the L2 per draw with :func:`select_l2` on ``val``."""
    x_train, y_train = train
    x_eval, y_eval = evaluation
    k = len(class_names)
    counts = np.bincount(y_train.numpy(), minlength=k)
    smallest = int(counts.min())
    if max(shots) > smallest:
        c = int(counts.argmin())
        raise ConfigError(
            f"probe.shots={shots} asks for {max(shots)} images per class but class {class_names[c]!r} has "
            f"only {smallest} in the train split; use shot counts up to {smallest}"
        )
    auto = l2_reg == "auto"
    y_np = y_train.numpy()
    final: dict[str, float] = {}
    per_seed: dict[str, list[float]] = {}
    chosen: dict[str, list[float]] = {}
    for s in shots:
        accs, l2s = [], []
        for j in range(seeds):
            rows = sample_shots(y_np, s, base_seed + j, k)
            l2 = select_l2(x_train, y_train, rows, k, val) if auto else float(l2_reg)
            l2s.append(l2)
            accs.append(ridge_accuracies(x_train[rows], y_train[rows], x_eval, y_eval, k, [l2])[0])
        per_seed[f"{s}shot"] = accs
        chosen[f"{s}shot"] = l2s
        final[f"fewshot/{s}shot/acc"] = float(np.mean(accs))
        final[f"fewshot/{s}shot/acc_std"] = float(np.std(accs))
        if auto:
            final[f"fewshot/{s}shot/log2_l2"] = float(np.mean(np.log2(l2s)))
    return FewshotResult(final, per_seed, chosen if auto else None)
