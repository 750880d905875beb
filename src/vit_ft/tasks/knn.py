"""The k-NN job (``experiment=knn``): features from the shared cache, DINO's weighted k-NN vote of
:mod:`vit_ft.probe.knn`, and the run's outputs (metrics.json, wandb, a table).

Features come from the same cache as linear probes and few-shot runs
(:func:`vit_ft.probe.extract.split_features`), so once they exist an evaluation takes seconds. The
train split is the neighbour bank and the eval split the queries; under DDP every rank holds all
features and evaluates its share of the query chunks, and the counts are summed (every rank votes on
all queries when the features came from the cache and no process group was started).
"""

from __future__ import annotations

import logging
import math
import time

import torch
from omegaconf import DictConfig, OmegaConf

from vit_ft.errors import ConfigError
from vit_ft.probe.extract import split_features, use_feature_type
from vit_ft.probe.knn import effective_ks, knn_evaluate, knn_metrics
from vit_ft.probe.settings import KnnSettings
from vit_ft.tasks.common import build
from vit_ft.tasks.outputs import feature_metric, finish_wandb, held_out_split, publish_feature_evaluation
from vit_ft.tasks.plan import make_plan

log = logging.getLogger("vit_ft")


def knn(cfg: DictConfig) -> float | None:
    """``experiment=knn``: top-1 (and top-5) accuracy per k; metrics.json and wandb; returns the
    ``optimized_metric`` (``knn/k20/acc1``)."""
    settings = KnnSettings.from_dict(OmegaConf.to_container(cfg.probe, resolve=True))
    loggers: list = []
    try:
        datamodule, model, trainer, loggers = build(make_plan(cfg, resume=False))
        eval_split = held_out_split(settings.eval_split, datamodule.splits)
        use_feature_type(model, settings.features, head=False)
        t0 = time.perf_counter()
        feats, report = split_features(model, datamodule, ["train", eval_split], settings, trainer)
        feature_seconds = time.perf_counter() - t0
        tr, ev = feats["train"], feats[eval_split]
        if len(tr) == 0:
            raise ConfigError("k-NN has no neighbours: the train split has no usable image; check data.root")
        class_names = list(datamodule.class_names)
        ks = effective_ks(settings.k, len(tr))
        t1 = time.perf_counter()
        # Shard the queries over ranks when they can sum their counts; features read from the cache start
        # no process group (no extraction ran), and then every rank votes on all queries.
        world = int(trainer.world_size) if torch.distributed.is_initialized() else 1
        counts = knn_evaluate(
            tr.features,
            tr.labels,
            ev.features,
            ev.labels,
            len(class_names),
            ks,
            settings.temperature,
            chunk=settings.query_chunk,
            rank=int(trainer.global_rank) if world > 1 else 0,
            world=world,
            device=trainer.strategy.root_device,
        )
        if world > 1:
            counts = {k: trainer.strategy.reduce(c, reduce_op="sum") for k, c in counts.items()}
        counts = {k: c.cpu() for k, c in counts.items()}
        final = knn_metrics(counts, len(ev), len(class_names))
        knn_seconds = time.perf_counter() - t1

        metric = feature_metric(cfg, final, f"knn/k{min(ks, key=lambda k: abs(k - 20))}/acc1")
        value = final[metric]
        if trainer.is_global_zero:
            details = {
                "k": ks,
                "k_asked": settings.k,
                "temperature": settings.temperature,
                "eval_split": eval_split,
                "eval_images": len(ev),
                "bank_images": len(tr),
                "features": settings.features,
            }
            publish_feature_evaluation(
                cfg,
                loggers,
                model.preprocessing,
                datamodule,
                final=final,
                metric=metric,
                section=("knn", details),
                features=report,
                seconds={"features": feature_seconds, "knn": knn_seconds},
                table=_table(final, ks, eval_split, len(ev), len(tr), knn_seconds),
                summary=[f"{metric:<14}: {value:.4f}"],
            )
        return value if math.isfinite(value) else None
    finally:
        finish_wandb()


def _table(final: dict, ks: list[int], split: str, n: int, bank: int, seconds: float) -> str:
    lines = ["", f"k-NN accuracy on {split} ({n} images; {bank} train images as neighbours):"]
    for k in ks:
        acc5 = final.get(f"knn/k{k}/acc5")
        top5 = f"   top-5 {100 * acc5:6.2f}" if acc5 is not None else ""
        lines.append(f"  k={k:<4} top-1 {100 * final[f'knn/k{k}/acc1']:6.2f}{top5}")
    lines.append(f"  (voted in {seconds:.2f}s)")
    return "\n".join(lines)
