"""The report of a sweep: every job with its overrides, metrics and status, best first, and a plot.

    python -m vit_ft.sweep_report multirun/train/2025-01-01_12-00-00 [--metric val/loss --direction minimize]

writes ``sweep_report.md``, ``sweep_report.csv`` and ``sweep_report.png`` into the sweep folder (the Hydra
callback :class:`vit_ft.sweeps.callbacks.SweepReport` does it when a sweep ends). It works on a sweep
that is still running: a job folder without ``metrics.json`` is ``running`` (``no result`` once the
sweep has ended: the job was killed before it could write one).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vit_ft.io import SafeCSVWriter, atomic_path, write_text_atomic
from vit_ft.report import REPORT_MD as JOB_REPORT_MD

REPORT_MD, REPORT_CSV, REPORT_PNG = "sweep_report.md", "sweep_report.csv", "sweep_report.png"
FINISHED_MARKER = ".sweep_finished"
SKIP_METRICS = {"epoch", "step", "train/lr"}


@dataclass
class Job:
    name: str
    path: Path
    overrides: list[str]
    metrics: dict[str, Any] | None
    status: str = ""
    value: float | None = None
    params: dict[str, str] = field(default_factory=dict)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    out = []
    for root, dirs, _files in os.walk(sweep_dir):
        dirs[:] = sorted(d for d in dirs if d not in (".submitit", "wandb", "checkpoints", "csv"))
        if os.path.isfile(os.path.join(root, ".hydra", "overrides.yaml")) and Path(root) != sweep_dir:
            out.append(Path(root))
            dirs[:] = []
    return sorted(out, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, str(p)))


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def sweep_settings(sweep_dir: Path) -> dict[str, Any]:
    """What ``multirun.yaml`` says: the swept keys, the optimized metric and the Optuna direction."""
    cfg = _load_yaml(sweep_dir / "multirun.yaml") or {}
    hydra = cfg.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    args = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    args += list((hydra.get("overrides") or {}).get("task") or [])
    swept: list[str] = []
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        for o in OverridesParser.create().parse_overrides(args):
            key = o.get_key_element().lstrip("+~")
            if o.is_sweep_override() and key not in swept:
                swept.append(key)
    except Exception:  # noqa: BLE001 - a report must not fail on an odd override
        pass
    direction = sweeper.get("direction")
    if isinstance(direction, list):
        direction = direction[0] if len(direction) == 1 else None
    return {
        "swept": swept,
        "metric": _resolved(cfg, "optimized_metric"),
        "direction": str(direction).lower() if direction else None,
        "sweeper": str(sweeper.get("_target_", "")),
        "storage": sweeper.get("storage"),
        "study_name": sweeper.get("study_name"),
    }


def _resolved(cfg: dict[str, Any], key: str) -> Any:
    """``cfg[key]`` with its interpolation resolved (``optimized_metric: ${monitor}``); None when it
    cannot be (the jobs' metrics.json then name the metric)."""
    value = cfg.get(key)
    if not (isinstance(value, str) and "${" in value):
        return value
    try:
        from omegaconf import OmegaConf

        return OmegaConf.select(OmegaConf.create(cfg), key, throw_on_resolution_failure=True)
    except Exception:  # noqa: BLE001 - a report must not fail on an odd config
        return None


def collect(sweep_dir: Path, metric: str | None = None) -> tuple[list[Job], dict[str, Any]]:
    sweep_dir = Path(sweep_dir)
    settings = sweep_settings(sweep_dir)
    finished = (sweep_dir / FINISHED_MARKER).exists()
    jobs = []
    for d in find_job_dirs(sweep_dir):
        overrides = [str(o) for o in (_load_yaml(d / ".hydra" / "overrides.yaml") or [])]
        metrics = None
        if (d / "metrics.json").is_file():
            try:
                metrics = json.loads((d / "metrics.json").read_text())
            except (OSError, ValueError):
                metrics = None
        job = Job(str(d.relative_to(sweep_dir)), d, overrides, metrics)
        job.params = dict(_split(o) for o in overrides)
        if metrics is None:
            job.status = "no result" if finished else "running"
        else:
            job.status = str(metrics.get("status") or "completed")
        jobs.append(job)
    if metric is None:
        metric = settings["metric"] or next(
            (
                j.metrics.get("optimized_metric")
                for j in jobs
                if j.metrics and j.metrics.get("optimized_metric")
            ),
            "val/acc1",
        )
    for job in jobs:
        m = job.metrics or {}
        if job.status == "failed":
            job.value = None
        elif metric == m.get("optimized_metric") and "value" in m:
            job.value = _num(m.get("value"))
        else:
            job.value = _num({**(m.get("final") or {}), **(m.get("test") or {})}.get(metric))
    # swept keys: what multirun.yaml sweeps, plus any override whose value differs between jobs
    keys = list(settings["swept"])
    seen: dict[str, set] = {}
    for job in jobs:
        for k, v in job.params.items():
            seen.setdefault(k, set()).add(v)
    for k, vals in seen.items():
        if len(vals) > 1 and k not in keys:
            keys.append(k)
    keys = [k for k in keys if k in seen]
    direction = settings["direction"]
    if direction not in ("maximize", "minimize"):
        low = metric.lower()
        direction = "minimize" if any(w in low for w in ("loss", "err", "time")) else "maximize"
    settings.update(metric=metric, direction=direction, swept=keys, finished=finished)
    sign = -1.0 if direction == "maximize" else 1.0
    jobs.sort(key=lambda j: (j.value is None, sign * (j.value or 0.0), _order(j.name)))
    return jobs, settings


def _order(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def _other_metrics(jobs: list[Job], metric: str) -> list[str]:
    names: set[str] = set()
    for j in jobs:
        m = j.metrics or {}
        names |= set((m.get("final") or {}).keys()) | set((m.get("test") or {}).keys())
    return sorted(n for n in names if n not in SKIP_METRICS and n != metric)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def table(jobs: list[Job], settings: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    metric, keys = settings["metric"], settings["swept"]
    others = _other_metrics(jobs, metric)
    header = ["rank", "job", "status", metric, *keys, *others, "step", "error", "overrides"]
    rows = []
    for i, j in enumerate(jobs, 1):
        m = j.metrics or {}
        values = {**(m.get("final") or {}), **(m.get("test") or {})}
        rows.append(
            [
                str(i) if j.value is not None else "",
                j.name,
                j.status,
                _fmt(j.value),
                *[j.params.get(k, "") for k in keys],
                *[_fmt(_num(values.get(o))) for o in others],
                _fmt(m.get("global_step")),
                str(m.get("error") or ""),
                " ".join(j.overrides),
            ]
        )
    return header, rows


def _markdown(
    header: list[str], rows: list[list[str]], jobs: list[Job], settings: dict[str, Any], sweep_dir: Path
) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    state = "finished" if settings["finished"] else "running (or interrupted)"
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"- folder: `{sweep_dir}`",
        f"- sweep: {state}; {len(jobs)} job(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        f"- ranked by `{settings['metric']}` ({settings['direction']}), best first",
    ]
    best = next((j for j in jobs if j.value is not None), None)
    if best is not None:
        swept = " ".join(f"{k}={best.params.get(k, '')}" for k in settings["swept"])
        lines.append(
            f"- best: job {best.name}, {settings['metric']} = {best.value:.6g}"
            + (f" ({swept})" if swept else "")
        )
    if settings.get("storage"):
        lines.append(f"- Optuna study `{settings.get('study_name')}` in `{settings['storage']}`")
    common = [o for o in (jobs[0].overrides if jobs else []) if all(o in j.overrides for j in jobs)]
    if common and len(jobs) > 1:
        lines.append("- overrides of every job: `" + " ".join(common) + "`")
        col = header.index("overrides")
        rows = [
            r[:col] + [" ".join(o for o in j.overrides if o not in common)] + r[col + 1 :]
            for r, j in zip(rows, jobs)
        ]
    if any((j.path / JOB_REPORT_MD).is_file() for j in jobs):
        lines.append(f"- each job's run report: its `{JOB_REPORT_MD}`, linked from the job column")
        col = header.index("job")
        rows = [r[:col] + [job_link(j, sweep_dir)] + r[col + 1 :] for r, j in zip(rows, jobs)]
    lines += [f"- plot: `{REPORT_PNG}`", "", "| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def job_link(job: Job, sweep_dir: Path) -> str:
    """``[name](name/report.md)`` when the job has a run report, else its name (cells are escaped later)."""
    report = job.path / JOB_REPORT_MD
    if not report.is_file():
        return job.name
    target = report.relative_to(sweep_dir).as_posix()
    return f"[{job.name}](<{target}>)" if any(c in target for c in " ()<>") else f"[{job.name}]({target})"


def plot(jobs: list[Job], settings: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metric, keys = settings["metric"], settings["swept"] or ["job"]
    n = len(keys)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    ok = [j for j in jobs if j.value is not None]
    bad = [j for j in jobs if j.value is None]
    floor = min((j.value for j in ok), default=0.0)
    for ax, key in zip(axes.flat, keys):
        raw = {j.name: (j.name if key == "job" else j.params.get(key, "")) for j in jobs}
        nums = {k: _num(v) for k, v in raw.items()}
        numeric = all(v is not None for v in nums.values()) and key != "job"
        if numeric:
            xs = nums
            positive = [v for v in nums.values() if v is not None and v > 0]
            if len(positive) == len(nums) and positive and max(positive) / min(positive) >= 20:
                ax.set_xscale("log")
        else:
            labels = sorted(set(raw.values()), key=lambda s: (_num(s) is None, _num(s) or 0.0, s))
            xs = {k: float(labels.index(v)) for k, v in raw.items()}
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.scatter(
            [xs[j.name] for j in ok], [j.value for j in ok], color="tab:blue", label="completed", zorder=3
        )
        if ok:
            best = ok[0]
            ax.scatter(
                [xs[best.name]],
                [best.value],
                s=140,
                facecolors="none",
                edgecolors="tab:green",
                label="best",
                zorder=4,
            )
        if bad:
            ax.scatter(
                [xs[j.name] for j in bad],
                [floor] * len(bad),
                marker="x",
                color="tab:red",
                label="failed / no value",
                zorder=3,
            )
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"{metric} ({settings['direction']}): {len(ok)} of {len(jobs)} jobs with a value", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(
    sweep_dir: str | Path,
    metric: str | None = None,
    direction: str | None = None,
    with_plot: bool = True,
) -> dict[str, Any]:
    """Write the report files into ``sweep_dir``; return their paths, the jobs and the settings."""
    sweep_dir = Path(sweep_dir)
    jobs, settings = collect(sweep_dir, metric)
    if direction:
        settings["direction"] = direction
        sign = -1.0 if direction == "maximize" else 1.0
        jobs.sort(key=lambda j: (j.value is None, sign * (j.value or 0.0), _order(j.name)))
    header, rows = table(jobs, settings)
    md = _markdown(header, rows, jobs, settings, sweep_dir)
    write_text_atomic(sweep_dir / REPORT_MD, md)
    buf = io.StringIO()
    w = SafeCSVWriter(buf)  # an override or name starting "=" stays text in a spreadsheet
    w.writerow(header)
    w.writerows(rows)
    write_text_atomic(sweep_dir / REPORT_CSV, buf.getvalue())
    paths = {"markdown": sweep_dir / REPORT_MD, "csv": sweep_dir / REPORT_CSV}
    if with_plot and jobs:
        plot(jobs, settings, sweep_dir / REPORT_PNG)
        paths["plot"] = sweep_dir / REPORT_PNG
    return {"paths": paths, "jobs": jobs, "settings": settings, "markdown": md}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vit_ft.sweep_report",
        description="Rebuild a sweep's report (markdown, CSV, PNG) from its job folders; also for a running sweep.",
    )
    p.add_argument("sweep_dir", help="the multirun folder (holds multirun.yaml and one folder per job)")
    p.add_argument(
        "--metric", default=None, help="rank by this metric (default: the sweep's optimized_metric)"
    )
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None)
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    d = Path(a.sweep_dir)
    if not d.is_dir():
        print(
            f"error: {d} is not a folder; pass a sweep folder (e.g. multirun/train/<date>)", file=sys.stderr
        )
        return 2
    if not find_job_dirs(d):
        print(
            f"error: {d} holds no job folders (with .hydra/overrides.yaml); pass the folder of a `-m` sweep",
            file=sys.stderr,
        )
        return 2
    out = write_report(d, a.metric, a.direction, with_plot=not a.no_plot)
    print(out["markdown"])
    for kind, path in out["paths"].items():
        print(f"{kind:<8}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
