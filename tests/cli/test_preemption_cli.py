"""Runs that survive, through the real CLI: SIGTERM mid-run → last.ckpt at an optimizer-step boundary and
exit status 75; the same command again resumes by itself (ckpt_path=auto), in the same wandb run, with
every step once in its history, and finishes. (The lock, a changed config and a finished run:
tests/unit/tasks/test_resume.py; the callback and SLURM requeue: tests/unit/training/test_preemption.py.)"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import TINY, read_metrics, read_wandb_records, run_cli

STEPS = 8  # 64 images / global batch 8 = 8 optimizer steps (16 micro-batches of 4) in the one epoch


def command(image_folder, run_dir, *extra):
    return [
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=1",
        "callbacks.run_report=null",  # (the report is drawn once at the end anyway)
        "trainer.accumulate_grad_batches=2",  # a kill can come between micro-batches
        "test=false",
        "trainer.deterministic=true",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


class SignalAt(Callback):
    """Sends the run's own process ``signum`` after micro-batch ``at_batch`` of the first epoch (given on the
    command line as ``+callbacks.sigterm._target_=tests.cli.test_preemption_cli.SignalAt``); a resumed run,
    which starts past that batch, is left alone."""

    def __init__(self, at_batch: int, signum: int = int(signal.SIGTERM)) -> None:
        self.at_batch, self.signum = at_batch, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.at_batch:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def preempted(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preempt")
    run_dir = tmp / "run"
    # SIGTERM after micro-batch 4, the first half of optimizer step 3 (micro-batches 4 and 5)
    args = command(
        image_folder,
        run_dir,
        f"+callbacks.sigterm._target_={__name__}.SignalAt",
        "+callbacks.sigterm.at_batch=4",
    )
    first = run_cli(*args, tmp_path=tmp, check=False)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = run_cli(*args, tmp_path=tmp)
    straight = tmp / "straight"  # the same run, never interrupted
    run_cli(*command(image_folder, straight, "logger=none"), tmp_path=tmp)
    return dict(
        proc=first,
        out=first.stdout,
        err=first.stderr,
        ckpt=ckpt,
        resumed=resumed,
        run_dir=run_dir,
        straight=straight,
    )


def test_sigterm_saves_at_a_step_boundary_and_exits_resumable(preempted):
    p = preempted
    assert p["proc"].returncode == 75, p["err"][-3000:]
    lines = [ln for ln in p["err"].splitlines() if ln.startswith("preempted:")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "exit status 75" in lines[0]
    assert "re-run the same command" in lines[0] and "Traceback" not in p["err"]
    # saved at the end of optimizer step 3, not after the micro-batch the signal came in
    assert p["ckpt"]["global_step"] == 3 and "at step 3" in lines[0]
    assert p["ckpt"]["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 6
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


def test_preempted_and_resumed_run_ends_with_the_uninterrupted_weights(preempted):
    """Bit for bit: the signal, the save at the step boundary and the resume change nothing."""

    def weights(run_dir):
        path = run_dir / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    resumed, straight = weights(preempted["run_dir"]), weights(preempted["straight"])
    assert resumed.keys() == straight.keys()
    differ = [k for k in straight if not torch.equal(resumed[k], straight[k])]
    assert not differ, differ[:5]
