"""From a composed config to checked, instantiated objects: what every task shares.

Checks that end a run before it starts (one ``ConfigError`` line each), then the DataModule, the
LightningModule, callbacks, loggers and the Trainer, in that order.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_ft.checkpoint_format import ema_chosen
from vit_ft.compat import install_ddp_relaunch
from vit_ft.errors import ConfigError
from vit_ft.labels import class_change
from vit_ft.settings_ranges import check_ranges
from vit_ft.sweeps.job import write_failed_metrics
from vit_ft.tasks.cli import hydra_info, hydra_job_command
from vit_ft.training.callbacks import NonFiniteLossGuard, nonfinite_summary
from vit_ft.training.checkpoint_io import AtomicCheckpointIO
from vit_ft.training.precision import resolve_precision
from vit_ft.weights.io import check_checkpoint_file
from vit_ft.weights.sources import looks_like_path

log = logging.getLogger("vit_ft")

_MISSING_HINTS = {
    "data.root": "data.root=/path/to/images (class folders inside), or experiment=quickstart to try it out",
    "data.name": "data.name=<hub id or local folder>, e.g. data.name=uoft-cs/cifar10",
}


# -- checks that end a run before it starts ---------------------------------------------------------
def validate_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        raise ConfigError(f"{key} is not set; pass {_MISSING_HINTS.get(key, f'{key}=<value>')}")

    def positive_int(key: str, value: Any, allow: tuple = ()) -> None:
        if value in allow:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r} must be a positive integer")

    positive_int("data.batch_size", cfg.data.get("batch_size"))
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number (the paper sweeps 0.003-0.06)")
    t = cfg.trainer
    max_steps, max_epochs = t.get("max_steps", -1), t.get("max_epochs", None)
    if max_steps in (None, -1) and max_epochs in (None, -1):
        raise ConfigError(
            "neither trainer.max_steps nor trainer.max_epochs is set; set one (e.g. trainer.max_epochs=10)"
        )
    if max_steps not in (None, -1):
        positive_int("trainer.max_steps", max_steps)
    if max_epochs not in (None, -1):
        positive_int("trainer.max_epochs", max_epochs)
    positive_int("trainer.accumulate_grad_batches", t.get("accumulate_grad_batches", 1))
    clip = t.get("gradient_clip_val")
    if clip is not None and (not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip!r} must be a positive number or null (no clipping)"
        )
    if cfg.model.get("img_size") is not None:
        positive_int("model.img_size", cfg.model.img_size)
    NonFiniteLossGuard(action=t.get("on_nonfinite", "stop"), max_skips=t.get("max_nonfinite_skips", 10))
    check_ranges(cfg)  # every other numeric and enum key (vit_ft/settings_ranges.py)
    check_user_files(cfg)


def check_user_files(cfg: DictConfig) -> None:
    """The checkpoint (``ckpt_path``) and a local ``model.weights`` file are complete, of the right
    kind and load without running code: checked before any data or model is set up."""
    ckpt = cfg.get("ckpt_path")
    if ckpt and str(ckpt) != "auto":  # "auto": a run-folder checkpoint, found (and checked) later
        resume = cfg.get("task_name", "train") == "train"
        check_checkpoint_file(str(ckpt), "ckpt_path", lightning=True, resume=resume)
    weights = (cfg.get("model") or {}).get("weights")
    if weights and looks_like_path(str(weights)) and os.path.isfile(os.path.expanduser(str(weights))):
        check_checkpoint_file(str(weights), "model.weights", lightning=False)


def check_resume_classes(cfg: DictConfig, class_names: list[str]) -> None:
    """Resuming (``ckpt_path``) on data whose classes are not the checkpoint's, index for index, ends
    with one line listing the difference (the head's outputs would silently mean other classes)."""
    ckpt = cfg.get("ckpt_path")
    if not ckpt or not os.path.isfile(str(ckpt)):
        return
    hp = check_checkpoint_file(str(ckpt), "ckpt_path", lightning=True) or {}
    names = hp.get("class_names")
    change = class_change(names, class_names) if names is not None else None
    if change:
        raise ConfigError(
            f"ckpt_path={str(ckpt)!r} was trained on other classes than the data has: {change}; resume on "
            "the same class folders, or start a new run from its weights (model.weights=<ckpt> "
            "model.reset_head=true)"
        )


def prepare_run(cfg: DictConfig) -> None:
    """Check ``cfg`` and settle what it leaves open (``trainer.precision: auto``) in place."""
    validate_config(cfg)
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(
            cfg.trainer.get("precision"), str(cfg.trainer.get("accelerator"))
        )
    follow_ema(cfg)


def follow_ema(cfg: DictConfig) -> None:
    """With ``model.ema.use_for=eval`` the EMA weights are the model's: the best checkpoint, early
    stopping and ``optimized_metric`` follow ``val_ema/*`` instead of ``val/*`` (unless set on the
    command line)."""
    ema = cfg.get("model", {}).get("ema") if "model" in cfg else None
    ema = OmegaConf.to_container(ema, resolve=True) if ema is not None else None
    strategy = cfg.get("trainer", {}).get("strategy") if "trainer" in cfg else None
    if isinstance(ema, dict) and ema.get("decay") is not None and "fsdp" in str(strategy).lower():
        raise ConfigError(
            f"model.ema.decay={ema['decay']} does not work with a sharded model (trainer.strategy={strategy}); "
            "use trainer=ddp, or model.ema.decay=null"
        )
    if not ema_chosen(ema, "eval"):
        return
    keys = [("optimized_metric", cfg)] + [
        (f"callbacks.{n}.monitor", cb)
        for n, cb in (cfg.get("callbacks") or {}).items()
        if cb is not None and isinstance(cb.get("monitor"), str)
    ]
    with open_dict(cfg):
        for key, node in keys:
            leaf = key.rsplit(".", 1)[-1]
            value = node.get(leaf)
            if isinstance(value, str) and value.startswith("val/") and not overridden(key):
                node[leaf] = "val_ema/" + value[len("val/") :]
                log.info("model.ema.use_for=eval: %s follows %s", key, node[leaf])


def overridden(key: str) -> bool:
    """Whether ``key`` was set on the command line (not only by the config files)."""
    return any(o.lstrip("+~").startswith(f"{key}=") for o in hydra_info().get("overrides", []))


# -- objects -----------------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig, stage: str) -> Any:
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def build_callbacks(cfg: DictConfig) -> list:
    return [
        instantiate(cb) for cb in (cfg.get("callbacks") or {}).values() if cb is not None and "_target_" in cb
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
        out.append(instantiate(lg))
    return out


# trainer.* keys of vit-ft's own, not Lightning Trainer arguments (read by build_trainer, not passed on)
VIT_FT_TRAINER_KEYS = ("on_nonfinite", "max_nonfinite_skips")


def nonfinite_guard(trainer_cfg: dict[str, Any], callbacks: list) -> None:
    """Configure the :class:`NonFiniteLossGuard` in ``callbacks`` from ``trainer.on_nonfinite`` and
    ``trainer.max_nonfinite_skips`` (a sweep config may list one of its own), or add one."""
    action = trainer_cfg.get("on_nonfinite", "stop")
    max_skips = trainer_cfg.get("max_nonfinite_skips", 10)
    given = next((c for c in callbacks if isinstance(c, NonFiniteLossGuard)), None)
    guard = NonFiniteLossGuard(getattr(given, "every_n_steps", 1), action=action, max_skips=max_skips)
    if given is not None:
        callbacks.remove(given)
    callbacks.append(guard)


def build_trainer(cfg: DictConfig, *, callbacks: list, loggers: list, **overrides: Any) -> L.Trainer:
    """The configured Trainer with atomic checkpoint files and the non-finite guard; DDP ranks
    re-enter this very job."""
    install_ddp_relaunch(hydra_job_command)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    nonfinite_guard(trainer_cfg, callbacks)
    for key in VIT_FT_TRAINER_KEYS:
        trainer_cfg.pop(key, None)
    trainer_cfg.update(overrides)
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():  # the Preemption callback saves at a step boundary and requeues
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers if loggers else False,
        plugins=plugins,
        _convert_="all",
    )


def build(cfg: DictConfig) -> tuple[Any, Any, L.Trainer, list]:
    """DataModule, LightningModule, Trainer and loggers of a training config, checked before anything runs."""
    hydra = hydra_info()
    prepare_run(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    datamodule = build_datamodule(cfg, "fit")
    class_names = list(datamodule.class_names)
    check_resume_classes(cfg, class_names)
    model = instantiate(
        OmegaConf.to_container(cfg.model, resolve=True),
        num_classes=len(class_names),
        class_names=class_names,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        _convert_="all",
    )
    pre = model.preprocessing
    datamodule.configure_preprocessing(pre.img_size, pre.interpolation, pre.crop_pct, pre.crop_mode)

    loggers = build_loggers(cfg, hydra)
    trainer = build_trainer(cfg, callbacks=build_callbacks(cfg), loggers=loggers)
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
