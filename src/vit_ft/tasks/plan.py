"""The run plan: what a task decides from its composed config before building anything, decided once.

:func:`make_plan` checks the config (:func:`check_config`, the one place config checks run), settles
what it leaves open (``trainer.precision: null``, the metrics ``model.ema.use_for=eval`` follows, the
``monitor`` metric and its mode),
reads the checkpoint to resume from once (one :func:`check_checkpoint_file`, one
``torch.load(weights_only=True)``), decides the resume (``ckpt_path`` auto/explicit/none, a finished
run with nothing to do) and builds the non-finite guard. ``tasks/common.build`` takes the plan and,
once the DataModule knows the training set's size, :func:`settle_recipe` decides the small-data recipe
(``recipe=auto``) and the learning rate (``optimizer.lr_base``), before the model and the Trainer.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from vit_ft.checkpoint_format import ema_chosen
from vit_ft.data.loader_policy import batches_per_epoch
from vit_ft.dist import is_rank_zero
from vit_ft.errors import ConfigError
from vit_ft.models.streams import known_metric_names, metric_mode
from vit_ft.settings_ranges import check_ranges
from vit_ft.tasks.cli import hydra_info
from vit_ft.tasks.resume import configured_callbacks, own_last_checkpoint, plan_resume
from vit_ft.training.nonfinite import NonFiniteLossGuard
from vit_ft.training.precision import resolve_precision
from vit_ft.training.recipe import RecipeDecision, adapt_recipe, resolve_lr, short_run_rule
from vit_ft.weights.io import check_checkpoint_file
from vit_ft.weights.sources import looks_like_path

log = logging.getLogger("vit_ft")

_MISSING_HINTS = {
    "data.root": "data.root=/path/to/images (class folders inside), or experiment=quickstart to try it out",
    "data.name": "data.name=<hub id or local folder>, e.g. data.name=uoft-cs/cifar10",
}
# trainer.* keys of vit-ft's own (the non-finite guard's), not Lightning Trainer arguments
GUARD_TRAINER_KEYS = {"on_nonfinite": "action", "max_nonfinite_skips": "max_skips"}
FREEZE_HINT = (
    "model.freeze_backbone=true is replaced by the linear probe: use experiment=linear_probe "
    "(probe.mode=linear; probe.cache=false trains in the loop)"
)


@dataclass
class RunPlan:
    """A checked config and what follows from it (``cfg`` is settled in place: precision, EMA
    metrics, ``ckpt_path`` a file or None)."""

    cfg: DictConfig
    run_dir: str
    last_checkpoint: str | None  # the last.ckpt this run writes (and ckpt_path=auto resumes from)
    ckpt_path: str | None  # what trainer.fit resumes from (or what eval.py loads)
    guard: NonFiniteLossGuard  # built once, from trainer.on_nonfinite / trainer.max_nonfinite_skips
    checkpoint_hparams: dict[str, Any] | None = None  # ckpt_path's hyper_parameters, read once
    resuming_own_run: bool = False  # ckpt_path is this run folder's own last.ckpt (same wandb run)
    finished: dict[str, Any] | None = None  # metrics.json of a finished run: nothing to do
    monitor: str = "val/acc1"  # the metric the best checkpoint, early stopping and the summary follow
    monitor_mode: str = "max"  # max or min (a loss, the calibration error)
    recipe: RecipeDecision | None = None  # recipe=auto's decision (settle_recipe), None: not adapted


# -- checks that end a run before it starts ---------------------------------------------------------
def check_config(cfg: DictConfig) -> NonFiniteLossGuard:
    """Every check of the composed config (one ``ConfigError`` line each); the non-finite guard it
    describes."""
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
    derived = lr is None and cfg.optimizer.get("lr_base") is not None  # settle_recipe derives it
    if not derived and (
        isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr)
    ):
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
    if cfg.model.get("freeze_backbone") and (cfg.get("probe") or {}).get("mode") != "linear":
        raise ConfigError(FREEZE_HINT)
    guard = nonfinite_guard(cfg)
    check_ranges(cfg)  # every other numeric and enum key (vit_ft/settings_ranges.py)
    return guard


def nonfinite_guard(cfg: DictConfig) -> NonFiniteLossGuard:
    """The run's :class:`NonFiniteLossGuard`, from ``trainer.on_nonfinite`` and
    ``trainer.max_nonfinite_skips`` (a ``callbacks.<name>`` entry of that class, as older sweep configs
    have, gives only how often it checks)."""
    given = {arg: cfg.trainer[key] for key, arg in GUARD_TRAINER_KEYS.items() if key in cfg.trainer}
    for _, cls, node in configured_callbacks(cfg.get("callbacks")):
        if issubclass(cls, NonFiniteLossGuard) and node.get("every_n_steps") is not None:
            given["every_n_steps"] = node.every_n_steps
    return NonFiniteLossGuard(**given)


def check_weights_file(cfg: DictConfig) -> None:
    """A local ``model.weights`` file is complete, of the right kind and loads without running code."""
    weights = (cfg.get("model") or {}).get("weights")
    if weights and looks_like_path(str(weights)) and os.path.isfile(os.path.expanduser(str(weights))):
        check_checkpoint_file(str(weights), "model.weights", lightning=False)


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
    with open_dict(cfg):
        for key, node, leaf in monitored_keys(cfg):  # monitor first: what follows ${monitor} follows it
            value = node.get(leaf)
            if isinstance(value, str) and value.startswith("val/") and not overridden(key):
                node[leaf] = "val_ema/" + value[len("val/") :]
                log.info("model.ema.use_for=eval: %s follows %s", key, node[leaf])


def monitored_keys(cfg: DictConfig) -> list[tuple[str, Any, str]]:
    """``(key, node, leaf)`` of every metric name the run follows: ``monitor``, ``optimized_metric``
    and each callback's ``monitor``."""
    keys = [("monitor", cfg, "monitor"), ("optimized_metric", cfg, "optimized_metric")]
    keys += [
        (f"callbacks.{n}.monitor", cb, "monitor")
        for n, cb in (cfg.get("callbacks") or {}).items()
        if cb is not None and isinstance(cb.get("monitor"), str)
    ]
    return [k for k in keys if k[1].get(k[2]) is not None]


def settle_monitor(cfg: DictConfig) -> tuple[str, str]:
    """``monitor`` (default ``val/acc1``) and its mode, set as ``mode`` of every callback that
    monitors it (the best checkpoint, early stopping) unless given on the command line."""
    name = str(cfg.get("monitor") or "val/acc1")
    mode = metric_mode(name)
    with open_dict(cfg):
        for n, cb in (cfg.get("callbacks") or {}).items():
            if cb is None or cb.get("monitor") != name or overridden(f"callbacks.{n}.mode"):
                continue
            if "mode" in cb or "EarlyStopping" in str(cb.get("_target_", "")):
                cb.mode = mode
    return name, mode


EXTRA_SET_METRICS = ("loss", "acc1", "acc5", "acc1_macro", "ece", "real_acc1")  # models/subset.SubsetMetrics


def check_monitor(plan: RunPlan, num_classes: int, task: str = "single") -> None:
    """Every metric name the run follows is one it logs (:func:`known_metric_names`), or one line
    listing those, before anything trains."""
    cfg = plan.cfg
    if (cfg.get("probe") or {}).get("mode") in ("knn", "fewshot"):
        return  # they log their own names (knn/k20/acc1, fewshot/5shot/acc), not a training run's
    ema = (cfg.get("model") or {}).get("ema") or {}
    known = known_metric_names(num_classes, ema=ema.get("decay") is not None, task=task)
    known += ["epoch", "step"]  # Lightning's ModelCheckpoint can follow these too
    # data.extra_eval's sets are scored after training: what a sweep may optimise, not what a checkpoint follows
    extra = [f"{s}/{m}" for s in (cfg.get("data") or {}).get("extra_eval") or {} for m in EXTRA_SET_METRICS]
    for key, node, leaf in monitored_keys(cfg):
        name = str(node.get(leaf))
        if name not in known and not (key == "optimized_metric" and name in extra):
            raise ConfigError(f"{key}={name} is not a metric this run logs; use one of: {', '.join(known)}")


def follow_task(plan: RunPlan, task: str) -> None:
    """A multi-label run logs no accuracy: ``monitor``, ``optimized_metric`` and the callbacks'
    ``monitor`` that name ``<stream>/acc1`` follow ``<stream>/mAP`` instead (unless set on the command
    line); called once the data decided the task (``model.task``)."""
    if task != "multilabel":
        return
    cfg = plan.cfg
    with open_dict(cfg):
        for key, node, leaf in monitored_keys(cfg):
            value = node.get(leaf)
            if isinstance(value, str) and value.endswith("/acc1") and not overridden(key):
                node[leaf] = value[: -len("acc1")] + "mAP"
                log.info("model.task=multilabel: %s follows %s", key, node[leaf])
    plan.monitor = str(cfg.get("monitor") or plan.monitor)


def overridden(key: str) -> bool:
    """Whether ``key`` was set on the command line (not only by the config files)."""
    return any(o.lstrip("+~").startswith(f"{key}=") for o in hydra_info().get("overrides", []))


# -- the plan ----------------------------------------------------------------------------------------
def make_plan(cfg: DictConfig, *, resume: bool) -> RunPlan:
    """Check and settle ``cfg`` and decide what ``ckpt_path`` means.

    ``resume``: ``train.py`` fitting a model: ``ckpt_path=auto`` looks for this run folder's own
    ``last.ckpt`` (see tasks/resume.py) and the checkpoint must hold a training state. Otherwise
    (evaluation, k-NN, few-shot) a given ``ckpt_path`` file is checked and ``auto`` means none."""
    auto_resolved = ("trainer.precision",) if cfg.trainer.get("precision") in (None, "auto") else ()
    auto_resolved += recipe_free_keys(cfg)
    guard = check_config(cfg)
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(
            cfg.trainer.get("precision"), str(cfg.trainer.get("accelerator"))
        )
    follow_ema(cfg)
    monitor, monitor_mode = settle_monitor(cfg)
    check_weights_file(cfg)
    given = cfg.get("ckpt_path")
    given = None if given in (None, "") else str(given)
    explicit = given if given != "auto" else None
    hparams = None
    if explicit is not None:  # checked before anything else reads it
        hparams = check_checkpoint_file(explicit, "ckpt_path", lightning=True, resume=resume)
    plan = RunPlan(
        cfg=cfg,
        run_dir=str(cfg.paths.output_dir),
        last_checkpoint=own_last_checkpoint(cfg),
        ckpt_path=explicit,
        guard=guard,
        checkpoint_hparams=hparams,
        monitor=monitor,
        monitor_mode=monitor_mode,
    )
    if resume:
        decided = plan_resume(cfg, auto_resolved=auto_resolved, given=overridden)
        plan.ckpt_path, plan.resuming_own_run = decided.ckpt_path, decided.resuming_own_run
        plan.finished = decided.finished
        if plan.ckpt_path and explicit is None:  # found in the run folder: checked as if given
            plan.checkpoint_hparams = check_checkpoint_file(
                plan.ckpt_path, "ckpt_path", lightning=True, resume=True
            )
        with open_dict(cfg):
            cfg.ckpt_path = plan.ckpt_path
    return plan


# -- the recipe: what the training set's size and the batch decide -----------------------------------
RECIPE_KEYS = ("data.batch_size", "scheduler.warmup_steps")  # what recipe=auto may lower


def recipe_free_keys(cfg: DictConfig) -> tuple[str, ...]:
    """Keys :func:`settle_recipe` settles from the data and the batch (the user left them to vit-ft):
    a resumed run settles them again, the same way; they are not compared with the saved config."""
    keys: tuple[str, ...] = ()
    if cfg.get("recipe", "auto") == "auto":
        keys += tuple(k for k in RECIPE_KEYS if not overridden(k))
    opt = cfg.get("optimizer") or {}
    if opt.get("lr") is None and opt.get("lr_base") is not None:
        keys += ("optimizer.lr",)
    return keys


def configured_world_size(t: Any) -> int:
    """The processes the Trainer of ``trainer`` config ``t`` will run (devices x nodes), as far as the
    config says before the Trainer exists: a count, a list or ``"0,1"`` of devices; ``auto``/-1 on GPUs is
    every visible GPU; otherwise 1."""
    devices, nodes = t.get("devices"), int(t.get("num_nodes") or 1)
    if isinstance(devices, (list, tuple, ListConfig)):
        n = len(devices)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    elif str(devices).isdigit() and int(devices) > 0:
        n = int(devices)
    elif str(devices) in ("auto", "-1") and str(t.get("accelerator")) in ("gpu", "cuda", "auto"):
        n = max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    else:
        n = 1
    return n * max(1, nodes)


def settle_recipe(plan: RunPlan, train_size: int | None) -> RecipeDecision | None:
    """``recipe=auto`` on ``train_size`` training images (None: unknown, streamed: nothing adapts),
    then the learning rate from ``optimizer.lr_base`` at the run's global batch; each says so in one
    line. Sets ``data.batch_size``, ``scheduler.warmup_steps`` and ``optimizer.lr`` in ``plan.cfg``;
    values given on the command line are never changed. Once, before the model and the Trainer."""
    cfg = plan.cfg
    decision = None
    if cfg.get("recipe", "auto") == "auto" and train_size and cfg.get("probe") is None:
        t = cfg.trainer
        decision = adapt_recipe(
            int(train_size),
            batch_size=int(cfg.data.batch_size),
            warmup_steps=int(cfg.scheduler.get("warmup_steps") or 0),
            max_epochs=t.get("max_epochs"),
            max_steps=t.get("max_steps"),
            steps_per_epoch=lambda n, b: batches_per_epoch(n, 1, b),
            fixed={k for k in RECIPE_KEYS if overridden(k)},
            multiple_of=int(t.get("accumulate_grad_batches") or 1) * configured_world_size(t),
        )
        with open_dict(cfg):
            cfg.data.batch_size = decision.batch_size
            cfg.scheduler.warmup_steps = decision.warmup_steps
        if decision.line and is_rank_zero():
            log.info(decision.line)
    opt = cfg.optimizer
    rule, why = short_run_rule(
        opt.get("lr_base_scale"),
        decision is not None and "data.batch_size" in decision.changed,
        str(opt.get("name", "sgd")),
    )
    choice = resolve_lr(
        lr=opt.get("lr"),
        lr_base=opt.get("lr_base"),
        lr_base_size=int(opt.get("lr_base_size") or 256),
        lr_base_scale=rule,
        optimizer_name=str(opt.get("name", "sgd")),
        global_batch=int(cfg.data.batch_size),
        rule_reason=why,
    )
    with open_dict(cfg):
        opt.lr = choice.lr
    if is_rank_zero():
        log.info(choice.line)
    plan.recipe = decision
    return decision
