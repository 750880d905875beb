"""kill -9 a real training run (mid-save; between micro-batches), run it again from its last.ckpt:
the final weights equal an uninterrupted run's (torch.equal). CPU, deterministic, 2 DataLoader workers,
accumulation 2, a step checkpoint every 2 optimizer steps."""

from __future__ import annotations

import os
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


def kill_when_stalled(args: list[str], stall: str, tmp_path: Path) -> Path:
    """Start ``train.py args``, wait until it hangs at ``stall`` (see stall/sitecustomize.py), kill -9."""
    run_dir = tmp_path / stall.replace(":", "")
    mark = tmp_path / f"{stall.replace(':', '')}.stalled"
    env = clean_env(tmp_path)
    env.update(
        PYTHONPATH=os.pathsep.join([str(STALL), env.get("PYTHONPATH", "")]),
        VIT_FT_TEST_STALL=stall,
        VIT_FT_TEST_STALL_MARK=str(mark),
    )
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while not mark.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never stalled at {stall}:\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.1)
    proc.kill()  # SIGKILL
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
