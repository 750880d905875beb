"""Fit, test and summarise one composed config — what ``train.py`` and ``eval.py`` call.

This is the one module that speaks Hydra/OmegaConf: it turns the composed config into objects
(DataModule, LightningModule, callbacks, loggers, Trainer), runs them, and writes the run's
``metrics.json``. Everything it builds takes plain arguments and works without Hydra.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_ft.errors import ConfigError

log = logging.getLogger("vit_ft")

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64", "64-true")


# -- checks that end a run before it starts ---------------------------------------------------------
def resolve_precision(precision: Any, accelerator: str) -> str:
    """``null``/``auto`` → the fastest correct choice: bf16-mixed where bf16 is fast, else 16-mixed
    on CUDA and 32-true on CPU."""
    if precision not in (None, "auto", "null"):
        p = str(precision)
        if p not in PRECISIONS:
            raise ConfigError(f"trainer.precision={precision!r} is not one of 32, bf16-mixed, 16-mixed")
        return p
    use_cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu_bf16 = False
    return "bf16-mixed" if cpu_bf16 else "32-true"


_MISSING_HINTS = {
    "data.root": "data.root=/path/to/images (class folders inside), or experiment=quickstart to try it out",
    "data.name": "data.name=<hub id or local folder>, e.g. data.name=uoft-cs/cifar10",
}


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
    ckpt = cfg.get("ckpt_path")
    if ckpt and not os.path.isfile(str(ckpt)):
        raise ConfigError(f"ckpt_path={ckpt!r} does not exist; pass the path of a .ckpt written by vit-ft")


# -- plumbing ----------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<file>.tmp`` and renames it: a crash mid-save never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        path = str(path)
        tmp = path + ".tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


def _hydra_job_command(local_rank: int) -> tuple[list[str], str]:
    """Command for DDP ranks > 0: the same job (its overrides, its output folder), never the sweep.

    Lightning's own version re-runs ``sys.argv``, so a ``-m`` multirun would start a new sweep in
    every rank. Here each rank re-enters exactly this job.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    if hc.job.config_name:
        command += [f"--config-name={hc.job.config_name}"]
    command += [f"--config-dir={d}" for d in _config_dirs(hc)]
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir={hc.runtime.output_dir}",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
        "hydra/hydra_logging=none",
    ]
    return command, get_original_cwd()


def _config_dirs(hc: Any) -> list[str]:
    return [s.path for s in hc.runtime.config_sources if s.provider == "command-line" and s.schema == "file"]


def _install_ddp_relaunch() -> None:
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_sub
    import lightning.pytorch.strategies.launchers.subprocess_script as pytorch_sub

    fabric_sub._hydra_subprocess_cmd = _hydra_job_command
    pytorch_sub._hydra_subprocess_cmd = _hydra_job_command


def _hydra_info() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
        multirun = hc.mode == RunMode.MULTIRUN
        return {
            "multirun": multirun,
            "sweep_dir": hc.sweep.dir if multirun else None,
            "job_num": hc.job.num if multirun else None,
            "overrides": list(hc.overrides.task),
        }
    except (ImportError, ValueError):
        return {}


def _is_rank_zero() -> bool:
    return (
        int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0
        and int(os.environ.get("NODE_RANK", 0)) == 0
    )


def _build_callbacks(cfg: DictConfig) -> list:
    out = []
    for _, cb in (cfg.get("callbacks") or {}).items():
        if cb is not None and "_target_" in cb:
            out.append(instantiate(cb))
    return out


def _build_loggers(cfg: DictConfig, hydra: dict[str, Any]) -> list:
    out = []
    for name, lg in (cfg.get("logger") or {}).items():
        if lg is None or "_target_" not in lg:
            continue
        if name == "wandb":
            with open_dict(lg):
                if lg.get("group") is None and hydra.get("multirun"):
                    lg.group = os.path.basename(os.path.normpath(str(hydra["sweep_dir"])))
                if lg.get("name") is None:
                    lg.name = _run_name(cfg, hydra)
        out.append(instantiate(lg))
    return out


_NAME_SKIP = ("data.root", "hydra.", "paths.", "logger.", "ckpt_path", "trainer.enable_", "experiment=")


def _run_name(cfg: DictConfig, hydra: dict[str, Any]) -> str:
    """``<task>-<run folder>``; in a sweep, the values this job sets (e.g. ``optimizer.lr=0.01``)."""
    base = f"{cfg.get('task_name', 'train')}-{os.path.basename(os.path.normpath(str(cfg.paths.output_dir)))}"
    if not hydra.get("multirun"):
        return base
    keys = [o.lstrip("+~") for o in hydra.get("overrides") or []]
    keys = [o for o in keys if not o.startswith(_NAME_SKIP)]
    return (",".join(keys) or base)[:128]


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _to_float(v: Any) -> float | None:
    try:
        f = float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None
    return f


def _wandb_dirs(loggers: list) -> list[str]:
    dirs = []
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run = lg.experiment
            d = getattr(run, "dir", None) or getattr(getattr(run, "settings", None), "files_dir", None)
            if d:
                dirs.append(os.path.dirname(os.path.normpath(d)))
    return dirs


def _checkpoint_paths(trainer: L.Trainer) -> tuple[Any, str | None]:
    """The checkpoint callback that monitors a metric, and the path of the latest checkpoint."""
    monitored = [c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    latest = [c for c in trainer.checkpoint_callbacks if not getattr(c, "monitor", None)]
    last = next((c.best_model_path for c in latest if c.best_model_path), None)
    if last is None:
        last = next((c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path), None)
    return (monitored[0] if monitored else None), last


def _write_json(path: str, payload: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


# -- the two jobs ------------------------------------------------------------------------------------
def build(cfg: DictConfig, for_training: bool = True) -> tuple[Any, Any, L.Trainer, list]:
    """DataModule, LightningModule, Trainer and loggers for ``cfg``, checked before anything runs."""
    hydra = _hydra_info()
    validate_config(cfg)
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(
            cfg.trainer.get("precision"), str(cfg.trainer.get("accelerator"))
        )
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    class_names = list(datamodule.class_names)

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = instantiate(
        model_cfg,
        num_classes=len(class_names),
        class_names=class_names,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        _convert_="all",
    )
    pre = model.preprocessing
    datamodule.configure_preprocessing(pre.img_size, pre.interpolation)

    loggers = _build_loggers(cfg, hydra) if for_training else []
    callbacks = _build_callbacks(cfg) if for_training else []
    _install_ddp_relaunch()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer = instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers if loggers else False,
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
    )
    per_device = datamodule.configure_batch(trainer.world_size, trainer.accumulate_grad_batches)
    if trainer.is_global_zero:
        log.info(
            "batch: global %d = %d device(s) x %d accumulation x %d per step; precision %s; preprocessing %s",
            datamodule.batch_size,
            trainer.world_size,
            trainer.accumulate_grad_batches,
            per_device,
            trainer_cfg.get("precision"),
            pre.to_dict(),
        )
    return datamodule, model, trainer, loggers


def train(cfg: DictConfig) -> float | None:
    """Fit (and test, when the data has a test split) one config; return ``optimized_metric``."""
    if (cfg.get("probe") or {}).get("mode") == "fewshot":  # closed-form few-shot: vit_ft.fewshot
        from vit_ft.fewshot import fewshot

        return fewshot(cfg)
    loggers: list = []
    try:
        datamodule, model, trainer, loggers = build(cfg)
        if cfg.get("probe") is not None:  # linear probe, on cached features by default
            from vit_ft.probe.linear import prepare_linear_probe
            from vit_ft.probe.settings import LinearProbeSettings

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
            os.makedirs(output_dir, exist_ok=True)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            resolved["resolved_preprocessing"] = model.preprocessing.to_dict()
            resolved["class_names"] = datamodule.class_names
            for lg in loggers:
                lg.log_hyperparams(resolved)
            with open(os.path.join(output_dir, "config_resolved.yaml"), "w") as f:
                f.write(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

        ckpt_cb, last_path = _checkpoint_paths(trainer)
        best_path = getattr(ckpt_cb, "best_model_path", "") or None
        final = {k: _to_float(v) for k, v in trainer.callback_metrics.items()}
        test_metrics: dict[str, float | None] = {}
        if cfg.get("test") and "test" in (datamodule.splits or {}):
            res = trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
            test_metrics = {k: _to_float(v) for k, v in (res[0] if res else {}).items()}

        metric_name = str(cfg.get("optimized_metric") or "val/acc1")
        best_score = _to_float(getattr(ckpt_cb, "best_model_score", None)) if ckpt_cb else None
        monitored = getattr(ckpt_cb, "monitor", None) if ckpt_cb else None
        value = best_score if monitored == metric_name and best_score is not None else final.get(metric_name)
        if trainer.is_global_zero:
            bad = getattr(datamodule, "bad_image_report", None)
            payload = {
                "optimized_metric": metric_name,
                "value": value,
                "best": {"metric": monitored, "score": best_score, "checkpoint": best_path},
                "final": final,
                "test": test_metrics,
                "checkpoints": {"best": best_path, "last": last_path},
                "global_step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "status": "interrupted" if trainer.interrupted else "completed",
                "bad_images": bad() if callable(bad) else None,
                "run_dir": output_dir,
            }
            _write_json(os.path.join(output_dir, "metrics.json"), payload)
            _print_summary(output_dir, payload, _wandb_dirs(loggers))
        if value is not None and not math.isfinite(value):
            return None
        return value
    finally:
        _finish_wandb()


def _print_summary(output_dir: str, payload: dict[str, Any], wandb_dirs: list[str]) -> None:
    lines = [
        "",
        f"run directory : {output_dir}",
        f"{payload['optimized_metric']:<14}: {payload['value']}",
        f"best checkpoint: {payload['checkpoints']['best']}",
        f"last checkpoint: {payload['checkpoints']['last']}",
        f"metrics       : {os.path.join(output_dir, 'metrics.json')}",
    ]
    for d in wandb_dirs:
        lines.append(f"wandb run     : {d}")
        if "offline-run" in os.path.basename(d):
            lines.append(f"sync it with  : wandb sync {d}")
    print("\n".join(lines), flush=True)


def evaluate(cfg: DictConfig) -> dict[str, float | None]:
    """Evaluate a vit-ft checkpoint (``ckpt_path``) or pretrained weights (``model.weights``) on
    the data's test split (or val when there is none); print and return the metrics."""
    from vit_ft.models.classifier import ViTClassifier, load_classifier

    validate_config(cfg)
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(
            cfg.trainer.get("precision"), str(cfg.trainer.get("accelerator"))
        )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    if cfg.get("ckpt_path"):
        model = load_classifier(str(cfg.ckpt_path))
    else:
        mc = OmegaConf.to_container(cfg.model, resolve=True)
        mc.pop("_target_", None)
        if not mc.get("weights"):
            raise ConfigError(
                "nothing to evaluate: pass ckpt_path=<vit-ft .ckpt> or model.weights=<hub id | timm tag | file>"
            )
        if not any(o.lstrip("+~").startswith("model.img_size=") for o in _hydra_info().get("overrides", [])):
            mc["img_size"] = None  # the weights as they are: their own resolution, unless asked otherwise
        model = ViTClassifier(**{**mc, "num_classes": None, "class_names": None})
    from vit_ft.predict import check_head_matches_data

    note = check_head_matches_data(model.class_names, model.num_classes, datamodule.class_names)
    if note:
        log.info("classes: %s", note)
    pre = model.preprocessing
    datamodule.configure_preprocessing(pre.img_size, pre.interpolation)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(logger=False, enable_checkpointing=False)
    trainer = instantiate(trainer_cfg, _convert_="all")
    datamodule.configure_batch(trainer.world_size, 1)
    split = "test" if "test" in datamodule.splits else "val"
    if split == "test":
        res = trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        res = trainer.validate(model, datamodule=datamodule, verbose=False)
    metrics = {k: _to_float(v) for k, v in (res[0] if res else {}).items()}
    if trainer.is_global_zero:
        output_dir = str(cfg.paths.output_dir)
        os.makedirs(output_dir, exist_ok=True)
        payload = {
            "split": split,
            "metrics": metrics,
            "ckpt_path": cfg.get("ckpt_path"),
            "weights": cfg.model.get("weights"),
        }
        _write_json(os.path.join(output_dir, "metrics.json"), payload)
        print(f"\n{split} metrics ({len(datamodule.splits[split])} images):")
        for k, v in sorted(metrics.items()):
            print(f"  {k:<12} {v:.4f}" if v is not None else f"  {k:<12} n/a")
        print(f"written to {os.path.join(output_dir, 'metrics.json')}")
    return metrics


def _user_error(exc: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` behind ``exc`` (Hydra's instantiate wraps what it raises)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ConfigError):
            return exc
        if isinstance(exc, MisconfigurationException):  # Lightning's word on trainer settings
            first = (str(exc).strip().splitlines() or ["invalid trainer settings"])[0]
            return ConfigError(f"{first} (check the trainer.* settings)")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def run_cli(fn: Any, cfg: DictConfig) -> Any:
    """Call ``fn(cfg)``; a :class:`ConfigError` becomes one line on stderr and exit status 2."""
    if _hydra_info().get("multirun"):  # one job of a sweep: a failure is recorded, the sweep goes on
        from vit_ft.sweep import run_sweep_job

        return run_sweep_job(fn, cfg)
    try:
        return fn(cfg)
    except Exception as e:
        user = _user_error(e)
        if user is None:
            raise
        msg = str(user).strip().splitlines()
        # Errors raised in DataLoader workers arrive wrapped with the worker's traceback.
        line = msg[-1] if msg else "invalid configuration"
        line = line.split("ConfigError: ", 1)[-1]
        print(f"error: {line}", file=sys.stderr, flush=True)
        _finish_wandb()
        sys.exit(2)
