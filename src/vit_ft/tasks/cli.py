"""How the entry scripts run a task: user errors as one line, sweep jobs that fail alone, DDP ranks
that re-enter the same job."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd, to_absolute_path
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from vit_ft.dist import is_rank_zero
from vit_ft.errors import run_fault, user_message
from vit_ft.sweeps.job import run_sweep_job
from vit_ft.tasks.outputs import finish_wandb
from vit_ft.training.preemption import RESUMABLE_EXIT, Preempted


@dataclass
class NoRunDirConfig:
    """Base of the structured configs of commands that write only what they are told to
    (``predict.py``, ``export.py``): no ``outputs/<date>/`` folder, no Hydra log file."""

    defaults: list[Any] = field(
        default_factory=lambda: [
            "_self_",
            {"override hydra/job_logging": "none"},
            {"override hydra/hydra_logging": "none"},
        ]
    )
    hydra: Any = field(default_factory=lambda: {"run": {"dir": "."}, "output_subdir": None})


def hydra_info() -> dict[str, Any]:
    """Whether this is a sweep job (its folder, number, overrides); empty outside a Hydra app."""
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


def hydra_job_command(local_rank: int) -> tuple[list[str], str]:
    """Command for DDP ranks > 0: the same job (its overrides, its output folder), never the sweep.

    Lightning's own version re-runs ``sys.argv``, so a ``-m`` multirun would start a new sweep in
    every rank. Here each rank re-enters exactly this job.
    """
    hc = HydraConfig.get()
    main = sys.modules["__main__"]
    if main.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", main.__spec__.name]
    if hc.job.config_name:
        command += [f"--config-name={hc.job.config_name}"]
    command += [
        f"--config-dir={s.path}"
        for s in hc.runtime.config_sources
        if s.provider == "command-line" and s.schema == "file"
    ]
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir={hc.runtime.output_dir}",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
        "hydra/hydra_logging=none",
    ]
    return command, get_original_cwd()


class _DropAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing ..." lines advertise other products; they say nothing
    about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip:")


def quiet_known_noise() -> None:
    """Drop output that looks like a problem but is none: Lightning's product tips and its use of a
    torch pytree API that torch >= 2.9 deprecates (internal to Lightning, nothing a user can change)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in lg.filters):
            lg.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def stop_preempted(e: BaseException) -> None:
    """A run stopped by a signal: one line (rank 0), the wandb run marked preempted, exit status 75.
    A launcher's own requeue handler (submitit's) runs last; it exits by itself."""
    if isinstance(e, Preempted):
        line = e.line()
    else:  # Lightning's own SIGTERM stop outside training steps (e.g. the final evaluation)
        line = (
            "preempted: SIGTERM received outside the training steps; exit status "
            f"{RESUMABLE_EXIT} (resumable): re-run the same command (same hydra.run.dir) to finish"
        )
    if is_rank_zero():
        print(line, file=sys.stderr, flush=True)
    finish_wandb(preempted=True)
    chain = getattr(e, "chain", None)
    if chain is not None:
        chain(e.signum, None)  # type: ignore[attr-defined]
    # Rank 0's status is the run's (srun reports the highest): ranks > 0 end quietly, or Lightning's DDP
    # watchdog would SIGKILL rank 0 for a child's non-zero exit while it is still closing the run.
    sys.exit(RESUMABLE_EXIT if is_rank_zero() else 0)


def run_cli(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call ``fn(cfg)``; a user error becomes one ``error:`` line on stderr and exit status 2, a fault
    the run detected (:class:`~vit_ft.errors.RunFault`) one line and status 1, a preemption (SIGTERM,
    SIGUSR1) one line and exit status 75. In a sweep, a failing job is recorded and the sweep goes on;
    a preemption stops the sweep (its process is being stopped)."""
    quiet_known_noise()
    try:
        if hydra_info().get("multirun"):
            return run_sweep_job(fn, cfg)
        return fn(cfg)
    except (Preempted, SIGTERMException) as e:
        stop_preempted(e)
    except Exception as e:
        line, status = user_message(e), 2
        if line is None and run_fault(e) is not None:
            line, status = str(run_fault(e)), 1
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr, flush=True)
        finish_wandb()
        sys.exit(status)
