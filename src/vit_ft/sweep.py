"""What a job of a sweep needs beyond a single run, and the checks a sweep makes before it starts.

* :func:`run_sweep_job` — one job of a Hydra multirun: an error (a bad value, a non-finite loss, out of
  memory) ends the job, not the sweep: it is logged, recorded as ``status: failed`` with its message in the
  job's ``metrics.json`` and the job returns ``None`` (a failed trial for Optuna). After each job the DDP
  state Lightning left in the sweep process (process group, ``MASTER_PORT``/``LOCAL_RANK``/... variables,
  the child-process watchdog) is reset, so the next job starts its own ranks.
* :class:`NonFiniteLossGuard` — a Lightning callback that stops a run at its first NaN/inf training loss
  (on every rank at once) instead of training on garbage.
* :func:`check_sweep` — run by the Hydra callback before any job: swept keys exist, an Optuna search space
  is not empty, an Optuna storage holds this study (or none). A problem is one ``error:`` line, exit 2.
* :func:`optuna_sweep` — the Optuna sweeper with resume: ``hydra.sweeper.n_trials`` counts the whole
  study, so re-running the same command with the same storage runs only the missing trials; job folders
  are numbered like the trials.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import traceback
from typing import Any

from lightning.pytorch.callbacks import Callback

log = logging.getLogger("vit_ft.sweep")

DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


# -- one job of a sweep ------------------------------------------------------------------------------
class NonFiniteLossGuard(Callback):
    """Raise ``FloatingPointError`` at the first non-finite training loss (checked every
    ``every_n_steps`` batches; under DDP one rank's NaN stops every rank, so none hangs)."""

    def __init__(self, every_n_steps: int = 1) -> None:
        self.every_n_steps = max(1, int(every_n_steps))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % self.every_n_steps:
            return
        import torch

        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise FloatingPointError(
                f"non-finite training loss at step {trainer.global_step} (batch {batch_idx}); "
                "lower optimizer.lr or check the data"
            )


def _global_rank() -> int:
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return int(os.environ.get("LOCAL_RANK", 0) or 0) + int(os.environ.get("NODE_RANK", 0) or 0)


def _user_error(exc: BaseException) -> BaseException | None:
    from vit_ft import run

    finder = getattr(run, "_user_error", None)
    return finder(exc) if callable(finder) else None


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (the last line of a message wrapped by a worker or Hydra)."""
    user = _user_error(exc)
    if user is not None:
        lines = str(user).strip().splitlines()
        return (lines[-1] if lines else "invalid configuration").split("ConfigError: ", 1)[-1]
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_failed_job(cfg: Any, exc: BaseException) -> None:
    """Log ``exc`` (with its traceback, into the job's log file) and write ``status: failed``."""
    msg = one_line(exc)
    num = _job_num()
    if _user_error(exc) is None:  # a bug or a runtime failure: keep the traceback in the job's log
        log.error("job %s failed: %s\n%s", num, msg, "".join(traceback.format_exception(exc)))
    print(f"error: job {num} failed: {msg} (the sweep goes on)", file=sys.stderr, flush=True)
    if _global_rank() != 0:
        return
    try:
        out = str(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - the config itself may be what failed
        from hydra.core.hydra_config import HydraConfig

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
        error_type="ConfigError" if _user_error(exc) is not None else type(exc).__name__,
        value=None,
        optimized_metric=str(cfg.get("optimized_metric") or "val/acc1") if hasattr(cfg, "get") else None,
        run_dir=out,
    )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _job_num() -> Any:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().job.num
    except Exception:  # noqa: BLE001
        return "?"


def _tame_child_watchdog() -> None:
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


def _reset_distributed(saved_env: dict[str, str | None]) -> None:
    """Undo what Lightning's DDP launcher left in this process, so the next job starts fresh ranks."""
    launched = saved_env.get("LOCAL_RANK") is None and os.environ.get("LOCAL_RANK") is not None
    for th in threading.enumerate():
        if type(th).__name__ == "_ChildProcessObserver":
            for p in getattr(th, "_child_processes", []):
                try:
                    p.wait(timeout=120)
                except Exception:  # noqa: BLE001 - a hung rank must not hang the sweep
                    p.kill()
                    p.wait()
            th._child_processes = []  # its last poll then sees nothing to report
            th._finished = True
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


def run_sweep_job(fn: Any, cfg: Any) -> Any:
    """Run one job of a multirun: a failure is recorded and returns ``None``; the sweep goes on."""
    saved_env = {k: os.environ.get(k) for k in DIST_ENV}
    _tame_child_watchdog()
    try:
        value = fn(cfg)
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    except Exception as e:  # noqa: BLE001 - any error of one job is that job's result
        record_failed_job(cfg, e)
        return None
    finally:
        _reset_distributed(saved_env)


# -- before a sweep starts ---------------------------------------------------------------------------
def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _is_optuna(cfg: Any) -> bool:
    return "optuna" in str(cfg.hydra.sweeper.get("_target_", "")).lower()


def sweep_arguments(cfg: Any) -> list[str]:
    """The sweep's overrides as the sweeper sees them: ``hydra.sweeper.params``, then the command line."""
    from omegaconf import OmegaConf

    params = cfg.hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += [str(o) for o in cfg.hydra.overrides.task]
    return args


def _sample_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """One composable value per override (the first of a sweep); the swept keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(args)
    fixed: dict[str, str] = {}
    sweeps: dict[str, str] = {}
    for o in parsed:  # as the Optuna sweeper: a fixed value of a key wins over a range of it
        key = o.get_key_element()
        if o.is_delete():
            fixed[key] = key
        elif o.is_sweep_override():
            value = str(o.value().start) if o.is_interval_sweep() else next(iter(o.sweep_string_iterator()))
            sweeps[key] = f"{key}={value}"
        else:
            fixed[key] = f"{key}={o.get_value_element_as_str()}"
    swept = [k for k in sweeps if k not in fixed]
    return list(fixed.values()) + [sweeps[k] for k in swept], swept


def check_sweep(cfg: Any) -> None:
    """Fail with one line before any job runs: unknown swept key, empty search space, foreign storage."""
    from hydra.core.global_hydra import GlobalHydra

    args = sweep_arguments(cfg)
    try:
        overrides, swept = _sample_overrides(args)
    except Exception as e:  # noqa: BLE001 - the parser's message
        fail(f"cannot parse the sweep's overrides: {' '.join(str(e).split())}")
        return
    if _is_optuna(cfg) and not swept:
        fail(
            "the Optuna search space is empty: give hydra.sweeper.params or sweep values on the command line, "
            "e.g. 'optimizer.lr=tag(log,interval(0.001,0.1))' or 'optimizer.lr=choice(0.003,0.01)'"
        )
    if not swept:
        return
    try:
        GlobalHydra.instance().config_loader().load_sweep_config(cfg, overrides)
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        detail = " ".join(ln for ln in lines[:3] if not ln.startswith(("full_key", "object_type")))
        m = re.search(r"'([^']+)'", lines[0] if lines else "")
        key = m.group(1) if m else None
        what = (
            f"the swept key '{key}' is not in the config"
            if key and "override" in lines[0]
            else "a sweep value"
        )
        fail(f"{what} ({detail}); check its spelling, or prefix it with + to add a new key")
    if _is_optuna(cfg) and cfg.hydra.sweeper.get("storage"):
        _check_storage(cfg, swept)


def optuna_compat() -> None:
    """Optuna 2.x (what hydra-optuna-sweeper 1.2 allows) stamps a new SQLite storage's schema version on
    a connection that SQLAlchemy 2 never commits, so the storage cannot be opened again. Commit it."""
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


def _check_storage(cfg: Any, swept: list[str]) -> None:
    import optuna

    optuna_compat()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    sw = cfg.hydra.sweeper
    storage, name = str(sw.storage), sw.get("study_name")
    if storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///") :]
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    fail(f"hydra.sweeper.storage={storage}: {path} is not an SQLite file (an Optuna study)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        summaries = optuna.get_all_study_summaries(storage)
    except Exception as e:  # noqa: BLE001
        fail(
            f"hydra.sweeper.storage={storage} cannot be opened as an Optuna storage: {' '.join(str(e).split())[:300]}"
        )
        return
    names = [s.study_name for s in summaries]
    if not names:
        return
    if name is None or name not in names:
        fail(
            f"hydra.sweeper.storage={storage} holds the study {', '.join(repr(n) for n in names)}, not "
            f"{name!r}: resume it with hydra.sweeper.study_name=<its name> and its search space, or use a new "
            "storage file"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    ours = [d if isinstance(d, str) else d.name for d in _directions(sw)]
    theirs = [d.name.lower() for d in study.directions]
    if [d.lower() for d in ours] != theirs:
        fail(
            f"the study {name!r} in {storage} was run to {'/'.join(theirs)} but this sweep asks to "
            f"{'/'.join(ours)}; use the same hydra.sweeper.direction or a new study"
        )
    keys = set()
    for t in study.get_trials(deepcopy=False):
        keys |= set(t.params)
    wanted = {k.lstrip("+~") for k in swept}
    if keys and keys != wanted:
        fail(
            f"the study {name!r} in {storage} searched {sorted(keys)} but this sweep searches {sorted(wanted)}; "
            "resume with the same search space, or use a new study_name or storage file"
        )


def _directions(sw: Any) -> list[Any]:
    d = sw.get("direction", "minimize")
    return list(d) if not isinstance(d, str) and hasattr(d, "__iter__") else [d]


# -- the Optuna sweeper with resume and readable failures ---------------------------------------------
class TrialFailed(RuntimeError):
    """A job that ran but failed (its message is in its metrics.json)."""


def _mark_failed_returns(returns: Any) -> Any:
    from hydra.core.utils import JobStatus

    for r in returns:
        if r.status == JobStatus.COMPLETED and r._return_value is None:
            out = None
            try:
                out = r.hydra_cfg.hydra.runtime.output_dir
            except Exception:  # noqa: BLE001
                pass
            msg = "the job returned no value (no optimized_metric was logged)"
            if out and os.path.isfile(os.path.join(out, "metrics.json")):
                try:
                    m = json.loads(open(os.path.join(out, "metrics.json")).read())
                    if m.get("error"):
                        msg = m["error"]
                    elif m.get("optimized_metric"):
                        msg = f"{m['optimized_metric']} was not logged or not finite"
                except (OSError, ValueError):
                    pass
            r.status = JobStatus.FAILED
            r._return_value = TrialFailed(f"job {os.path.basename(str(out))}: {msg}")
    return returns


def _reseed(impl: Any, offset: int) -> None:
    """A resumed study must not replay the random start-up points of the first run: seed + trials so far."""
    import numpy as np

    try:
        seed = impl.config.hydra.sweeper.sampler.get("seed")
    except Exception:  # noqa: BLE001
        seed = None
    if seed is None or not offset:
        return
    rng = np.random.RandomState((int(seed) + int(offset)) % (2**32))
    for obj in (impl.sampler, getattr(impl.sampler, "_random_sampler", None)):
        if obj is not None and hasattr(obj, "_rng"):
            obj._rng = np.random.RandomState(rng.randint(2**31))


def optuna_sweep(impl: Any, arguments: list[str]) -> Any:
    """``OptunaSweeperImpl.sweep`` with resume (``n_trials`` counts the whole stored study; interrupted
    trials are marked failed; job folders continue the trial numbers) and failed jobs as failed trials."""
    import optuna
    from optuna.trial import TrialState

    optuna_compat()
    if impl.storage and impl.study_name:
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:
            study = None
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state == TrialState.RUNNING:
                    study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                    study.tell(t.number, state=TrialState.FAIL)
                    log.warning("trial %d was left running by an interrupted sweep: marked failed", t.number)
            trials = study.get_trials(deepcopy=False)
            done = sum(
                1 for t in trials if t.state.name in FINISHED_STATES and not t.user_attrs.get("interrupted")
            )
            started = sum(1 for t in trials if t.state != TrialState.WAITING)
            impl.job_idx = started
            remaining = max(0, int(impl.n_trials) - done)
            log.info(
                "resuming study %r: %d of %d trials done, %d to run (jobs from #%d)",
                impl.study_name,
                done,
                impl.n_trials,
                remaining,
                started,
            )
            impl.n_trials = remaining
            _reseed(impl, started)
    launch = impl.launcher.launch

    def launch_and_mark(job_overrides: Any, initial_job_idx: int) -> Any:
        return _mark_failed_returns(launch(job_overrides, initial_job_idx=initial_job_idx))

    impl.launcher.launch = launch_and_mark
    try:
        return impl.sweep(arguments)
    except ValueError as e:
        if "No trials are completed yet" in str(e) or "Record does not exist" in str(e):
            log.error("no trial of the study completed; see the sweep report for each job's error")
            return None
        raise
