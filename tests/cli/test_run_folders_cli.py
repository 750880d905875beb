"""Run folders as users move and share them: a moved (or copied) run folder resumes, a copy with a changed
setting is refused with the list, and eval/predict/export never write into a training run's folder."""

from __future__ import annotations

import fcntl
import os
import shutil

import pytest
import torch

from tests.helpers import TINY, make_image_folder, run_cli

ARGS = [*TINY, "logger=none", "test=false", "~callbacks.run_report"]


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A 1-epoch run in RUN, moved to RUN2 and resumed there for a second epoch."""
    tmp = tmp_path_factory.mktemp("moved")
    data = make_image_folder(tmp / "data", n_train=16, n_val=6, size=32)
    first, second = tmp / "run", tmp / "run2"
    run_cli(
        "train.py", *ARGS, f"data.root={data}", "trainer.max_epochs=1", f"hydra.run.dir={first}", tmp_path=tmp
    )
    steps = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
        "global_step"
    ]
    shutil.move(first, second)
    proc = run_cli(
        "train.py",
        *ARGS,
        f"data.root={data}",
        "trainer.max_epochs=2",
        f"hydra.run.dir={second}",
        tmp_path=tmp,
    )
    return tmp, data, second, proc, steps


def test_a_moved_run_folder_resumes_with_its_best_checkpoint(moved):
    _, _, run, proc, steps = moved
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * steps  # resumed, not restarted
    assert "resum" in (proc.stdout + proc.stderr).lower()
    best = [s for k, s in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    paths = [s["best_model_path"] for s in best if s.get("best_model_path")]
    assert paths and all(p.startswith(str(run)) and os.path.isfile(p) for p in paths)
    assert "another config" not in proc.stderr


def test_a_copied_run_folder_with_another_setting_is_a_fork_and_is_refused(moved):
    tmp, data, run, _, _ = moved
    fork = tmp / "fork"
    shutil.copytree(run, fork)
    proc = run_cli(
        "train.py",
        *ARGS,
        f"data.root={data}",
        "trainer.max_epochs=2",
        "optimizer.lr=0.005",
        f"hydra.run.dir={fork}",
        tmp_path=tmp,
        check=False,
    )
    assert proc.returncode == 2
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "optimizer.lr: 0.002 -> 0.005" in line[0] and "paths" not in line[0]


def test_eval_refuses_a_training_run_folder_before_hydra_writes_there(moved):
    tmp, data, run, _, _ = moved
    before = {
        f: (run / f).read_bytes() for f in (".hydra/config.yaml", "metrics.json", "val_predictions.csv")
    }
    proc = run_cli(
        "eval.py",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"data.root={data}",
        f"hydra.run.dir={run}",
        tmp_path=tmp,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "holds a training run" in proc.stderr and f"hydra.run.dir={run / 'eval'}" in proc.stderr
    assert {f: (run / f).read_bytes() for f in before} == before and not (run / "eval.log").exists()


def test_export_and_predict_refuse_a_live_run_folder(moved, tmp_path):
    from vit_ft.errors import ConfigError
    from vit_ft.tasks.run_lock import refuse_live_run

    tmp, data, run, _, _ = moved
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # this process plays the live training run
    try:
        proc = run_cli(
            "export.py",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            f"out={run / 'exported'}",
            tmp_path=tmp_path,
            check=False,
        )
        assert proc.returncode == 2 and "in use by another run" in proc.stderr
        assert not (run / "exported").exists()
        with pytest.raises(ConfigError, match="in use by another run"):
            refuse_live_run(str(run / "predictions"), "out")  # predict.py's out= folder
    finally:
        os.close(fd)
    refuse_live_run(str(run / "predictions"), "out")  # released: allowed again


def test_train_into_a_live_run_folder_stops_before_hydra_writes_there(tmp_path):
    """The second run's refusal leaves the live run's folder as it was: its .hydra/ and train.log too."""
    live = tmp_path / "live"
    (live / ".hydra").mkdir(parents=True)
    (live / ".hydra" / "config.yaml").write_text("the live run's config\n")
    (live / "train.log").write_text("the live run's log\n")
    fd = os.open(live / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # this process plays the live training run
    try:
        proc = run_cli(
            "train.py", f"data.root={tmp_path}", f"hydra.run.dir={live}", tmp_path=tmp_path, check=False
        )
    finally:
        os.close(fd)
    assert proc.returncode == 2 and f"error: run directory {live} is in use by another run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (live / ".hydra" / "config.yaml").read_text() == "the live run's config\n"
    assert (live / "train.log").read_text() == "the live run's log\n"
    assert sorted(p.name for p in live.iterdir()) == [".hydra", ".lock", "train.log"]
