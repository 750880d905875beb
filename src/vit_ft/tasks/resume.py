"""Runs that continue: ``ckpt_path=auto`` (resume from the run directory's own ``last.ckpt`` when its
config is the same, an older vit-ft's folder included) and the id of the run's wandb run (the folder's
lock: :mod:`vit_ft.tasks.run_lock`).

- ``ckpt_path=auto`` (the default): ``<run dir>/checkpoints/last.ckpt`` when it exists and the run's saved
  ``config_resolved.yaml`` equals this config apart from :data:`IGNORED_KEYS` (run length, display,
  logging); a difference stops with one line listing the keys. A run that finished (``metrics.json``
  ``status: completed``) with the same run length has nothing to do: one line, its results unchanged.
  ``ckpt_path=null`` always starts fresh; ``ckpt_path=<file>`` resumes from that file, unchecked.
- A folder written before some keys existed (:data:`ADDED_KEYS`) resumes with the values that ran then
  (:func:`adopt_added_keys`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from vit_ft.dist import is_rank_zero
from vit_ft.errors import ConfigError
from vit_ft.training.checkpointing import StepCheckpoint
from vit_ft.training.loggers import folder_wandb_id
from vit_ft.training.preemption import Preemption

log = logging.getLogger("vit_ft")

OLDER_KEYS = "older_keys"  # in a resumed older run's config: the ADDED_KEYS values it keeps
# Keys that may change between the interrupted run and its resumption: how long it runs, what it shows,
# where it logs (a key and everything under it); everything else is compared. A callback's own such
# keys are named by its class (``FREE_ON_RESUME``), see :func:`callback_free_keys`.
IGNORED_KEYS = (
    "ckpt_path",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.num_sanity_val_steps",
    "trainer.log_every_n_steps",
    "test",
    "paths",
    "logger",
    "resolved_preprocessing",
    "class_names",
    OLDER_KEYS,
)
LENGTH_KEYS = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time")

ANY = object()  # an added key whose value does not change how an older run runs
# Keys added after run folders were already being written, each with the value that does what a run did
# before the key existed. A run folder whose saved config lacks one resumes with that value (unless the
# command line sets another: then a difference like any other), so ``ckpt_path=auto`` continues it.
ADDED_KEYS: dict[str, Any] = {
    "recipe": "paper",  # before recipe=auto: the configured batch and warmup
    "monitor": "val/acc1",
    "optimizer.lr_base": None,  # before lr_base: optimizer.lr as given (taken from the saved config)
    "optimizer.lr_base_size": ANY,
    "optimizer.lr_base_scale": ANY,
    "data.sampler": "none",
    "data.samples_per_epoch": None,
    "data.extra_eval": {},
    "model.class_weights": None,
    "model.loss": "default",
    "model.task": "auto",
    "model.asl": ANY,  # its settings apply only with model.loss=asl
}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


# ``_target_`` paths of vit-ft classes that moved to another module -> where they are now: an older
# sweep config (or the saved config of an older run) still names the old path.
MOVED_TARGETS = {
    "vit_ft.training.callbacks.NonFiniteLossGuard": "vit_ft.training.nonfinite.NonFiniteLossGuard"
}


def configured_callbacks(callbacks: Any) -> Iterator[tuple[str, type, Any]]:
    """``(name, class, config)`` of each ``callbacks.<name>`` entry whose ``_target_`` is a class (a
    moved class's old path, :data:`MOVED_TARGETS`, included)."""
    for name, node in (callbacks or {}).items():
        target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
        target = MOVED_TARGETS.get(str(target), target)
        try:
            cls = get_class(str(target)) if target else None
        except Exception:  # noqa: BLE001 - a target that does not import: nothing to read from it
            cls = None
        if isinstance(cls, type):
            yield str(name), cls, node


def callback_free_keys(*callbacks: Any) -> tuple[str, ...]:
    """``callbacks.<name>[.<key>]`` that may change on resume, as each entry's class says
    (``FREE_ON_RESUME``: its keys, ``""`` for the whole entry), over every config given."""
    out: list[str] = []
    for cbs in callbacks:
        for name, cls, _ in configured_callbacks(cbs):
            out += [f"callbacks.{name}" + (f".{k}" if k else "") for k in getattr(cls, "FREE_ON_RESUME", ())]
    return tuple(out)


def own_last_checkpoint(cfg: DictConfig) -> str | None:
    """The ``last.ckpt`` this config's runs write and resume from: its :class:`StepCheckpoint`'s file
    (the one without a metric), else its :class:`Preemption`'s; None when it writes none."""
    entries = list(configured_callbacks(cfg.get("callbacks")))
    for kind in (StepCheckpoint, Preemption):
        for _, cls, node in entries:
            if issubclass(cls, kind) and node.get("dirpath") and node.get("monitor") is None:
                return kind.resume_file(str(node.dirpath), node.get("filename"))
    return None


def ignored(key: str, extra: tuple[str, ...] = ()) -> bool:
    return any(key == k.rstrip(".") or key.startswith(k.rstrip(".") + ".") for k in IGNORED_KEYS + extra)


def config_differences(
    saved: dict[str, Any], current: dict[str, Any], extra_ignored: tuple[str, ...] = ()
) -> list[str]:
    """``key: saved -> current`` for each differing key that is not in :data:`IGNORED_KEYS` (or ``extra_ignored``)."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if ignored(key, extra_ignored):
            continue
        va, vb = a.get(key, "<unset>"), b.get(key, "<unset>")
        if va != vb and not (isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va == vb):
            diffs.append(f"{key}: {va!r} -> {vb!r}")
    return diffs


def _saved_has(flat_saved: dict[str, Any], key: str) -> bool:
    return any(k == key or k.startswith(key + ".") for k in flat_saved)


def adopt_added_keys(
    saved: dict[str, Any], cfg: DictConfig, given: Callable[[str], bool]
) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any]]:
    """A run folder written before some of :data:`ADDED_KEYS` existed: ``cfg`` takes each missing key's
    older value (a key ``given`` on the command line keeps the user's value, compared as usual), and
    ``optimizer.lr`` the saved one when ``optimizer.lr_base`` did not exist yet. ``cfg.older_keys``
    records them, so that the folder, once rewritten, resumes the same way again. Returns the saved config
    completed with those values, the keys left free (:data:`ANY`), and the values ``cfg`` took."""
    flat = flatten(saved)
    saved = json.loads(json.dumps(saved))  # a copy to complete
    pending = {str(e["key"]): e.get("value") for e in saved.get(OLDER_KEYS) or [] if isinstance(e, dict)}
    free: list[str] = []
    for key, old in ADDED_KEYS.items():
        if _saved_has(flat, key) or OmegaConf.select(cfg, key, default=ANY) is ANY:
            continue
        if old is ANY:
            free.append(key)
            continue
        node = saved
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = old
        pending[key] = old
        if key == "optimizer.lr_base" and (saved.get("optimizer") or {}).get("lr") is not None:
            pending["optimizer.lr"] = saved["optimizer"]["lr"]  # the lr it ran with, as given
    kept = {k: v for k, v in pending.items() if not given(k)}
    adopted = {k: v for k, v in kept.items() if OmegaConf.select(cfg, k) != v}
    with open_dict(cfg):
        for key, value in adopted.items():
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        if kept:
            cfg[OLDER_KEYS] = [{"key": k, "value": v} for k, v in kept.items()]
    return saved, tuple(free), adopted


def relocated(node: Any, old: Any, new: str) -> Any:
    """``node`` with every string under the folder ``old`` moved to the same place under ``new``."""
    if not isinstance(old, str) or not old or os.path.abspath(old) == os.path.abspath(new):
        return node
    old = old.rstrip(os.sep)
    if isinstance(node, dict):
        return {k: relocated(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [relocated(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old + os.sep)):
        return new.rstrip(os.sep) + node[len(old) :]
    return node


@dataclass
class ResumePlan:
    ckpt_path: str | None  # what trainer.fit resumes from
    resuming_own_run: bool  # ckpt_path is this run directory's own last.ckpt (same wandb run)
    finished: dict[str, Any] | None = None  # metrics.json of a finished run: nothing to do


def read_yaml(path: str) -> dict[str, Any] | None:
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - unreadable: treated as absent
        return None
    return loaded if isinstance(loaded, dict) else None


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            loaded = json.load(f)
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def plan_resume(
    cfg: DictConfig,
    auto_resolved: tuple[str, ...] = (),
    given: Callable[[str], bool] = lambda key: False,
) -> ResumePlan:
    """What ``ckpt_path`` means for this run (see the module's doc); raises ConfigError on a different config.

    ``auto_resolved``: keys the user left to vit-ft (``trainer.precision: null``), which may resolve
    differently on the machine a requeued job lands on; not compared. ``given(key)``: the key was set on
    the command line (a run folder older than one of :data:`ADDED_KEYS` keeps the user's value of it)."""
    run_dir = str(cfg.paths.output_dir)
    ckpt = cfg.get("ckpt_path")
    own = own_last_checkpoint(cfg)
    if ckpt in (None, ""):
        return ResumePlan(None, False)
    if str(ckpt) != "auto":
        same = own is not None and os.path.isfile(own) and os.path.samefile(str(ckpt), own)
        return ResumePlan(str(ckpt), same)
    if own is None or not os.path.isfile(own):
        return ResumePlan(None, False)
    saved = read_yaml(os.path.join(run_dir, "config_resolved.yaml"))
    if saved is None:
        raise ConfigError(
            f"ckpt_path=auto: {own} exists but {run_dir}/config_resolved.yaml (its config) is missing or "
            "unreadable; pass ckpt_path=<that file> to resume from it anyway, or use another hydra.run.dir"
        )
    current = OmegaConf.to_container(cfg, resolve=True)
    # A moved or copied run folder: paths derived from the folder are not settings.
    saved = relocated(saved, (saved.get("paths") or {}).get("output_dir"), run_dir)
    saved, older, adopted = adopt_added_keys(saved, cfg, given)
    if adopted:
        current = OmegaConf.to_container(cfg, resolve=True)
    free = auto_resolved + older + callback_free_keys(saved.get("callbacks"), cfg.get("callbacks"))
    diffs = config_differences(saved, current, free)  # type: ignore[arg-type]
    if diffs:
        raise ConfigError(
            f"ckpt_path=auto: {run_dir} holds a run with another config ({'; '.join(diffs)}); run the same "
            "config to resume it, pass ckpt_path=<file> to resume from its checkpoint anyway, or use another "
            "hydra.run.dir"
        )
    if adopted and is_rank_zero():
        log.info(
            "ckpt_path=auto: %s was written by an older vit-ft: it resumes as it ran (%s)",
            run_dir,
            ", ".join(f"{k}={'null' if v is None else v}" for k, v in adopted.items()),
        )
    metrics = read_json(os.path.join(run_dir, "metrics.json"))
    flat_saved, flat_now = flatten(saved), flatten(current)
    same_length = all(flat_saved.get(k) == flat_now.get(k) for k in LENGTH_KEYS)
    if metrics and metrics.get("status") == "completed" and same_length:
        return ResumePlan(own, True, finished=metrics)
    return ResumePlan(own, True)


# -- wandb --------------------------------------------------------------------------------------------------
def wandb_run_id(run_dir: str, resuming_own_run: bool) -> str:
    """The id of this run's wandb run: the run folder's own (``<run_dir>/wandb_run_id``), kept by a resume
    and by a restart alike (one run folder is one wandb run); a new one for a new folder."""
    return folder_wandb_id(run_dir, resuming=resuming_own_run)
