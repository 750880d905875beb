"""Experiment loggers. wandb goes offline by itself when no credentials are found."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence

from lightning.pytorch.loggers import WandbLogger

from vit_ft.compat import drop_wandb_anonymous
from vit_ft.errors import ConfigError

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
) -> WandbLogger:
    resolved = resolve_wandb_mode(mode)
    if resolved == "offline" and mode in (None, "auto") and not os.environ.get("WANDB_MODE"):
        log.warning("wandb: no credentials found (WANDB_API_KEY or `wandb login`); logging offline")
    os.makedirs(save_dir, exist_ok=True)
    logger = WandbLogger(
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
