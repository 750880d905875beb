"""Every patch of, or reach into, a third-party library's internals — and nothing else.

Each entry names the library versions it was checked on. When a library changes one of these
internals, this is the only file to look at; a test of the behaviour each one serves fails first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn


# -- torch 2.14.1 -------------------------------------------------------------------------------------
def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (no public API says so)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# -- lightning 2.6.6 ----------------------------------------------------------------------------------
def lightning_logs_now(trainer: Any) -> bool:
    """Whether the training step running now (or ending, in ``on_train_batch_end``) is one of Lightning's
    logging steps (``trainer.log_every_n_steps``): Lightning's own test."""
    return bool(trainer._logger_connector.should_update_logs)


def forget_step_logs(trainer: Any) -> None:
    """Take the last logging step's per-step ``training_step`` values out of Lightning's current results:
    the progress bar and ``callback_metrics`` would otherwise read them back from the device every step
    (the bar keeps the last numbers it read; ``callback_metrics`` keeps the last values, as tensors)."""
    results = getattr(trainer, "_results", None)
    kept = trainer._logger_connector._callback_metrics  # what callback_metrics shows of them (tensors)
    for _, item in list(results.valid_items()) if results is not None else ():
        if item.meta.fx == "training_step" and item.meta.on_step and not item.meta.on_epoch:
            value = results._get_cache(item, True)
            if isinstance(value, torch.Tensor):
                kept[item.meta.name] = value  # a reference, nothing is read
            item.has_reset = True  # Lightning's own mark of an entry not logged since (valid_items)


def install_ddp_relaunch(command: Callable[[int], tuple[list[str], str]]) -> None:
    """Make Lightning's DDP launcher start ranks > 0 with ``command(local_rank) -> (argv, cwd)``.

    Under Hydra, Lightning re-runs ``sys.argv`` (``_hydra_subprocess_cmd``), which in a ``-m`` multirun
    starts a new sweep in every rank; vit-ft's command re-enters exactly the current job."""
    import lightning.fabric.strategies.launchers.subprocess_script as fabric_sub
    import lightning.pytorch.strategies.launchers.subprocess_script as pytorch_sub

    fabric_sub._hydra_subprocess_cmd = command
    pytorch_sub._hydra_subprocess_cmd = command


def tame_child_watchdog() -> None:
    """Lightning's watchdog SIGKILLs the launching process when a rank exits with an error. In a sweep
    that process is the sweep itself: kill only the job's ranks (the job then fails on its own)."""
    from lightning.fabric.strategies.launchers import subprocess_script as sub

    cls = sub._ChildProcessObserver
    if getattr(cls, "_vit_ft_tamed", False):
        return

    def _terminate_children(self: Any) -> None:
        for p in self._child_processes:
            if p.poll() is None:
                p.send_signal(self._termination_signal)

    cls._terminate_all = _terminate_children
    cls._vit_ft_tamed = True


def drain_child_watchdogs(timeout: float = 120.0) -> None:
    """Wait for (or kill) the ranks a finished DDP job left, then retire their watchdog threads, so the
    next job of a sweep is not killed for its predecessor's exit."""
    for th in threading.enumerate():
        if type(th).__name__ == "_ChildProcessObserver":
            for p in getattr(th, "_child_processes", []):
                try:
                    p.wait(timeout=timeout)
                except Exception:  # noqa: BLE001 - a hung rank must not hang the sweep
                    p.kill()
                    p.wait()
            th._child_processes = []  # its last poll then sees nothing to report
            th._finished = True


def drop_wandb_anonymous(logger: Any) -> Any:
    """Lightning's WandbLogger always passes ``anonymous=None`` to ``wandb.init``, and wandb >= 0.19
    warns that the setting "has no effect" whatever its value: a warning about nothing the user did.
    Checked on lightning 2.6.6 with wandb 0.31.0."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
    return logger


# -- hydra-core 1.3.8 ---------------------------------------------------------------------------------
def fail_job_return(job_return: Any, failed_status: Any, error: BaseException) -> None:
    """Turn a completed Hydra ``JobReturn`` into a failed one (``failed_status``: hydra's
    ``JobStatus.FAILED``) carrying ``error``, what the Optuna sweeper reads to record a failed trial;
    JobReturn offers no public setter for the value."""
    job_return.status = failed_status
    job_return._return_value = error


def job_return_value_is_none(job_return: Any) -> bool:
    """``job_return.return_value`` without raising for a failed job (the property re-raises)."""
    return job_return._return_value is None


# -- optuna 2.10.1 (with SQLAlchemy 2.1.9, alembic 1.20.1) ---------------------------------------------
def optuna_sqlite_stamp_fix() -> None:
    """Optuna 2.x (what hydra-optuna-sweeper allows) stamps a new SQLite storage's schema version on a
    connection that SQLAlchemy 2 never commits, so the storage cannot be opened again. Commit it."""
    import optuna

    if int(optuna.__version__.split(".")[0]) >= 3:
        return
    try:
        import alembic.migration
        import sqlalchemy
        from optuna.storages._rdb.storage import _VersionManager
    except ImportError:
        return
    if int(sqlalchemy.__version__.split(".")[0]) < 2 or getattr(_VersionManager, "_vit_ft_compat", False):
        return

    def _set_alembic_revision(self: Any, revision: str) -> None:
        with self.engine.begin() as conn:
            context = alembic.migration.MigrationContext.configure(conn)
            context.stamp(self._create_alembic_script(), revision)

    _VersionManager._set_alembic_revision = _set_alembic_revision
    _VersionManager._vit_ft_compat = True


def mark_trial_interrupted(study: Any, trial: Any) -> None:
    """Tag a trial left RUNNING by a killed sweep (optuna has no public per-trial attribute setter for a
    trial it did not hand out)."""
    study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)


def reseed_sampler(sampler: Any, seed: int) -> None:
    """Reseed a seeded sampler (and its start-up random sampler) in place; optuna keeps the generator
    private, so a resumed study would otherwise replay the first run's start-up points."""
    import numpy as np

    rng = np.random.RandomState(seed % (2**32))
    for obj in (sampler, getattr(sampler, "_random_sampler", None)):
        if obj is not None and hasattr(obj, "_rng"):
            obj._rng = np.random.RandomState(rng.randint(2**31))


# -- datasets 5.2.0 -----------------------------------------------------------------------------------
def hf_dataset_fingerprint(ds: Any) -> str | None:
    """A ``datasets.Dataset``'s content hash, which changes with its data and every transform applied;
    datasets keeps it private (``_fingerprint``) though its own cache is keyed by it."""
    fp = getattr(ds, "_fingerprint", None)
    return None if fp is None else str(fp)


# -- huggingface_hub 2.4.0 with timm 1.0.31 ----------------------------------------------------------
# huggingface_hub reads HF_HUB_OFFLINE from the environment once, at import, into
# huggingface_hub.constants.HF_HUB_OFFLINE, which timm.create_model(pretrained=True) consults; the
# constant is set for the call so that the environment of *now* applies.
# Checked on huggingface_hub 2.4.0 with timm 1.0.31.
@contextmanager
def hub_offline_mode(offline: bool) -> Iterator[None]:
    """``huggingface_hub.constants.HF_HUB_OFFLINE = offline`` inside the block, restored after it."""
    from huggingface_hub import constants

    was_offline = constants.HF_HUB_OFFLINE
    try:
        constants.HF_HUB_OFFLINE = offline
        yield
    finally:
        constants.HF_HUB_OFFLINE = was_offline


# -- timm 1.0.31 -------------------------------------------------------------------------------------
# timm has no public loader for the original google-research / big_vision ViT .npz checkpoints;
# its private timm.models.vision_transformer._load_weights(model, path) is the one that knows the
# flax names (it backs timm's own pretrained .npz tags). Checked on timm 1.0.31.
def load_vit_npz(model: nn.Module, path: str | Path) -> None:
    """Copy the arrays of a ViT ``.npz`` into ``model`` (a timm VisionTransformer of the same shape)."""
    from timm.models.vision_transformer import _load_weights

    _load_weights(model, str(path))


# -- lightning 2.6.6: where a checkpoint saved now resumes ---------------------------------------------
def batches_done_in_epoch(trainer: Any) -> int:
    """Training batches of the current epoch that a run resumed from a checkpoint saved *now* will not
    run again (so its data must start after them).

    Lightning restores ``fit_loop.epoch_loop.batch_progress`` and resumes after ``completed``, except
    for a checkpoint saved in ``on_train_batch_end`` (``processed`` is one ahead of ``completed``
    there), whose batch it counts as done. Checked on lightning 2.6.6 (``_TrainingEpochLoop.reset``)."""
    p = trainer.fit_loop.epoch_loop.batch_progress.current
    if p.ready == p.started == p.processed == p.completed + 1:
        return int(p.processed)
    return int(p.completed)


def model_checkpoint_save_now(callback: Any, trainer: Any) -> bool:
    """Have a ``ModelCheckpoint`` save as its own step trigger does (top-k, then ``last``), unless it
    already saved at this step or its monitored metric is missing; whether it saved. What
    ``ModelCheckpoint.on_train_batch_end`` runs once its trigger fires, through its protected methods.
    Checked on lightning 2.6.6."""
    if callback._should_skip_saving_checkpoint(trainer):
        return False
    candidates = callback._monitor_candidates(trainer)
    if callback.monitor is not None and callback.monitor not in candidates:
        return False
    callback._save_topk_checkpoint(trainer, candidates)
    callback._save_last_checkpoint(trainer, candidates)
    return True
