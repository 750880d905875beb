"""Runs that survive, through the real CLI: SIGTERM mid-run → last.ckpt at an optimizer-step boundary and
exit status 75; the same command again resumes by itself (ckpt_path=auto), in the same wandb run, with
every step once in its history, and finishes. (The lock, a changed config and a finished run:
tests/unit/tasks/test_resume.py; the callback and SLURM requeue: tests/unit/training/test_preemption.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, TINY, clean_env, read_metrics, read_wandb_records, run_cli
from vit_ft.training.loggers import logged_steps

STEPS = 16  # 64 images / global batch 8 = 8 optimizer steps (16 micro-batches of 4) per epoch, 2 epochs


def command(image_folder, run_dir, *extra):
    return [
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=2",
        "callbacks.run_report=null",  # (the report is drawn once at the end anyway)
        "trainer.accumulate_grad_batches=2",  # a kill can come between micro-batches
        "test=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def wait_for_step(run_dir, proc, step: int, timeout: float = 120) -> int:
    """Poll the offline wandb run file until it holds ``step``."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        logged, _ = logged_steps([str(p) for p in run_dir.glob("wandb/offline-run-*/run-*.wandb")])
        if logged >= step:
            return logged
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s (exit {proc.poll()}): {proc.communicate()}")


@pytest.fixture(scope="module")
def preempted(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preempt")
    run_dir = tmp / "run"
    args = command(image_folder, run_dir)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / args[0]), *args[1:]],
        cwd=tmp,
        env=clean_env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run_dir, proc, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = run_cli(*args, tmp_path=tmp)
    return dict(proc=proc, out=out, err=err, ckpt=ckpt, resumed=resumed, run_dir=run_dir)


def test_sigterm_saves_at_a_step_boundary_and_exits_resumable(preempted):
    p = preempted
    assert p["proc"].returncode == 75, p["err"][-3000:]
    lines = [ln for ln in p["err"].splitlines() if ln.startswith("preempted:")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "exit status 75" in lines[0]
    assert "re-run the same command" in lines[0] and "Traceback" not in p["err"]
    step = p["ckpt"]["global_step"]
    assert 2 <= step < STEPS and f"at step {step}" in lines[0]
    # an optimizer-step boundary: the batches seen are whole accumulation groups (or a whole epoch)
    batches = p["ckpt"]["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert batches % 2 == 0, batches
    assert not list((p["run_dir"] / "checkpoints").glob("*.tmp"))


def test_rerun_resumes_in_the_same_wandb_run_and_finishes(preempted):
    p, run_dir = preempted, preempted["run_dir"]
    m = read_metrics(run_dir)
    assert m["status"] == "completed" and m["global_step"] == STEPS
    assert "resuming from" in p["resumed"].stdout + p["resumed"].stderr
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    ids = {r.name.rsplit("-", 1)[-1] for r in runs}
    assert len(runs) == 2 and ids == {(run_dir / "wandb_run_id").read_text().strip()}
    # the history across both wandb run files: every step once, none missing
    steps = []
    for r in runs:
        for rec in read_wandb_records(next(r.glob("run-*.wandb"))):
            if rec.WhichOneof("record_type") == "history":
                h = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                if "train/loss" in h:
                    steps.append(int(h["trainer/global_step"]))
    print(sorted(steps))
    assert sorted(steps) == sorted(set(steps)) and set(steps) == set(range(STEPS))
