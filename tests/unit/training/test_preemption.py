"""The Preemption callback in-process (a signal between micro-batches → checkpoint at the next optimizer
step, Preempted raised after that step is logged), SLURM requeue with a faked environment and scontrol,
and submitit's handler chained after the save."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from tests.helpers import quiet_trainer, vector_loader
from vit_ft.training import preemption
from vit_ft.training.preemption import (
    RESUMABLE_EXIT,
    Preempted,
    Preemption,
    requeue_slurm_job,
    should_requeue,
    slurm_job_id,
)


class Tiny(L.LightningModule):
    def __init__(self, signum: int, at_batch: int) -> None:
        super().__init__()
        self.net, self.signum, self.at_batch, self.logged_steps = nn.Linear(4, 2), signum, at_batch, []

    def training_step(self, batch, batch_idx):
        if batch_idx == self.at_batch:
            os.kill(os.getpid(), self.signum)
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.logged_steps.append(self.trainer.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int = 12) -> DataLoader:
    return vector_loader(n, batch_size=1, random_labels=True)


@pytest.fixture
def safety_net():
    """Should the callback not take the signal over, the test fails instead of the process dying."""
    got = []

    def net(n, f):
        got.append(n)

    old = {s: signal.signal(s, net) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield got, net
    for s, h in old.items():
        signal.signal(s, h)


def run_until_preempted(tmp_path, signum, at_batch=4, accumulate=2):
    cb = Preemption(dirpath=str(tmp_path / "checkpoints"))
    model = Tiny(signum, at_batch)
    trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=accumulate, callbacks=[cb])
    with pytest.raises(Preempted) as info:
        trainer.fit(model, train_dataloaders=loader())
    return info.value, model


def test_signal_between_micro_batches_saves_at_the_next_optimizer_step(tmp_path, safety_net):
    # batch 4 is the first micro-batch of optimizer step 3 (batches 4, 5): saved after batch 5
    exc, model = run_until_preempted(tmp_path, signal.SIGTERM, at_batch=4)
    assert exc.code == RESUMABLE_EXIT and exc.signame == "SIGTERM" and exc.step == 3 and not exc.requeued
    ck = torch.load(exc.ckpt_path, map_location="cpu", weights_only=True)
    assert ck["global_step"] == 3
    progress = ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert progress["processed"] == 6  # whole accumulation groups, nothing of the next one
    assert model.logged_steps == [0, 1, 1, 2, 2, 3]  # the saved step ran to its end, then the stop
    assert "at step 3" in exc.line() and "exit status 75" in exc.line() and "re-run" in exc.line()
    got, net = safety_net
    assert got == [] and signal.getsignal(signal.SIGTERM) is net  # handlers given back after the run


def test_sigusr1_under_slurm_requeues_the_job(tmp_path, safety_net, monkeypatch):
    calls = []
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.setattr(preemption.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    exc, _ = run_until_preempted(tmp_path, signal.SIGUSR1, at_batch=1, accumulate=1)
    assert calls == [["scontrol", "requeue", "4242"]] and exc.requeued == "4242"
    assert exc.step == 2 and "SLURM job 4242 requeued" in exc.line()


def test_submitit_handler_is_chained_after_the_save(tmp_path, safety_net, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    seen = []

    def submitit_handler(signum, frame):
        seen.append(signum)

    submitit_handler.__module__ = "submitit.core.job_environment"
    old = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        exc, _ = run_until_preempted(tmp_path, signal.SIGUSR2, at_batch=0, accumulate=1)
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert exc.chain is submitit_handler and seen == []  # submitit's turn comes after the one line
    assert os.path.isfile(exc.ckpt_path)

    from vit_ft.tasks.cli import stop_preempted

    with pytest.raises(SystemExit) as stop:
        stop_preempted(exc)
    assert stop.value.code == RESUMABLE_EXIT and seen == [signal.SIGUSR2]


@pytest.mark.parametrize(
    "signame, env, expected",
    [
        ("SIGUSR1", {"SLURM_JOB_ID": "123"}, "123"),
        ("SIGUSR1", {"SLURM_JOB_ID": "123", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}, "77_3"),
        ("SIGTERM", {"SLURM_JOB_ID": "123"}, None),  # scancel, or a preemption SLURM requeues itself
        ("SIGUSR1", {"SLURM_JOB_ID": "123", "SUBMITIT_EXECUTOR": "slurm"}, None),  # submitit's job
        ("SIGUSR1", {"SLURM_JOB_ID": "123", "SLURM_JOB_NAME": "bash"}, None),  # interactive srun
        ("SIGUSR1", {"SLURM_JOB_ID": "12; rm -rf /"}, None),
        ("SIGUSR1", {}, None),
    ],
)
def test_which_slurm_job_is_requeued(signame, env, expected):
    assert should_requeue(signame, env, requeue=True) == expected
    assert should_requeue(signame, env, requeue=False) is None


def test_an_unknown_signal_name_is_a_user_error():
    from vit_ft.errors import ConfigError

    assert Preemption("x", signals=["USR1", "SIGTERM"]).signals == ["SIGUSR1", "SIGTERM"]
    with pytest.raises(ConfigError, match="SIGFOO"):
        Preemption("x", signals=["SIGFOO"])


def test_requeue_reports_a_failed_scontrol():
    assert slurm_job_id({"SLURM_JOB_ID": "9"}) == "9"
    assert requeue_slurm_job("9", run=lambda cmd: 0)
    assert not requeue_slurm_job("9", run=lambda cmd: 1)

    def missing(cmd):
        raise FileNotFoundError("scontrol")

    assert not requeue_slurm_job("9", run=missing)
