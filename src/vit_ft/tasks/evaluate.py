"""``python eval.py``: evaluate a vit-ft checkpoint (``ckpt_path``) or pretrained weights
(``model.weights``) on the data's test split (or val when there is none); print and write the metrics
and ``<split>_predictions.csv``."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vit_ft.errors import ConfigError
from vit_ft.labels import check_head_matches_data
from vit_ft.models.classifier import ViTClassifier
from vit_ft.models.load_checkpoint import load_classifier
from vit_ft.tasks.common import build_datamodule, build_trainer
from vit_ft.tasks.outputs import (
    eval_summary,
    evaluate_extra_sets,
    extra_summary_lines,
    predictions_and_analysis,
    prepare_extra_eval,
    to_float,
    write_metrics,
    write_report,
)
from vit_ft.tasks.plan import make_plan, overridden

log = logging.getLogger("vit_ft")


def load_model(cfg: DictConfig, datamodule: Any) -> ViTClassifier:
    """The checkpoint's classifier, or the weights with their own head, resolution and preprocessing;
    the data's targets follow its task (single-label or multi-label)."""
    if cfg.get("ckpt_path"):
        model = load_classifier(str(cfg.ckpt_path))
        datamodule.configure_task(model.task)
        return model
    mc = OmegaConf.to_container(cfg.model, resolve=True)
    mc.pop("_target_", None)
    if not mc.get("weights"):
        raise ConfigError(
            "nothing to evaluate: pass ckpt_path=<vit-ft .ckpt> or model.weights=<hub id | timm tag | file>"
        )
    if not overridden("model.img_size"):
        mc["img_size"] = None  # the weights as they are: their own resolution, unless asked otherwise
    mc["task"] = datamodule.configure_task(str(mc.get("task", "auto")))
    return ViTClassifier(**{**mc, "num_classes": None, "class_names": None})


def evaluate(cfg: DictConfig) -> dict[str, float | None]:
    plan = make_plan(cfg, resume=False)
    write_csv = cfg.get("predictions", True)
    if not isinstance(write_csv, bool):
        raise ConfigError(f"predictions={write_csv!r} must be true or false (false: one pass, no CSV)")
    datamodule = build_datamodule(cfg, "test")
    model = load_model(cfg, datamodule)
    note = check_head_matches_data(model.class_names, model.num_classes, datamodule.class_names)
    if note:
        log.info("classes: %s", note)
    names = model.class_names
    model_classes = list(names) if names and len(names) == model.num_classes else list(datamodule.class_names)
    extra_sets = prepare_extra_eval(
        cfg, model_classes, getattr(model, "multilabel", False)
    )  # checked before anything is evaluated
    pre = model.preprocessing
    datamodule.configure_preprocessing(pre)
    trainer = build_trainer(plan, callbacks=[], loggers=[], enable_checkpointing=False)
    datamodule.configure_batch(trainer.world_size, 1)
    split = "test" if "test" in datamodule.splits else "val"
    if split == "test":
        res = trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        res = trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = {k: to_float(v) for k, v in (res[0] if res else {}).items()}
    output_dir = str(cfg.paths.output_dir)
    if write_csv:
        analysis, predictions_path = predictions_and_analysis(trainer, model, datamodule, split, output_dir)
    else:  # one pass only: the analysis of the evaluation itself (counts Lightning's DDP padding)
        analysis = eval_summary(model.eval_analysis, list(datamodule.class_names), split)
        predictions_path = None
    extra, extra_metrics = {}, {}
    if extra_sets:  # the weights the split was scored with (the checkpoint's EMA when use_for=eval)
        extra, extra_metrics = evaluate_extra_sets(trainer, model, datamodule, extra_sets, output_dir, [])
        metrics.update(extra_metrics)
    if trainer.is_global_zero:
        payload = {
            "split": split,
            "metrics": metrics,
            "ckpt_path": cfg.get("ckpt_path"),
            "weights": cfg.model.get("weights"),
            "analysis": analysis,
            **({"extra_eval": extra} if extra else {}),
        }
        path = write_metrics(output_dir, payload)
        print(f"\n{split} metrics ({len(datamodule.splits[split])} images):")
        for k, v in sorted(metrics.items()):
            print(f"  {k:<14} {v:.4f}" if v is not None else f"  {k:<14} n/a")
        print(f"written to {path}")
        if predictions_path:
            print(f"predictions: {predictions_path}")
        for line in extra_summary_lines(extra):
            print(line)
        print(f"report        : {write_report(str(cfg.paths.output_dir), [])}")
    return metrics
