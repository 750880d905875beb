"""Experiment loggers. wandb goes offline by itself when no credentials are found; one run folder is
one wandb run (its id kept in ``<run folder>/wandb_run_id``)."""

from __future__ import annotations

import glob
import json
import logging
import netrc
import os
import secrets
import string
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from vit_ft.compat import drop_wandb_anonymous
from vit_ft.dist import is_rank_zero
from vit_ft.errors import ConfigError
from vit_ft.io import write_text_atomic

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"


def folder_wandb_id(run_dir: str, resuming: bool = False) -> str:
    """The id of the wandb run of ``run_dir``: the one in ``<run_dir>/wandb_run_id`` when a run there
    wrote it (a resume, or a restart after a run killed before its first checkpoint: any later run in
    the folder continues it), else a new one, saved there by rank 0 ("" on other ranks, which log nothing)."""
    path = os.path.join(run_dir, WANDB_ID_FILE)
    try:
        with open(path) as f:
            saved = f.read().strip()
    except OSError:
        saved = ""
    if saved:
        if not resuming and is_rank_zero():
            log.info(
                "wandb: continuing this run folder's wandb run %s (steps it holds are not logged again)",
                saved,
            )
        return saved
    if not is_rank_zero():
        return ""
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # wandb's form
    os.makedirs(run_dir, exist_ok=True)
    write_text_atomic(path, new + "\n")
    return new


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


class ResumableWandbLogger(WandbLogger):
    """A WandbLogger that, continuing the wandb run ``id``, does not log again what that run already holds.

    A run resumed from a checkpoint older than its last log (killed between two step checkpoints) replays
    the steps in between. The local record of the wandb run (``<save_dir>/wandb/*-<id>/run-*.wandb``, kept
    online and offline, holding what wandb actually wrote before the kill) gives the last step logged and
    the keys logged at it: a replayed step below it is dropped, and at it only keys not logged yet are
    sent. The run's history then has each step once, none missing, online and offline alike (wandb cannot
    tell a resumed offline run what it logged before)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.floor, self.floor_keys, self.dropped = -1, set(), 0
        run_id, save_dir = kwargs.get("id"), kwargs.get("save_dir") or "."
        if run_id:
            files = sorted(glob.glob(os.path.join(str(save_dir), "wandb", f"*run-*-{run_id}", "run-*.wandb")))
            self.floor, self.floor_keys = logged_steps(files)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None and step <= self.floor:
            fresh = {k: v for k, v in metrics.items() if step == self.floor and k not in self.floor_keys}
            self.dropped += len(metrics) - len(fresh)
            if not fresh:
                return
            metrics = fresh
        super().log_metrics(metrics, step)


def logged_steps(files: Sequence[str], step_key: str = "trainer/global_step") -> tuple[int, set[str]]:
    """The last ``step_key`` in the history of wandb run files and the keys logged at it; (-1, {}) for none.
    A record cut short by a kill ends the scan of its file."""
    last, keys = -1, set()
    for path in files:
        for row in wandb_history(path):
            step = row.get(step_key)
            if not isinstance(step, (int, float)):
                continue
            if step > last:
                last, keys = int(step), set()
            if step == last:
                keys |= set(row)
    return last, keys


def wandb_history(path: str) -> Iterator[dict[str, Any]]:
    """The history rows of a ``run-*.wandb`` file (LevelDB log framing: 32 KiB blocks of 7-byte-headed
    chunks, around ``wandb.proto`` records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return
    if data[:4] != b":W&B":
        return
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        off = pos % block
        if block - off < 7:
            pos += block - off
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            pos += block - off
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        if len(chunk) < length:
            return
        pos += 7 + length
        if kind in (2, 3):  # first / middle part of a record
            buf = chunk if kind == 2 else buf + chunk
            continue
        raw, buf = (buf + chunk if kind == 4 else chunk), b""
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a damaged record: stop here
            return
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                try:
                    row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
                except ValueError:
                    continue
            yield row


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
