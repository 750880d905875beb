"""Runs that survive, through the real CLI: SIGTERM mid-run → last.ckpt at an optimizer-step boundary and
exit status 75; the same command again resumes by itself (ckpt_path=auto), in the same wandb run, and
finishes; once more it has nothing to do; a changed config or a second run into the same folder is refused."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, TINY, clean_env, read_metrics, run_cli, wandb_history_and_config

STEPS = 16  # 64 images / global batch 8 = 8 optimizer steps per epoch (16 micro-batches of 4), 2 epochs


def command(image_folder, run_dir, *extra):
    return [
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",  # a kill can come between micro-batches
        "test=false",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def wait_for_step(run_dir, proc, step: int, timeout: float = 120) -> int:
    """Poll the wandb logger's record of the last step it logged until it reaches ``step``."""
    path, t0 = run_dir / "wandb_steps.json", time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        try:
            logged = json.loads(path.read_text())["step"]
            if logged >= step:
                return logged
        except (OSError, ValueError, KeyError):
            pass
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
    # a second run into the same folder while the first holds it: one line naming the holder
    second = run_cli(*command(image_folder, run_dir), tmp_path=tmp, check=False)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    history_before = (run_dir / "history.csv").read_text() if (run_dir / "history.csv").exists() else ""
    resumed = run_cli(*args, tmp_path=tmp)
    again = run_cli(*args, tmp_path=tmp)
    changed = run_cli(*command(image_folder, run_dir, "optimizer.lr=0.01"), tmp_path=tmp, check=False)
    return dict(
        proc=proc, out=out, err=err, ckpt=ckpt, second=second, resumed=resumed, again=again,
        changed=changed, run_dir=run_dir, history_before=history_before,
    )


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


def test_second_run_into_a_busy_folder_stops_with_one_line(preempted):
    second = preempted["second"]
    assert second.returncode == 2
    err = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and str(preempted["run_dir"]) in err[0] and f"pid {preempted['proc'].pid}" in err[0]


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
        history, _ = wandb_history_and_config(r)
        steps += [int(h["trainer/global_step"]) for h in history if "train/loss" in h]
    assert sorted(steps) == sorted(set(steps)) and set(steps) == set(range(STEPS)) - {0} | {0} & set(steps)


def test_finished_run_has_nothing_to_do_and_a_changed_config_is_refused(preempted):
    p = preempted
    assert "nothing to do:" in p["again"].stdout and "finished" in p["again"].stdout
    assert read_metrics(p["run_dir"])["global_step"] == STEPS
    changed = p["changed"]
    assert changed.returncode == 2
    err = [ln for ln in changed.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "optimizer.lr: 0.002 -> 0.01" in err[0] and "ckpt_path=auto" in err[0]


def test_lock_is_released_with_its_holder(tmp_path):
    """kill -9 leaves the .lock file but not the lock: the next run takes it."""
    from vit_ft.tasks.resume import run_dir_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r});"
         "from vit_ft.tasks.resume import run_dir_lock\n"
         f"with run_dir_lock({str(tmp_path)!r}):\n  print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert holder.stdout.readline().strip() == "held"
    fd = os.open(tmp_path / ".lock", os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
    holder.kill()
    holder.wait()
    with run_dir_lock(str(tmp_path)):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
