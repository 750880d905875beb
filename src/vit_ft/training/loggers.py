"""Experiment loggers. wandb goes offline by itself when no credentials are found."""

from __future__ import annotations

import json
import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from vit_ft.compat import drop_wandb_anonymous
from vit_ft.errors import ConfigError
from vit_ft.io import write_json_atomic

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str | None) -> str:
    """``auto`` → ``online`` with credentials, else ``offline``; ``WANDB_MODE`` wins when set."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    if mode in (None, "auto"):
        return "online" if wandb_credentials_present() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode={mode!r} must be auto, online, offline or disabled")
    return mode


STEPS_FILE = "wandb_steps.json"


class ResumableWandbLogger(WandbLogger):
    """A WandbLogger that keeps, in ``steps_file``, the last step it logged and the keys logged at it.

    A run resumed from a checkpoint older than its last log (killed between two step checkpoints) replays
    those steps; they are already in the wandb run, so a step below the recorded one is dropped, and at
    the recorded step only keys not logged yet are sent: the run's history has each step once, none
    missing, online and offline alike (wandb itself cannot tell an offline run what it logged before)."""

    def __init__(self, *args: Any, steps_file: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steps_file, self.run_id = steps_file, kwargs.get("id")
        self.floor, self.floor_keys = -1, set()
        self.dropped = 0
        saved = read_steps(steps_file) if steps_file else None
        if saved and saved.get("id") == kwargs.get("id"):
            self.floor, self.floor_keys = int(saved.get("step", -1)), set(saved.get("keys", []))
        self._last, self._last_keys = self.floor, set(self.floor_keys)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None and step <= self.floor:
            fresh = {k: v for k, v in metrics.items() if step == self.floor and k not in self.floor_keys}
            self.dropped += len(metrics) - len(fresh)
            if not fresh:
                return
            metrics = fresh
        super().log_metrics(metrics, step)
        if step is None or self.steps_file is None:
            return
        if step > self._last:
            self._last, self._last_keys = step, set()
        if step == self._last:
            self._last_keys |= set(metrics)
            payload = {"id": self.run_id, "step": step, "keys": sorted(self._last_keys)}
            write_json_atomic(self.steps_file, payload)


def read_steps(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            loaded = json.load(f)
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def build_wandb_logger(
    project: str = "vit-ft",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    save_dir: str = ".",
    mode: str = "auto",
    entity: str | None = None,
    log_model: bool = False,
    job_type: str | None = None,
    id: str | None = None,  # noqa: A002 - wandb's name for it
) -> WandbLogger:
    """A WandbLogger (offline without credentials). ``id``: continue that wandb run (``resume="allow"``),
    logging only the steps it has not logged yet (see :class:`ResumableWandbLogger`)."""
    resolved = resolve_wandb_mode(mode)
    if resolved == "offline" and mode in (None, "auto") and not os.environ.get("WANDB_MODE"):
        log.warning("wandb: no credentials found (WANDB_API_KEY or `wandb login`); logging offline")
    os.makedirs(save_dir, exist_ok=True)
    logger = ResumableWandbLogger(
        steps_file=os.path.join(save_dir, STEPS_FILE) if id else None,
        id=id,
        resume="allow" if id else None,
        project=project,
        name=name,
        group=group,
        tags=list(tags) if tags else None,
        save_dir=save_dir,
        offline=resolved == "offline",
        mode=resolved,
        entity=entity,
        log_model=log_model,
        job_type=job_type,
    )
    return drop_wandb_anonymous(logger)
