"""``python train.py``: fit (and test, when the data has a test split) one config, or a linear probe on
its frozen features, or the few-shot evaluation; write ``metrics.json`` and ``val_predictions.csv``
(the final model on val); return ``optimized_metric``."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from vit_ft.probe.linear import prepare_linear_probe
from vit_ft.probe.settings import LinearProbeSettings
from vit_ft.tasks.common import build
from vit_ft.tasks.fewshot import fewshot
from vit_ft.tasks.outputs import (
    finish_wandb,
    predictions_and_analysis,
    print_summary,
    to_float,
    write_metrics,
    write_report,
    write_resolved_config,
)


def checkpoint_paths(trainer: L.Trainer) -> tuple[Any, str | None]:
    """The checkpoint callback that monitors a metric, and the path of the latest checkpoint."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    latest = [c for c in trainer.checkpoint_callbacks if not getattr(c, "monitor", None)]
    last = next((c.best_model_path for c in latest if c.best_model_path), None)
    if last is None:
        last = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None)
    return (monitored[0] if monitored else None), last


def train(cfg: DictConfig) -> float | None:
    if (cfg.get("probe") or {}).get("mode") == "fewshot":  # closed-form few-shot: its own task
        return fewshot(cfg)
    loggers: list = []
    try:
        datamodule, model, trainer, loggers = build(cfg)
        if cfg.get("probe") is not None:  # linear probe, on cached features by default
            settings = LinearProbeSettings.from_dict(OmegaConf.to_container(cfg.probe, resolve=True))
            model, datamodule = prepare_linear_probe(
                settings,
                model,
                datamodule,
                trainer,
                ckpt_path=cfg.get("ckpt_path"),
                with_test=bool(cfg.get("test")),
            )
        output_dir = str(cfg.paths.output_dir)
        if trainer.is_global_zero:
            write_resolved_config(cfg, output_dir, loggers, model.preprocessing, datamodule.class_names)
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        interrupted = bool(trainer.interrupted)

        ckpt_cb, last_path = checkpoint_paths(trainer)
        best_path = getattr(ckpt_cb, "best_model_path", "") or None
        final = {k: to_float(v) for k, v in trainer.callback_metrics.items()}
        analysis, predictions_path = None, None
        if not interrupted:  # the final model on val (before testing loads the best checkpoint)
            with model.ema_weights_for("eval"):  # the EMA weights when model.ema.use_for=eval
                analysis, predictions_path = predictions_and_analysis(
                    trainer, model, datamodule, "val", output_dir
                )
        test_metrics: dict[str, float | None] = {}
        if cfg.get("test") and "test" in (datamodule.splits or {}):
            res = trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
            test_metrics = {k: to_float(v) for k, v in (res[0] if res else {}).items()}

        metric_name = str(cfg.get("optimized_metric") or "val/acc1")
        best_score = to_float(getattr(ckpt_cb, "best_model_score", None)) if ckpt_cb else None
        monitored = getattr(ckpt_cb, "monitor", None) if ckpt_cb else None
        value = best_score if monitored == metric_name and best_score is not None else final.get(metric_name)
        if trainer.is_global_zero:
            payload = {
                "optimized_metric": metric_name,
                "value": value,
                "best": {"metric": monitored, "score": best_score, "checkpoint": best_path},
                "final": final,
                "test": test_metrics,
                "checkpoints": {"best": best_path, "last": last_path},
                "global_step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "status": "interrupted" if interrupted else "completed",
                "bad_images": datamodule.bad_image_report(),
                "run_dir": output_dir,
                "analysis": analysis,
            }
            write_metrics(output_dir, payload)
            report = write_report(output_dir, loggers)
            print_summary(
                output_dir,
                [
                    f"{metric_name:<14}: {value}",
                    f"best checkpoint: {best_path}",
                    f"last checkpoint: {last_path}",
                    *([f"val predictions: {predictions_path}"] if predictions_path else []),
                    f"report        : {report}",
                ],
                loggers,
            )
        if value is not None and not math.isfinite(value):
            return None
        return value
    finally:
        finish_wandb()
