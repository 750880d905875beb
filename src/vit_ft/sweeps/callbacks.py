"""Hydra callbacks (``hydra.callbacks`` in conf/hydra/default.yaml).

:class:`SweepReport`, for every ``-m`` sweep whatever its sweeper or launcher:

* before any job: checks the sweep (:func:`vit_ft.sweeps.checks.check_sweep`: swept keys exist, an Optuna search
  space is not empty, an Optuna storage holds this study) — a problem is one ``error:`` line, exit 2;
* after each job: refreshes the report's table (markdown and CSV), so a running sweep has one;
* at the end: writes the full report (with the plot) and prints where it is. When every job failed, the
  sweep exits with status 1 (2 when they all failed on a configuration error).

Importing this module is cheap: Hydra instantiates it in every process, DDP ranks included.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from vit_ft.dist import is_rank_zero
from vit_ft.sweeps.checks import check_sweep
from vit_ft.sweeps.report import FINISHED_MARKER, write_report

log = logging.getLogger("vit_ft.sweep")


class SweepReport(Callback):
    def __init__(self, enabled: bool = True, check: bool = True, plot: bool = True) -> None:
        self.enabled, self.check, self.plot = bool(enabled), bool(check), bool(plot)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if self.check:
            check_sweep(config)
        if self.enabled:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            marker = sweep_dir / FINISHED_MARKER
            if marker.exists():
                marker.unlink()  # the sweep goes on in this folder (a resumed study)
            if is_rank_zero() and not (sweep_dir / "multirun.yaml").exists():
                # the basic sweeper writes it; Optuna's does not, and the report reads the swept keys there
                sweep_dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(config, sweep_dir / "multirun.yaml")

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if not self.enabled or not is_rank_zero():
            return
        try:
            if config.hydra.mode != RunMode.MULTIRUN:
                return
            write_report(str(config.hydra.sweep.dir), with_plot=False)
        except Exception as e:  # noqa: BLE001 - a report must never fail a job
            log.warning("could not refresh the sweep report: %s", e)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        (sweep_dir / FINISHED_MARKER).touch()
        try:
            out = write_report(sweep_dir, with_plot=self.plot)
        except Exception as e:  # noqa: BLE001
            log.warning(
                "could not write the sweep report: %s (rebuild it: python -m vit_ft.sweep_report %s)",
                e,
                sweep_dir,
            )
            return
        jobs, settings = out["jobs"], out["settings"]
        best = next((j for j in jobs if j.value is not None), None)
        lines = ["", f"sweep report  : {out['paths']['markdown']}"]
        lines += [f"{k:<14}: {v}" for k, v in out["paths"].items() if k != "markdown"]
        n_failed = sum(1 for j in jobs if j.status == "failed")
        lines.append(f"jobs          : {len(jobs)} ({n_failed} failed)")
        if best is not None:
            lines.append(f"best          : job {best.name}, {settings['metric']} = {best.value:.6g}")
        print("\n".join(lines), flush=True)
        if jobs and n_failed == len(jobs):
            first = next((j.metrics.get("error") for j in jobs if j.metrics and j.metrics.get("error")), "")
            print(
                f"error: all {len(jobs)} jobs of the sweep failed; the first: {first}",
                file=sys.stderr,
                flush=True,
            )
            all_config = all((j.metrics or {}).get("error_type") == "ConfigError" for j in jobs)
            sys.exit(2 if all_config else 1)
