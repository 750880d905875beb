"""From a run plan (tasks/plan.py: the checked config) to instantiated objects: what every task shares.

The DataModule, the LightningModule, callbacks, loggers and the Trainer, in that order.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_ft.compat import install_ddp_relaunch
from vit_ft.errors import ConfigError
from vit_ft.labels import class_change
from vit_ft.models.losses import resolve_class_weights
from vit_ft.sweeps.job import write_failed_metrics
from vit_ft.tasks.cli import hydra_info, hydra_job_command
from vit_ft.tasks.plan import GUARD_TRAINER_KEYS, RunPlan, check_monitor, follow_task, settle_recipe
from vit_ft.tasks.resume import configured_callbacks
from vit_ft.training.checkpoint_io import AtomicCheckpointIO, share_save_faults
from vit_ft.training.loggers import folder_wandb_id
from vit_ft.training.nonfinite import NonFiniteLossGuard, nonfinite_summary

log = logging.getLogger("vit_ft")


# -- objects -----------------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig, stage: str) -> Any:
    data = copy.copy(cfg.data)  # data.extra_eval is the tasks' (data/extra_eval.py), not the DataModule's
    with open_dict(data):
        data.pop("extra_eval", None)
    datamodule = instantiate(data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def build_callbacks(cfg: DictConfig) -> list:
    """The configured callbacks, less a non-finite guard entry (the plan's guard stands for it)."""
    guards = {
        n for n, cls, _ in configured_callbacks(cfg.get("callbacks")) if issubclass(cls, NonFiniteLossGuard)
    }
    return [
        instantiate(cb)
        for name, cb in (cfg.get("callbacks") or {}).items()
        if cb is not None and "_target_" in cb and name not in guards
    ]


_NAME_SKIP = ("data.root", "hydra.", "paths.", "logger.", "ckpt_path", "trainer.enable_", "experiment=")


def run_name(cfg: DictConfig, hydra: dict[str, Any]) -> str:
    """``<task>-<run folder>``; in a sweep, the values this job sets (e.g. ``optimizer.lr=0.01``)."""
    base = f"{cfg.get('task_name', 'train')}-{os.path.basename(os.path.normpath(str(cfg.paths.output_dir)))}"
    if not hydra.get("multirun"):
        return base
    keys = [o.lstrip("+~") for o in hydra.get("overrides") or []]
    keys = [o for o in keys if not o.startswith(_NAME_SKIP)]
    return (",".join(keys) or base)[:128]


def build_loggers(cfg: DictConfig, hydra: dict[str, Any]) -> list:
    """The configured loggers; a sweep's wandb runs share a group named after the sweep folder."""
    out = []
    for name, lg in (cfg.get("logger") or {}).items():
        if lg is None or "_target_" not in lg:
            continue
        if name == "wandb":
            with open_dict(lg):
                if lg.get("group") is None and hydra.get("multirun"):
                    lg.group = os.path.basename(os.path.normpath(str(hydra["sweep_dir"])))
                if lg.get("name") is None:
                    lg.name = run_name(cfg, hydra)
                if lg.get("id") is None:  # one run folder is one wandb run (few-shot and k-NN runs too)
                    lg.id = folder_wandb_id(str(cfg.paths.output_dir)) or None
        out.append(instantiate(lg))
    return out


def build_trainer(plan: RunPlan, *, callbacks: list, loggers: list, **overrides: Any) -> L.Trainer:
    """The configured Trainer with atomic checkpoint files and the plan's non-finite guard; DDP ranks
    re-enter this very job."""
    install_ddp_relaunch(hydra_job_command)
    trainer_cfg = OmegaConf.to_container(plan.cfg.trainer, resolve=True)
    callbacks = [*callbacks, plan.guard]
    for key in GUARD_TRAINER_KEYS:
        trainer_cfg.pop(key, None)
    trainer_cfg.update(overrides)
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # the Preemption callback saves at a step boundary and requeues
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers if loggers else False,
        plugins=plugins,
        _convert_="all",
    )
    share_save_faults(trainer.strategy)  # a failed save stops every rank, not only the writer
    return trainer


def check_resume_classes(plan: RunPlan, class_names: list[str]) -> None:
    """Resuming (``ckpt_path``) on data whose classes are not the checkpoint's, index for index, ends
    with one line listing the difference (the head's outputs would silently mean other classes)."""
    names = (plan.checkpoint_hparams or {}).get("class_names")
    change = class_change(names, class_names) if names is not None else None
    if change:
        raise ConfigError(
            f"ckpt_path={plan.ckpt_path!r} was trained on other classes than the data has: {change}; resume "
            "on the same class folders, or start a new run from its weights (model.weights=<ckpt> "
            "model.reset_head=true)"
        )


def build(plan: RunPlan) -> tuple[Any, Any, L.Trainer, list]:
    """DataModule, LightningModule, Trainer and loggers of a planned training run."""
    cfg = plan.cfg
    hydra = hydra_info()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    datamodule = build_datamodule(cfg, "fit")
    train = (datamodule.splits or {}).get("train")
    settle_recipe(plan, len(train) if hasattr(train, "__len__") else None)  # batch, warmup, lr
    datamodule.batch_size = int(cfg.data.batch_size)
    class_names = list(datamodule.class_names)
    check_resume_classes(plan, class_names)
    # single or multilabel: decided once from the data, kept in the checkpoint's hyper-parameters
    task = datamodule.configure_task(str(cfg.model.get("task", "auto")))
    mode = (cfg.get("probe") or {}).get("mode")
    if task == "multilabel" and mode in ("knn", "fewshot"):
        raise ConfigError(
            f"probe.mode={mode} scores one label per image, and this data is multi-label (a row has two labels); "
            "use experiment=linear_probe (BCE on cached features), or single-label data"
        )
    if task == "multilabel" and str(cfg.data.get("sampler") or "none") != "none":
        raise ConfigError(
            f"data.sampler={cfg.data.sampler} draws by each image's one class, and this data is multi-label; "
            "use data.sampler=none (model.loss=asl down-weights easy negatives)"
        )
    follow_task(plan, task)  # a multi-label run's best checkpoint and optimized_metric: val/mAP
    check_monitor(plan, len(class_names), task)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg.get("class_weights") is not None:  # balanced: from the train split's counts
        if task == "multilabel":
            raise ConfigError(
                f"model.class_weights={model_cfg['class_weights']} weighs single-label cross-entropy, and this "
                "data is multi-label; drop model.class_weights (model.loss=asl down-weights easy negatives)"
            )
        model_cfg["class_weights"] = resolve_class_weights(
            model_cfg["class_weights"], datamodule.class_counts("train"), len(class_names)
        )
        log.info("class weights: %s", [round(w, 4) for w in model_cfg["class_weights"]])
    model = instantiate(
        model_cfg,
        task=task,
        num_classes=len(class_names),
        class_names=class_names,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        _convert_="all",
    )
    pre = model.preprocessing
    datamodule.configure_preprocessing(pre)

    loggers = build_loggers(cfg, hydra)
    trainer = build_trainer(plan, callbacks=build_callbacks(cfg), loggers=loggers)
    per_device = datamodule.configure_batch(trainer.world_size, trainer.accumulate_grad_batches)
    if trainer.is_global_zero:
        log.info(
            "batch: global %d = %d device(s) x %d accumulation x %d per step; precision %s; preprocessing %s",
            datamodule.batch_size,
            trainer.world_size,
            trainer.accumulate_grad_batches,
            per_device,
            cfg.trainer.precision,
            pre.to_dict(),
        )
    return datamodule, model, trainer, loggers


def record_run_failure(cfg: DictConfig, trainer: L.Trainer | None, exc: BaseException) -> None:
    """``status: failed`` (the error's one line, the step reached, the non-finite count) in
    ``metrics.json`` of a run that failed once its Trainer existed; nothing before that (a config
    error, a run folder another run holds)."""
    if trainer is None or not trainer.is_global_zero:
        return
    try:
        write_failed_metrics(
            cfg,
            exc,
            global_step=int(trainer.global_step),
            epoch=int(trainer.current_epoch),
            nonfinite=nonfinite_summary(trainer),
        )
    except OSError as e:  # a full disk: the error line still reaches the user
        log.warning("could not write metrics.json: %s", e)
