"""One job of a Hydra multirun: a failure is that job's result, never the sweep's end.

An error (a bad value, a non-finite loss, out of memory) is logged, recorded as ``status: failed``
with its message in the job's ``metrics.json``, and the job returns ``None`` (a failed trial for
Optuna). After each job the DDP state Lightning left in the sweep process (process group,
``MASTER_PORT``/``LOCAL_RANK``/... variables, the child-process watchdog) is reset, so the next job
starts its own ranks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig

from vit_ft.compat import drain_child_watchdogs, tame_child_watchdog
from vit_ft.dist import DIST_ENV, is_rank_zero
from vit_ft.errors import run_fault, user_error, user_message
from vit_ft.io import write_json_atomic

log = logging.getLogger("vit_ft.sweep")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the last line of a message wrapped by a worker or Hydra)."""
    user = user_message(exc)
    if user is not None:
        return user
    fault = run_fault(exc)
    if fault is not None:
        return str(fault)
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_failed_job(cfg: Any, exc: BaseException) -> None:
    """Log ``exc`` (with its traceback, into the job's log file) and write ``status: failed``."""
    msg = one_line(exc)
    num = _job_num()
    if user_error(exc) is None and run_fault(exc) is None:  # a bug: keep the traceback in the job's log
        log.error("job %s failed: %s\n%s", num, msg, "".join(traceback.format_exception(exc)))
    print(f"error: job {num} failed: {msg} (the sweep goes on)", file=sys.stderr, flush=True)
    if is_rank_zero():
        write_failed_metrics(cfg, exc)


def write_failed_metrics(cfg: Any, exc: BaseException, **extra: Any) -> str:
    """``status: failed`` with the error's one line in the job's ``metrics.json`` (what it already
    holds kept, ``extra`` added); returns the file's path."""
    msg = one_line(exc)
    try:
        out = str(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - the config itself may be what failed
        out = HydraConfig.get().runtime.output_dir
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "metrics.json")
    payload: dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            payload = json.loads(open(path).read())
        except (OSError, ValueError):
            payload = {}
    payload.update(
        status="failed",
        error=msg,
        error_type="ConfigError" if user_error(exc) is not None else type(run_fault(exc) or exc).__name__,
        value=None,
        optimized_metric=str(cfg.get("optimized_metric") or "val/acc1") if hasattr(cfg, "get") else None,
        run_dir=out,
        **extra,
    )
    write_json_atomic(path, payload)
    return path


def _job_num() -> Any:
    try:
        return HydraConfig.get().job.num
    except Exception:  # noqa: BLE001
        return "?"


def reset_distributed(saved_env: dict[str, str | None]) -> None:
    """Undo what Lightning's DDP launcher left in this process, so the next job starts fresh ranks."""
    launched = saved_env.get("LOCAL_RANK") is None and os.environ.get("LOCAL_RANK") is not None
    drain_child_watchdogs()
    if not launched:
        return  # ranks come from torchrun/SLURM: their process group and variables stay
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001
        log.warning("could not destroy the process group of the last job: %s", e)
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_sweep_job(fn: Callable[[Any], Any], cfg: Any) -> Any:
    """Run one job of a multirun: a failure is recorded and returns ``None``; the sweep goes on."""
    saved_env = {k: os.environ.get(k) for k in DIST_ENV}
    tame_child_watchdog()
    try:
        value = fn(cfg)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    except Exception as e:  # noqa: BLE001 - any error of one job is that job's result
        record_failed_job(cfg, e)
        return None
    finally:
        reset_distributed(saved_env)
