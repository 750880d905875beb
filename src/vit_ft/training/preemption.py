"""Preemption: SIGTERM (SLURM, Kubernetes) or SIGUSR1 (SLURM's ``--signal``) → a checkpoint at the next
optimizer-step boundary, then exit status 75 ("resumable"); under SLURM the job is requeued.

Lightning 2.6 on its own prints ``Received SIGTERM: 15``, stops after the current *micro*-batch (or in the
middle of validation), saves nothing and exits 0; under SLURM its ``SLURMEnvironment(auto_requeue=True)``
writes ``hpc_ckpt_N.ckpt`` from inside the signal handler, wherever the step is. :class:`Preemption`
replaces those handlers once training starts: the handler only notes the signal; the callback acts at the
end of the next batch that completed an optimizer step (``trainer.accumulate_grad_batches`` respected),
agreed over all DDP ranks, with ``trainer.save_checkpoint(<dirpath>/last.ckpt)`` (atomic through the
project's checkpoint IO), and raises :class:`Preempted`, which the entry point turns into one line and
exit status :data:`RESUMABLE_EXIT`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from vit_ft.errors import ConfigError
from vit_ft.training.checkpointing import last_checkpoint_file
from vit_ft.training.steps import is_step_boundary

log = logging.getLogger("vit_ft")

# EX_TEMPFAIL (sysexits.h): "temporary failure, the user is invited to retry" — a scheduler (or a shell
# loop) re-runs the same command, which resumes from last.ckpt (ckpt_path=auto).
RESUMABLE_EXIT = 75


class Preempted(SystemExit):
    """Training stopped on a signal after saving a resumable checkpoint (exit status 75).

    A ``SystemExit``: it passes through Lightning's and a sweep's error handling (the whole process is
    being stopped, not one job), and exits 75 even where nothing catches it."""

    def __init__(self, signame: str, ckpt_path: str, step: int, requeued: str | None = None) -> None:
        super().__init__(RESUMABLE_EXIT)
        self.signame, self.ckpt_path, self.step, self.requeued = signame, ckpt_path, step, requeued
        self.chain: Callable[..., Any] | None = (
            None  # a launcher's own handler (submitit), run after the line
        )
        self.signum: int = 0

    def line(self) -> str:
        what = (
            f"SLURM job {self.requeued} requeued; it resumes by itself"
            if self.requeued
            else ("re-run the same command (same hydra.run.dir) to resume from it")
        )
        return (
            f"preempted: {self.signame} received; saved {self.ckpt_path} at step {self.step}; "
            f"exit status {RESUMABLE_EXIT} (resumable): {what}"
        )


# -- SLURM ---------------------------------------------------------------------------------------------
def slurm_job_id(env: Mapping[str, str]) -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` in a job array, else ``SLURM_JOB_ID``."""
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else env.get("SLURM_JOB_ID")
    return job if job and re.fullmatch(r"[0-9]+(_[0-9]+)?", job) else None


def under_submitit(env: Mapping[str, str]) -> bool:
    """A job started by submitit (``hydra/launcher=slurm``): submitit requeues it on its own signal."""
    return bool(env.get("SUBMITIT_EXECUTOR"))


def should_requeue(signame: str, env: Mapping[str, str], requeue: bool) -> str | None:
    """The SLURM job to requeue for ``signame``, or None.

    Only SIGUSR1 (what ``#SBATCH --signal=USR1@<s>`` sends before the time limit) requeues: SIGTERM under
    SLURM is ``scancel`` or a preemption that SLURM requeues itself; a submitit job is requeued by submitit;
    and an interactive ``srun`` (no batch script) has nothing to requeue."""
    if not requeue or signame != "SIGUSR1" or under_submitit(env):
        return None
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return slurm_job_id(env)


def requeue_slurm_job(job_id: str, run: Callable[[list[str]], int] | None = None) -> bool:
    """``scontrol requeue <job_id>``; whether it worked (a warning when not)."""
    run = run or (lambda cmd: subprocess.call(cmd))  # noqa: S603 - fixed command, checked job id
    try:
        code = run(["scontrol", "requeue", job_id])
    except OSError as e:
        log.warning("preemption: could not run scontrol to requeue SLURM job %s: %s", job_id, e)
        return False
    if code != 0:
        log.warning("preemption: scontrol requeue %s exited %s; the job is not requeued", job_id, code)
    return code == 0


# -- the callback ----------------------------------------------------------------------------------------
class Preemption(Callback):
    """Save ``<dirpath>/<filename>`` at the next optimizer-step boundary after one of ``signals``, then
    raise :class:`Preempted`.

    ``requeue``: under SLURM (a batch job, not submitit's), requeue the job with ``scontrol requeue`` after
    SIGUSR1. A launcher's own handler for a signal (submitit's, for its ``SUBMITIT_PREEMPT_SIGNAL``, USR2
    by default) is called after the checkpoint is saved, so that it requeues the job as it would have.

    On one process the flag is a Python attribute (no device work). Under DDP the ranks agree on it with
    one all-reduce every ``check_every`` optimizer steps (a signal waits at most that many steps), not
    every step: each agreement is a collective and a device-to-host read."""

    def __init__(
        self,
        dirpath: str,
        filename: str | None = None,
        signals: Sequence[str] = ("SIGTERM", "SIGUSR1"),
        requeue: bool = True,
        check_every: int = 10,
    ) -> None:
        self.dirpath, self.requeue = str(dirpath), bool(requeue)
        self.check_every = max(1, int(check_every))  # optimizer steps between two agreements (DDP)
        self.filename = os.path.basename(self.resume_file(self.dirpath, filename))
        self.signals = [str(s) if str(s).startswith("SIG") else f"SIG{s}" for s in signals]
        for name in self.signals:
            if not hasattr(signal, name):
                raise ConfigError(
                    f"callbacks.preemption.signals: unknown signal {name!r}; use names like SIGTERM, SIGUSR1"
                )
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._installed = False
        self._pending: Preempted | None = None

    FREE_ON_RESUME = ("",)  # its whole config may change when a run resumes (see tasks/resume.py)

    @staticmethod
    def resume_file(dirpath: str, filename: str | None) -> str:
        """``<dirpath>/<filename>``, by default the step checkpoints' ``last.ckpt``."""
        return os.path.join(dirpath, filename) if filename else last_checkpoint_file(dirpath)

    # signal handling
    def _signals(self) -> list[int]:
        names = list(self.signals)
        if under_submitit(os.environ):
            names.append("SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").removeprefix("SIG"))
        return sorted({int(getattr(signal, n)) for n in names if hasattr(signal, n)})

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.received is None:  # only note it: the callback acts at a step boundary
            self.received = signum

    def install(self) -> None:
        """Take over the signals (after Lightning registered its own handlers); main thread only."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        for signum in self._signals():
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous, self._installed = {}, False

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.uninstall()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None or not is_step_boundary(trainer, batch_idx):
            return
        local = self.received is not None
        if trainer.world_size == 1:
            stop = local
        elif trainer.global_step % self.check_every:  # the ranks agree every check_every steps only:
            return  # each agreement is a collective and a device-to-host read
        else:
            stop = trainer.strategy.reduce_boolean_decision(local, all=False)
        if not stop:
            return
        signum = self.received or int(signal.SIGTERM)  # another rank got it
        signame = signal.Signals(signum).name
        path = os.path.join(self.dirpath, self.filename)
        trainer.save_checkpoint(path)  # every rank: a collective under DDP; rank 0 writes
        job = should_requeue(signame, os.environ, self.requeue) if trainer.is_global_zero else None
        requeued = job if job and requeue_slurm_job(job) else None
        exc = Preempted(signame, path, int(trainer.global_step), requeued)
        exc.signum = signum
        previous = self._previous.get(signum)
        if callable(previous) and getattr(previous, "__module__", "").startswith("submitit"):
            exc.chain = previous
        # Raised at the next hook, after Lightning has logged this step's metrics (they belong to the
        # checkpoint's past: a resumed run starts with the next step and logs nothing twice).
        self._pending = exc

    def _raise_pending(self) -> None:
        exc, self._pending = self._pending, None
        if exc is not None:
            raise exc

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._raise_pending()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_pending()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_pending()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_pending()
