"""One run per folder: ``<run dir>/.lock``, an advisory ``flock`` held by the run's rank 0 for its whole
life (:func:`run_dir_lock`). The kernel drops it when the process dies (``kill -9`` included), so a stale
lock never blocks a resume. A second run into a folder whose lock is held stops with one line naming the
holder, before Hydra writes there (:class:`RunFolderGuard`); eval/predict/export never write into a live
run's folder (:func:`refuse_live_run`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vit_ft.dist import is_rank_zero
from vit_ft.errors import ConfigError
from vit_ft.tasks.resume import read_json, read_yaml

log = logging.getLogger("vit_ft")


def held_lock(folder: str) -> str | None:
    """The lock file of the live run that holds ``folder`` or one of the folders above it (``None``: no
    live run). Probes each ``.lock`` without creating one; an unheld lock is released at once."""
    import fcntl

    here = os.path.abspath(folder)
    while True:
        path = os.path.join(here, ".lock")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return path
            except OSError:
                pass  # no flock on this file system: nothing to learn
            finally:
                os.close(fd)  # drops our shared lock, if we got it
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def refuse_live_run(folder: str, key: str) -> None:
    """eval/predict/export never write into a folder a live training run holds: one line naming it."""
    lock = held_lock(folder)
    if lock is not None:
        run_dir = os.path.dirname(lock)
        raise ConfigError(
            f"{key}={folder!r} is inside run directory {run_dir}, in use by another run ({_holder(lock)}); "
            "write somewhere else (leave it out for a folder of its own) or wait for that run to end"
        )


def refuse_training_run_dir(run_dir: str) -> None:
    """eval.py's own folder (``hydra.run.dir``) must not be a training run's: Hydra would rewrite its
    ``.hydra/`` and eval its ``metrics.json``, predictions and report. One line, before Hydra writes."""
    refuse_live_run(run_dir, "hydra.run.dir")
    saved = read_yaml(os.path.join(run_dir, ".hydra", "config.yaml")) or {}
    task = saved.get("task_name")
    if task not in (None, "eval") or os.path.isfile(os.path.join(run_dir, "config_resolved.yaml")):
        raise ConfigError(
            f"hydra.run.dir={run_dir!r} holds a training run ({task or 'train'}); eval.py writes a folder of its "
            f"own: leave hydra.run.dir out, or give a new folder (e.g. hydra.run.dir={os.path.join(run_dir, 'eval')})"
        )


def busy_line(run_dir: str, lock: str) -> str:
    return (
        f"run directory {run_dir} is in use by another run ({_holder(lock)}); wait for it to end "
        "or pick another hydra.run.dir"
    )


def refuse_busy_run_dir(run_dir: str) -> None:
    """train.py into a folder whose own run is live: one line, before Hydra rewrites its ``.hydra/``
    (rank 0 only: the other ranks of a DDP run start while rank 0 holds the lock)."""
    own = os.path.join(os.path.abspath(run_dir), ".lock")
    if is_rank_zero() and held_lock(run_dir) == own:
        raise ConfigError(busy_line(run_dir, own))


class RunFolderGuard(Callback):
    """A Hydra callback, before Hydra writes ``.hydra/`` into ``hydra.run.dir``: for eval.py
    (conf/eval.yaml) refuse a training run's folder; for train.py (``training: true``, conf/config.yaml)
    a folder whose run is live. One ``error:`` line, exit 2."""

    def __init__(self, training: bool = False) -> None:
        self.training = bool(training)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = str(config.hydra.run.dir)
        try:
            refuse_busy_run_dir(run_dir) if self.training else refuse_training_run_dir(run_dir)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)


def _holder(path: str) -> str:
    info = read_json(path) or {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}"


@contextmanager
def run_dir_lock(run_dir: str) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` for the block (rank 0 only; other ranks of the same run pass through).

    A ``flock``: released by the kernel when the holder exits or is killed, so it is never stale. On a
    file system without ``flock`` support the run goes on with a warning."""
    if not is_rank_zero():
        yield
        return
    import fcntl

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(busy_line(run_dir, path)) from None
        except OSError as e:
            log.warning("run directory lock not available on this file system (%s); running without it", e)
        else:
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the flock
