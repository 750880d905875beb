"""kill -9 a real training run (mid-save; between micro-batches), run it again from its last.ckpt:
the final weights equal an uninterrupted run's (torch.equal). CPU, deterministic, 2 DataLoader workers,
accumulation 2, a step checkpoint every 2 optimizer steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, TINY, clean_env, run_cli

STALL = Path(__file__).resolve().parent / "stall"

COMMON = [
    *TINY,
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.accumulate_grad_batches=2",  # 64 images, global batch 8: 8 steps of 2 micro-batches per epoch
    "data.num_workers=2",
    "callbacks.last_checkpoint.every_n_steps=2",
    "logger=none",
]


def kill_when_stalled(args: list[str], stall: str, tmp_path: Path, group: bool = False) -> Path:
    """Start ``train.py args``, wait until it hangs at ``stall`` (see stall/sitecustomize.py), kill -9
    it (``group``: with every process it started, e.g. DDP ranks)."""
    run_dir = tmp_path / stall.replace(":", "")
    mark = tmp_path / f"{stall.replace(':', '')}.stalled"
    env = clean_env(tmp_path)
    env.update(
        PYTHONPATH=os.pathsep.join([str(STALL), env.get("PYTHONPATH", "")]),
        VIT_FT_TEST_STALL=stall,
        VIT_FT_TEST_STALL_MARK=str(mark),
    )
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    log = tmp_path / f"{stall.replace(':', '')}.log"
    with open(log, "w") as out:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=group
        )
    deadline = time.monotonic() + 240
    while not mark.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"never stalled at {stall}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()  # SIGKILL; its DataLoader workers exit when they see it gone
    proc.wait()
    return run_dir


def final_weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def runs(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume_cli")
    args = [f"data.root={image_folder}", *COMMON]
    mid_save = kill_when_stalled(args, "save:3", tmp)  # saves at steps 2, 4; hangs writing step 6
    mid_step = kill_when_stalled(args, "batch:22", tmp)  # 21 micro-batches done: inside step 11
    killed = {
        "mid_save": torch.load(mid_save / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True),
        "mid_step": torch.load(mid_step / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True),
        "tmp_left": (mid_save / "checkpoints" / "last.ckpt.tmp").exists(),
    }
    # One process, three jobs: the uninterrupted run and the two killed runs resumed from their last.ckpt.
    sweep = tmp / "sweep"
    ckpts = ",".join(str(d / "checkpoints" / "last.ckpt") for d in (mid_save, mid_step))
    run_cli("train.py", "-m", *args, f"ckpt_path=null,{ckpts}", f"hydra.sweep.dir={sweep}", tmp_path=tmp)
    return killed, [final_weights(sweep / str(j) / "checkpoints" / "last.ckpt") for j in range(3)]


def test_killed_runs_left_a_complete_mid_epoch_checkpoint(runs):
    killed, _ = runs
    assert killed["tmp_left"]  # killed while writing step 6: its temporary file, the step-4 file intact
    assert killed["mid_save"]["global_step"] == 4 and killed["mid_save"]["epoch"] == 0
    assert killed["mid_step"]["global_step"] == 10 and killed["mid_step"]["epoch"] == 1
    order = killed["mid_step"]["ImageFolderDataModule"]["train_order"]
    assert (order["epoch"], order["batches"]) == (1, 4)  # 2 optimizer steps of epoch 1 = 4 micro-batches


@pytest.mark.parametrize("job", [1, 2], ids=["killed-mid-save", "killed-between-micro-batches"])
def test_resumed_run_ends_with_the_uninterrupted_weights(runs, job):
    _, weights = runs
    ref, out = weights[0], weights[job]
    bad = [k for k in ref if not torch.equal(ref[k], out[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


@pytest.mark.skipif(
    os.environ.get("VIT_FT_SLOW_TESTS") != "1",
    reason="3 two-process DDP runs (~65 s idle, ~220 s on 2 loaded cores); VIT_FT_SLOW_TESTS=1 runs it",
)
def test_ddp_run_killed_mid_epoch_resumes_to_the_same_weights(image_folder, tmp_path):
    """2 CPU processes (gloo): rank 0 hangs before its 7th batch, the whole process group is killed -9,
    the same command resumes from last.ckpt (every rank's random state, the shared order)."""
    args = [
        f"data.root={image_folder}",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "callbacks.last_checkpoint.every_n_steps=2",
        "logger=none",
        "data.num_workers=1",
    ]
    ref = tmp_path / "ref"
    run_cli("train.py", *args, f"hydra.run.dir={ref}", tmp_path=tmp_path)
    cut = kill_when_stalled(args, "batch:7", tmp_path, group=True)
    saved = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6 and len(saved["rng_states"]) == 2  # mid-epoch 0, both ranks
    run_cli(
        "train.py",
        *args,
        f"ckpt_path={cut / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={cut}",
        tmp_path=tmp_path,
    )
    a, b = (final_weights(d / "checkpoints" / "last.ckpt") for d in (ref, cut))
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.skipif(
    os.environ.get("VIT_FT_SLOW_TESTS") != "1",
    reason="a two-process DDP run (~30 s idle); VIT_FT_SLOW_TESTS=1 runs it",
)
def test_ddp_save_that_fails_on_rank_0_stops_every_rank_at_once(image_folder, tmp_path):
    """2 CPU processes (gloo): rank 0's second checkpoint save finds the disk full. Every rank stops with
    its line at that save."""
    run_dir = tmp_path / "run"
    env = clean_env(tmp_path)
    env.update(
        PYTHONPATH=os.pathsep.join([str(STALL), env.get("PYTHONPATH", "")]),
        VIT_FT_TEST_STALL="full:2",
        VIT_FT_TEST_STALL_MARK=str(tmp_path / "full.mark"),
    )
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"data.root={image_folder}",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=3",
        "callbacks.last_checkpoint.every_n_steps=2",
        "logger=none",
        f"hydra.run.dir={run_dir}",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "full.mark").exists() and proc.returncode != 0
    assert "cannot write checkpoint" in proc.stderr and "the disk is full" in proc.stderr
    # rank 1 stops with its line too (not a traceback from a collective that lost its peer, or, under
    # NCCL, a wait for the process group's 30-minute timeout)
    assert "another rank's write failed" in proc.stderr and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 300
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2  # the first save, kept whole
