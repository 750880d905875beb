"""The Optuna sweeper with resume and readable failures.

``hydra.sweeper.n_trials`` counts the whole stored study, so re-running the same command with the same
storage runs only the missing trials (trials an interrupted sweep left running are marked failed); job
folders continue the trial numbers; a job that fails is a failed trial carrying its error.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from optuna.trial import TrialState

from vit_ft.compat import (
    fail_job_return,
    job_return_value_is_none,
    mark_trial_interrupted,
    optuna_sqlite_stamp_fix,
    reseed_sampler,
)
from vit_ft.models.streams import metric_mode

log = logging.getLogger("vit_ft.sweep")

FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


class TrialFailed(RuntimeError):
    """A job that ran but failed (its message is in its metrics.json)."""


def mark_failed_returns(returns: Any) -> Any:
    for r in returns:
        if r.status == JobStatus.COMPLETED and job_return_value_is_none(r):
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
            fail_job_return(r, JobStatus.FAILED, TrialFailed(f"job {os.path.basename(str(out))}: {msg}"))
    return returns


def _reseed(impl: Any, offset: int) -> None:
    """A resumed study must not replay the random start-up points of the first run: seed + trials so far."""
    try:
        seed = impl.config.hydra.sweeper.sampler.get("seed")
    except Exception:  # noqa: BLE001
        seed = None
    if seed is None or not offset:
        return
    reseed_sampler(impl.sampler, int(seed) + int(offset))


def settle_direction(impl: Any) -> str | None:
    """``hydra.sweeper.direction: null`` (the default): the study's direction follows ``optimized_metric``
    (``minimize`` for a loss or the calibration error, else ``maximize``), said in one line. A direction
    given is kept. Returns the one chosen here (None: given)."""
    if impl.direction not in (None, "auto"):
        return None
    metric = str((impl.config or {}).get("optimized_metric") or "val/acc1")
    impl.direction = "minimize" if metric_mode(metric) == "min" else "maximize"
    log.info(
        "optuna: direction %s, from optimized_metric=%s (hydra.sweeper.direction=minimize|maximize sets it)",
        impl.direction,
        metric,
    )
    return impl.direction


def optuna_sweep(impl: Any, arguments: list[str]) -> Any:
    """``OptunaSweeperImpl.sweep`` with resume (``n_trials`` counts the whole stored study; interrupted
    trials are marked failed; job folders continue the trial numbers), failed jobs as failed trials and
    the direction from ``optimized_metric`` (:func:`settle_direction`)."""
    settle_direction(impl)
    optuna_sqlite_stamp_fix()
    if impl.storage and impl.study_name:
        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:
            study = None
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            for t in trials:
                if t.state == TrialState.RUNNING:
                    mark_trial_interrupted(study, t)
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
        return mark_failed_returns(launch(job_overrides, initial_job_idx=initial_job_idx))

    impl.launcher.launch = launch_and_mark
    try:
        return impl.sweep(arguments)
    except ValueError as e:
        if "No trials are completed yet" in str(e) or "Record does not exist" in str(e):
            log.error("no trial of the study completed; see the sweep report for each job's error")
            return None
        raise
