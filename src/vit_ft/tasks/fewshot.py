"""The ViT paper's few-shot linear evaluation: regularised least squares on frozen features.

For ``k`` shots, ``k`` training images per class are drawn (per class, per seed); their features are
whitened with the support set's mean and standard deviation, a constant bias feature is appended,
and the ridge regression to ``{-1, 1}^K`` targets is solved in closed form (big_vision's recipe,
``evaluators/fewshot_lsr``): one eigendecomposition of the Gram matrix (``X^T X`` or ``X X^T``,
whichever is smaller) serves every L2 strength. The class with the largest output is the prediction.
Accuracy on the evaluation split is reported as mean ± standard deviation over the seeds.

Features come from the same cache as linear probes (:func:`vit_ft.models.probe.split_features`),
so once they exist a full evaluation takes seconds.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from vit_ft.errors import ConfigError
from vit_ft.models.probe import ProbeSettings, split_features, use_feature_type
from vit_ft.tasks.common import build
from vit_ft.tasks.outputs import finish_wandb, print_summary, write_metrics, write_resolved_config

log = logging.getLogger("vit_ft")

BIAS_CONSTANT = 100.0  # large, so the bias is almost unregularised (as in big_vision)
DEFAULT_L2 = 2.0**10
L2_GRID = tuple(2.0**i for i in range(-10, 21, 2))


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


def ridge_predict(cache: dict[str, torch.Tensor], w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (_prepare(x, cache["mean"], cache["std"]) @ w).argmax(1)


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


# -- settings ------------------------------------------------------------------------------------------
def _settings(extra: dict[str, Any]) -> tuple[list[int], int, float | str, str | None]:
    shots = extra.get("shots", [1, 5, 10, 25])
    shots = [shots] if isinstance(shots, int) else list(shots or [])
    if not shots or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shots):
        raise ConfigError(f"probe.shots={shots!r} must be a list of positive integers, e.g. [1,5,10,25]")
    seeds = extra.get("seeds", 5)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"probe.seeds={seeds!r} must be a positive integer (how many draws of the shots)")
    l2 = extra.get("l2_reg", DEFAULT_L2)
    if l2 != "auto" and (isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 > 0):
        raise ConfigError(f"probe.l2_reg={l2!r} must be a positive number (default 1024) or auto")
    eval_split = extra.get("eval_split")
    return sorted(set(shots)), seeds, l2, eval_split


# -- the job -------------------------------------------------------------------------------------------
def fewshot(cfg: Any) -> float | None:
    """``experiment=fewshot``: accuracies per shot count; metrics.json and wandb; returns the
    ``optimized_metric`` (``fewshot/<k>shot/acc``)."""
    settings = ProbeSettings.from_config(cfg.get("probe"))
    shots, n_seeds, l2_cfg, eval_split = _settings(settings.extra)
    loggers: list = []
    try:
        datamodule, model, trainer, loggers = build(cfg)
        splits = datamodule.splits
        if eval_split is None:
            eval_split = "test" if "test" in splits else "val"
        if eval_split not in splits or eval_split == "train":
            raise ConfigError(
                f"probe.eval_split={eval_split!r} is not a held-out split of this data (it has {sorted(splits)})"
            )
        need = ["train", eval_split]
        select_on_val = l2_cfg == "auto" and eval_split != "val" and "val" in splits
        if select_on_val:
            need.append("val")
        use_feature_type(model, settings.features)
        t0 = time.perf_counter()
        feats, report = split_features(model, datamodule, need, settings, trainer)
        feature_seconds = time.perf_counter() - t0
        class_names = list(datamodule.class_names)
        k = len(class_names)
        tr = feats["train"]
        counts = np.bincount(tr.labels.numpy(), minlength=k)
        smallest = int(counts.min())
        if max(shots) > smallest:
            c = int(counts.argmin())
            raise ConfigError(
                f"probe.shots={shots} asks for {max(shots)} images per class but class {class_names[c]!r} has "
                f"only {smallest} in the train split; use shot counts up to {smallest}"
            )

        t1 = time.perf_counter()
        xtr, ytr = tr.features, tr.labels
        xev, yev = feats[eval_split].features, feats[eval_split].labels
        ytr_np = ytr.numpy()
        base_seed = int(cfg.get("seed") or 0)
        final: dict[str, float] = {}
        per_seed: dict[str, list[float]] = {}
        chosen: dict[str, list[float]] = {}
        for s in shots:
            accs, l2s = [], []
            for j in range(n_seeds):
                rows = sample_shots(ytr_np, s, base_seed + j, k)
                l2 = DEFAULT_L2 if l2_cfg == "auto" else float(l2_cfg)
                if l2_cfg == "auto":
                    l2 = _select_l2(xtr, ytr, rows, feats.get("val") if select_on_val else None, k)
                l2s.append(l2)
                accs.append(ridge_accuracies(xtr[rows], ytr[rows], xev, yev, k, [l2])[0])
            per_seed[f"{s}shot"] = accs
            chosen[f"{s}shot"] = l2s
            final[f"fewshot/{s}shot/acc"] = float(np.mean(accs))
            final[f"fewshot/{s}shot/acc_std"] = float(np.std(accs))
            if l2_cfg == "auto":
                final[f"fewshot/{s}shot/log2_l2"] = float(np.mean(np.log2(l2s)))
        solve_seconds = time.perf_counter() - t1

        metric = str(cfg.get("optimized_metric") or "")
        if metric not in final:
            metric = f"fewshot/{max(shots)}shot/acc"
        value = final[metric]
        output_dir = str(cfg.paths.output_dir)
        if trainer.is_global_zero:
            write_resolved_config(cfg, output_dir, loggers, model.preprocessing, class_names)
            for lg in loggers:
                lg.log_metrics(final, step=0)
                if hasattr(lg, "finalize"):
                    lg.finalize("success")
            payload = {
                "optimized_metric": metric,
                "value": value,
                "final": final,
                "fewshot": {
                    "shots": shots,
                    "seeds": n_seeds,
                    "l2_reg": l2_cfg,
                    "l2_selected": chosen if l2_cfg == "auto" else None,
                    "eval_split": eval_split,
                    "eval_images": len(yev),
                    "per_seed": per_seed,
                    "features": settings.features,
                },
                "features": report,
                "seconds": {"features": round(feature_seconds, 3), "solve": round(solve_seconds, 3)},
                "status": "completed",
                "bad_images": datamodule.bad_image_report()
                if hasattr(datamodule, "bad_image_report")
                else None,
                "run_dir": output_dir,
            }
            write_metrics(output_dir, payload)
            _print_table(final, shots, n_seeds, eval_split, len(yev), solve_seconds)
            print_summary(output_dir, [], loggers)
        return value if math.isfinite(value) else None
    finally:
        finish_wandb()


def _select_l2(xtr: torch.Tensor, ytr: torch.Tensor, rows: np.ndarray, val: Any, num_classes: int) -> float:
    """The grid value with the best accuracy on held-out data: the val split, or else the training
    images outside the support set (none left: the default 2^10)."""
    if val is not None and len(val):
        xh, yh = val.features, val.labels
    else:
        rest = np.setdiff1d(np.arange(len(ytr)), rows)
        if len(rest) == 0:
            return DEFAULT_L2
        xh, yh = xtr[rest], ytr[rest]
    accs = ridge_accuracies(xtr[rows], ytr[rows], xh, yh, num_classes, L2_GRID)
    best = max(accs)
    # Ties: the strongest regularisation among the best (the most conservative fit).
    return max(l2 for l2, a in zip(L2_GRID, accs, strict=True) if a == best)


def _print_table(final: dict, shots: list[int], seeds: int, split: str, n: int, seconds: float) -> None:
    lines = ["", f"few-shot accuracy on {split} ({n} images), mean ± std over {seeds} seed(s):"]
    for s in shots:
        acc, std = final[f"fewshot/{s}shot/acc"], final[f"fewshot/{s}shot/acc_std"]
        lines.append(f"  {s:>3}-shot  {100 * acc:6.2f} ± {100 * std:5.2f}")
    lines.append(f"  (solved in {seconds:.2f}s)")
    print("\n".join(lines), flush=True)
