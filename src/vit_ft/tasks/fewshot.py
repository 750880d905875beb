"""The few-shot job (``experiment=fewshot``): features from the shared cache, the closed-form
ridge solve of :mod:`vit_ft.probe.ridge`, and the run's outputs (metrics.json, wandb, a table).

Features come from the same cache as linear probes (:func:`vit_ft.probe.extract.split_features`),
so once they exist a full evaluation takes seconds.
"""

from __future__ import annotations

import logging
import math
import time

from omegaconf import DictConfig, OmegaConf

from vit_ft.probe.extract import split_features, use_feature_type
from vit_ft.probe.ridge import fewshot_evaluation
from vit_ft.probe.settings import FewshotSettings
from vit_ft.tasks.common import build
from vit_ft.tasks.outputs import feature_metric, finish_wandb, held_out_split, publish_feature_evaluation
from vit_ft.tasks.plan import make_plan

log = logging.getLogger("vit_ft")


# -- the job -------------------------------------------------------------------------------------------
def fewshot(cfg: DictConfig) -> float | None:
    """``experiment=fewshot``: accuracies per shot count; metrics.json and wandb; returns the
    ``optimized_metric`` (``fewshot/<k>shot/acc``)."""
    settings = FewshotSettings.from_dict(OmegaConf.to_container(cfg.probe, resolve=True))
    shots, n_seeds, l2_cfg, eval_split = settings.shots, settings.seeds, settings.l2_reg, settings.eval_split
    loggers: list = []
    try:
        datamodule, model, trainer, loggers = build(make_plan(cfg, resume=False))
        splits = datamodule.splits
        eval_split = held_out_split(eval_split, splits)
        need = ["train", eval_split]
        select_on_val = l2_cfg == "auto" and eval_split != "val" and "val" in splits
        if select_on_val:
            need.append("val")
        use_feature_type(model, settings.features, head=False)
        t0 = time.perf_counter()
        feats, report = split_features(model, datamodule, need, settings, trainer)
        feature_seconds = time.perf_counter() - t0
        class_names = list(datamodule.class_names)
        t1 = time.perf_counter()
        tr, ev = feats["train"], feats[eval_split]
        val = feats["val"] if select_on_val else None
        result = fewshot_evaluation(
            (tr.features, tr.labels),
            (ev.features, ev.labels),
            class_names,
            shots,
            n_seeds,
            l2_cfg,
            base_seed=int(cfg.get("seed") or 0),
            val=(val.features, val.labels) if val is not None else None,
        )
        final = result.final
        yev = ev.labels
        solve_seconds = time.perf_counter() - t1

        metric = feature_metric(cfg, final, f"fewshot/{max(shots)}shot/acc")
        value = final[metric]
        if trainer.is_global_zero:
            details = {
                "shots": shots,
                "seeds": n_seeds,
                "l2_reg": l2_cfg,
                "l2_selected": result.l2_selected,
                "eval_split": eval_split,
                "eval_images": len(yev),
                "per_seed": result.per_seed,
                "features": settings.features,
            }
            publish_feature_evaluation(
                cfg,
                loggers,
                model.preprocessing,
                datamodule,
                final=final,
                metric=metric,
                section=("fewshot", details),
                features=report,
                seconds={"features": feature_seconds, "solve": solve_seconds},
                table=_table(final, shots, n_seeds, eval_split, len(yev), solve_seconds),
                summary=[],
            )
        return value if math.isfinite(value) else None
    finally:
        finish_wandb()


def _table(final: dict, shots: list[int], seeds: int, split: str, n: int, seconds: float) -> str:
    lines = ["", f"few-shot accuracy on {split} ({n} images), mean ± std over {seeds} seed(s):"]
    for s in shots:
        acc, std = final[f"fewshot/{s}shot/acc"], final[f"fewshot/{s}shot/acc_std"]
        lines.append(f"  {s:>3}-shot  {100 * acc:6.2f} ± {100 * std:5.2f}")
    lines.append(f"  (solved in {seconds:.2f}s)")
    return "\n".join(lines)
