"""Sweeps through the real CLI: Optuna (report, wandb group, a failed trial, resume), failing jobs of a
basic multirun, 2 jobs x 2 DDP ranks, submitit_local, and bad input stopped before any job runs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, TINY, clean_env, make_image_folder, read_metrics, read_wandb_records, run_cli

# TINY without its fixed learning rate (a fixed value would win over a swept one), 1 block, 2 short epochs.
_REPLACED = ("optimizer.lr=", "+model.timm_kwargs.depth=", "scheduler.warmup_steps=")
SWEEP_TINY = [o for o in TINY if not o.startswith(_REPLACED)] + [
    "+model.timm_kwargs.depth=1",
    "trainer.max_epochs=2",
    "scheduler.warmup_steps=1",
]
# hparams_search=optuna searches these too: fix them for a tiny, fast study.
OPTUNA_FIXED = ["optimizer.weight_decay=0.0", "model.label_smoothing=0.0"]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    # 16 train / 8 val images: batch 8 → 2 steps per epoch.
    return make_image_folder(tmp_path_factory.mktemp("sweepdata") / "shapes", n_train=4, n_val=2, size=32)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def report_rows(sweep: Path) -> list[dict]:
    with open(sweep / "sweep_report.csv") as f:
        return list(csv.DictReader(f))


def wandb_groups(jobs: list[Path]) -> list[str]:
    groups = []
    for job in jobs:
        files = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, f"{job}: {files}"
        groups += [
            r.run.run_group for r in read_wandb_records(files[0]) if r.WhichOneof("record_type") == "run"
        ]
    return groups


def make_study(storage: str, name: str, enqueue: dict | None = None) -> None:
    import optuna

    from vit_ft.compat import optuna_sqlite_stamp_fix as optuna_compat

    optuna_compat()
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    if enqueue:
        study.enqueue_trial(enqueue)


def trial_states(storage: str, name: str) -> list[tuple[int, str]]:
    import optuna

    from vit_ft.compat import optuna_sqlite_stamp_fix as optuna_compat

    optuna_compat()
    return [(t.number, t.state.name) for t in optuna.load_study(study_name=name, storage=storage).trials]


def test_optuna_sweep_reports_fails_a_trial_and_resumes(small_folder, tmp_path):
    sweep = tmp_path / "optuna"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # Trial 0 is enqueued with a learning rate out of range (settings_ranges): a failed trial, not a failed sweep.
    make_study(storage, "tiny", enqueue={"optimizer.lr": 1e37})
    common = [
        "hparams_search=optuna",
        f"data.root={small_folder}",
        *SWEEP_TINY,
        *OPTUNA_FIXED,
        "optimizer.lr=choice(0.002,0.001,1e37)",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=tiny",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = run_cli("train.py", "-m", *common, "hydra.sweeper.n_trials=3", tmp_path=tmp_path)
    assert "optuna: direction maximize, from optimized_metric=val/acc1" in proc.stdout + proc.stderr
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2"], proc.stdout[-3000:]
    m0 = read_metrics(jobs[0])
    assert m0["status"] == "failed" and "optimizer.lr=1e+37 is out of range" in m0["error"]
    # the report: 3 rows, best first, the failed trial with its error; a plot
    rows = report_rows(sweep)
    assert (
        len(rows) == 3
        and (sweep / "sweep_report.md").is_file()
        and (sweep / "sweep_report.png").stat().st_size > 1000
    )
    assert rows[0]["status"] == "completed" and rows[0]["rank"] == "1" and float(rows[0]["val/acc1"]) >= 0
    failed = {r["job"]: r for r in rows if r["status"] == "failed"}
    assert "0" in failed and "out of range" in failed["0"]["error"] and failed["0"]["optimizer.lr"] == "1e+37"
    values = [float(r["val/acc1"]) for r in rows if r["val/acc1"]]
    assert values == sorted(values, reverse=True)
    assert "out of range" in (sweep / "sweep_report.md").read_text()
    # Optuna: the failed trial is FAIL, the study's best is what the report ranks first
    states = trial_states(storage, "tiny")
    assert [n for n, _ in states] == [0, 1, 2] and states[0][1] == "FAIL"
    assert any(s == "COMPLETE" for _, s in states)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(float(rows[0]["val/acc1"]))
    # every trial that ran logged a wandb run, all in the sweep's group (trial 0 stopped before its logger)
    assert wandb_groups(jobs[1:]) == [sweep.name] * 2

    # Resume: the same command with n_trials=4 runs only trial 3, in job folder 3 of the same sweep.
    proc = run_cli("train.py", "-m", *common, "hydra.sweeper.n_trials=4", "logger=csv", tmp_path=tmp_path)
    assert "resuming study 'tiny': 3 of 4 trials done, 1 to run" in proc.stdout + proc.stderr
    assert [j.name for j in job_dirs(sweep)] == ["0", "1", "2", "3"]
    assert [n for n, _ in trial_states(storage, "tiny")] == [0, 1, 2, 3]
    assert len(report_rows(sweep)) == 4
    assert (sweep / "3" / "metrics.json").is_file()


def test_failed_jobs_do_not_stop_a_multirun_and_the_report_rebuilds(small_folder, tmp_path):
    sweep = tmp_path / "basic"
    proc = run_cli(
        "train.py",
        "-m",
        f"data.root={small_folder}",
        *SWEEP_TINY,
        "logger=csv",
        "+callbacks.nonfinite_loss._target_=vit_ft.training.nonfinite.NonFiniteLossGuard",
        "optimizer.lr=0.002,-1,1e37",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    jobs = job_dirs(sweep)
    assert [read_metrics(j)["status"] for j in jobs] == ["completed", "failed", "failed"]
    assert "optimizer.lr=-1 must be a positive number" in read_metrics(jobs[1])["error"]
    assert "optimizer.lr=1e+37 is out of range" in read_metrics(jobs[2])["error"]
    assert "error: job 1 failed: optimizer.lr=-1" in proc.stderr
    rows = report_rows(sweep)
    assert [r["job"] for r in rows][0] == "0" and [r["status"] for r in rows] == [
        "completed",
        "failed",
        "failed",
    ]
    assert "jobs          : 3 (2 failed)" in proc.stdout

    # A sweep still running: job 0 has no metrics.json yet. The CLI rebuilds the report any time.
    (jobs[0] / "metrics.json").unlink()
    (sweep / ".sweep_finished").unlink()
    cli = [sys.executable, "-m", "vit_ft.sweep_report"]
    out = subprocess.run(
        [*cli, str(sweep)], capture_output=True, text=True, env=clean_env(tmp_path), timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert {r["job"]: r["status"] for r in report_rows(sweep)} == {
        "0": "running",
        "1": "failed",
        "2": "failed",
    }
    assert "running (or interrupted)" in out.stdout
    (tmp_path / "empty").mkdir()
    bad = subprocess.run(
        [*cli, str(tmp_path / "empty")], capture_output=True, text=True, env=clean_env(tmp_path), timeout=120
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    )


def test_ddp_jobs_inside_a_multirun(small_folder, tmp_path):
    """2 jobs x 2 CPU ranks: each rank stays in its job; no rank starts a sweep of its own."""
    sweep = tmp_path / "ddp_sweep"
    proc = run_cli(
        "train.py",
        "-m",
        f"data.root={small_folder}",
        *SWEEP_TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "optimizer.lr=0.002,0.001",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"], proc.stdout[-3000:]
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name in ("outputs", "multirun")) == []
    )  # no stray runs
    for job in jobs:
        m = read_metrics(job)
        # 16 images, global batch 8 over 2 ranks: 2 optimizer steps per epoch, 2 epochs
        assert m["status"] == "completed" and m["global_step"] == 4 and m["value"] is not None
        assert (job / "train_rank1.log").is_file()  # rank 1 ran in this job's folder
        assert len(list(job.glob("checkpoints/*.ckpt"))) == 2
    assert wandb_groups(jobs) == [sweep.name] * 2
    assert len(report_rows(sweep)) == 2


def test_submitit_local_runs_a_two_job_sweep(small_folder, tmp_path):
    sweep = tmp_path / "submitit"
    run_cli(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        f"data.root={small_folder}",
        *SWEEP_TINY,
        "logger=csv",
        "optimizer.lr=0.002,0.001",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    assert [read_metrics(j)["status"] for j in jobs] == ["completed", "completed"]
    assert (sweep / ".submitit").is_dir() and len(report_rows(sweep)) == 2


def test_bad_sweeps_stop_before_any_job(small_folder, tmp_path):
    storage = f"sqlite:///{tmp_path / 'other.db'}"
    make_study(storage, "someone_elses")
    base = [f"data.root={small_folder}", *SWEEP_TINY, "logger=csv"]
    optuna = ["hparams_search=optuna", *base, *OPTUNA_FIXED]
    cases = {
        "unknown_optuna": (
            [*optuna, "optimizer.lr=0.001", "optimizer.lrr=interval(0.1,0.2)"],
            "the swept key 'optimizer.lrr' is not in the config",
        ),
        "empty": ([*optuna, "optimizer.lr=0.001"], "the Optuna search space is empty"),
        "storage": (
            [
                *optuna,
                "optimizer.lr=choice(0.1,0.2)",
                f"hydra.sweeper.storage={storage}",
                "hydra.sweeper.study_name=mine",
            ],
            "holds the study 'someone_elses', not 'mine'",
        ),
    }
    procs = {}
    for name, (args, _) in cases.items():  # in parallel: each is only start-up time
        procs[name] = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), "-m", *args, f"hydra.sweep.dir={tmp_path / name}"],
            cwd=tmp_path,
            env=clean_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, (_, expected) in cases.items():
        out, err = procs[name].communicate(timeout=240)
        assert procs[name].returncode == 2, f"{name}: {err[-2000:]}"
        lines = [
            ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")
        ]
        assert lines == [lines[0]] and lines[0].startswith("error: ") and expected in lines[0], (
            f"{name}: {err}"
        )
        assert not (tmp_path / name).exists() or not job_dirs(tmp_path / name), name  # no job ran
