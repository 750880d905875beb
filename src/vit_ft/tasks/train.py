"""``python train.py``: fit (and test, when the data has a test split) one config, or a linear probe on
its frozen features, or the few-shot or k-NN evaluation; write ``metrics.json`` and ``val_predictions.csv``
(the final model on val); return ``optimized_metric``."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_ft.errors import ConfigError
from vit_ft.models.load_checkpoint import load_classifier
from vit_ft.probe.linear import prepare_linear_probe
from vit_ft.probe.settings import LinearProbeSettings
from vit_ft.tasks.common import build, record_run_failure
from vit_ft.tasks.fewshot import fewshot
from vit_ft.tasks.knn import knn
from vit_ft.tasks.outputs import (
    evaluate_extra_sets,
    extra_summary_lines,
    finish_wandb,
    predictions_and_analysis,
    prepare_extra_eval,
    print_summary,
    to_float,
    write_metrics,
    write_report,
    write_resolved_config,
)
from vit_ft.tasks.plan import RunPlan, make_plan
from vit_ft.tasks.resume import wandb_run_id
from vit_ft.tasks.run_lock import run_dir_lock
from vit_ft.training.nonfinite import nonfinite_summary
from vit_ft.training.preemption import Preempted

log = logging.getLogger("vit_ft")


def checkpoint_paths(trainer: L.Trainer) -> tuple[Any, str | None]:
    """The checkpoint callback that monitors a metric, and the path of the latest checkpoint."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    latest = [c for c in trainer.checkpoint_callbacks if not getattr(c, "monitor", None)]
    last = next((c.best_model_path for c in latest if c.best_model_path), None)
    if last is None:
        last = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None)
    return (monitored[0] if monitored else None), last


def train(cfg: DictConfig) -> float | None:
    mode = (cfg.get("probe") or {}).get("mode") or "linear"
    if (
        cfg.get("probe") is not None
        and mode != "linear"
        and ((cfg.get("data") or {}).get("extra_eval") or {})
    ):
        raise ConfigError(
            f"data.extra_eval does not work with probe.mode={mode} yet; drop it, or score a fine-tuned "
            "checkpoint on the sets with python eval.py ckpt_path=... +data.extra_eval.NAME.root=DIR"
        )
    with run_dir_lock(str(cfg.paths.output_dir)):  # one run per folder (see tasks/run_lock.py)
        if (cfg.get("probe") or {}).get("mode") == "fewshot":  # closed-form few-shot: its own task
            return fewshot(cfg)
        if (cfg.get("probe") or {}).get("mode") == "knn":  # k-NN on cached features: its own task
            return knn(cfg)
        return _train(cfg)


def plan_training(cfg: DictConfig) -> RunPlan:
    """The run plan of ``train.py`` (see tasks/plan.py); the wandb run id to log to (in ``cfg``)."""
    plan = make_plan(cfg, resume=True)
    with open_dict(cfg):
        wandb_cfg = (cfg.get("logger") or {}).get("wandb")
        if plan.finished is None and wandb_cfg is not None and "_target_" in wandb_cfg:
            if wandb_cfg.get("id") is None:
                wandb_cfg.id = wandb_run_id(plan.run_dir, plan.resuming_own_run) or None
    if plan.ckpt_path and plan.finished is None:
        log.info("resuming from %s", plan.ckpt_path)
    return plan


def load_checkpoint_weights(trainer: L.Trainer, model: L.LightningModule, path: str) -> None:
    """``path``'s weights (and EMA) into ``model`` as ``trainer.test(ckpt_path=path)`` loads them: read by
    the trainer's checkpoint IO, the module's hook first. Every rank calls it. (Not a sharded FSDP folder.)"""
    ckpt = trainer.strategy.checkpoint_io.load_checkpoint(path)
    model.on_load_checkpoint(ckpt)
    model.load_state_dict(ckpt["state_dict"], strict=bool(getattr(model, "strict_loading", True)))


def probe_extra_sets(
    trainer: L.Trainer,
    probe: Any,
    datamodule: Any,
    extra_sets: list,
    output_dir: str,
    loggers: list,
    checkpoint: str | None,
) -> tuple[dict[str, Any], dict[str, float | None]]:
    """``data.extra_eval`` of a linear probe: its images through the frozen network and the head. The
    probe's checkpoint (the best, else the last) loads as a classifier, as ``eval.py`` reads it (the EMA
    of the head when ``model.ema.use_for=eval``); without one, the probe as trained, on images."""
    images = getattr(datamodule, "base", datamodule)  # cached features: the image DataModule beneath
    if checkpoint:
        return evaluate_extra_sets(
            trainer, load_classifier(checkpoint), images, extra_sets, output_dir, loggers
        )
    in_loop, probe.in_loop = probe.in_loop, True
    try:
        with probe.ema_weights_for("eval"):
            return evaluate_extra_sets(trainer, probe, images, extra_sets, output_dir, loggers)
    finally:
        probe.in_loop = in_loop


def _train(cfg: DictConfig) -> float | None:
    loggers: list = []
    trainer = None
    plan = plan_training(cfg)
    if plan.finished is not None:
        m = plan.finished
        print(
            f"nothing to do: {cfg.paths.output_dir} holds this run, finished (step {m.get('global_step')}, "
            f"{m.get('optimized_metric')} {m.get('value')}); raise trainer.max_epochs/max_steps to train on, "
            "or use another hydra.run.dir to start over",
            flush=True,
        )
        value = to_float(m.get("value"))
        return value if value is not None and math.isfinite(value) else None
    try:
        datamodule, model, trainer, loggers = build(plan)
        extra_sets = prepare_extra_eval(
            cfg, list(datamodule.class_names), getattr(model, "multilabel", False)
        )  # checked before training
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
        tested = bool(cfg.get("test") and "test" in (datamodule.splits or {}))
        if tested:
            res = trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
            test_metrics = {k: to_float(v) for k, v in (res[0] if res else {}).items()}
        extra: dict[str, Any] = {}
        extra_metrics: dict[str, float | None] = {}
        if extra_sets and not interrupted and cfg.get("probe") is not None:
            extra, extra_metrics = probe_extra_sets(
                trainer, model, datamodule, extra_sets, output_dir, loggers, best_path or last_path
            )
        elif extra_sets and not interrupted:  # the weights test uses: the best checkpoint's, else the final
            if best_path and not tested:
                load_checkpoint_weights(trainer, model, best_path)
            with model.ema_weights_for("eval"):
                extra, extra_metrics = evaluate_extra_sets(
                    trainer, model, datamodule, extra_sets, output_dir, loggers
                )

        metric_name = str(cfg.get("optimized_metric") or "val/acc1")
        best_score = to_float(getattr(ckpt_cb, "best_model_score", None)) if ckpt_cb else None
        monitored = getattr(ckpt_cb, "monitor", None) if ckpt_cb else None
        # optimized_metric=<set>/acc1: a sweep can follow an extra set (rank 0 holds its value)
        scored = {**extra_metrics, **final}
        value = best_score if monitored == metric_name and best_score is not None else scored.get(metric_name)
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
                "nonfinite": nonfinite_summary(trainer),
                "bad_images": datamodule.bad_image_report(),
                "run_dir": output_dir,
                "analysis": analysis,
                **({"extra_eval": extra} if extra else {}),
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
                    *extra_summary_lines(extra),
                    f"report        : {report}",
                ],
                loggers,
            )
        if value is not None and not math.isfinite(value):
            return None
        return value
    except (Preempted, SIGTERMException):
        finish_wandb(preempted=True)
        raise
    except Exception as e:  # faults: metrics.json says failed (a config error before setup writes nothing)
        record_run_failure(cfg, trainer, e)
        raise
    finally:
        finish_wandb()
