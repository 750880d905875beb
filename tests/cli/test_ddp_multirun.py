"""2-process CPU DDP and a 2-job multirun, through the real CLI."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY, read_metrics, read_wandb_records, run_cli, wandb_history_and_config


def test_ddp_two_cpu_processes_give_one_run(image_folder, tmp_path):
    run_dir = tmp_path / "outputs" / "ddp"
    run_cli(
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        # "best" = the lowest step, i.e. epoch 0: last.ckpt must still be the final state.
        "callbacks.model_checkpoint.monitor=step",
        "callbacks.model_checkpoint.mode=min",
        "model.ema.decay=0.9",  # each rank updates its EMA from the synchronised weights
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
    )
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ddp"]  # one run directory
    m = read_metrics(run_dir)
    # 64 images, global batch 8 over 2 processes (4 each): 8 optimizer steps per epoch.
    assert m["global_step"] == 16 and m["status"] == "completed"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run_dir / "checkpoints").glob("*.ckpt"))) == 2  # best + last, written once
    best = torch.load(m["checkpoints"]["best"], map_location="cpu", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (best["global_step"], last["global_step"]) == (8, 16)
    assert "val_ema/acc1" in m["final"] and "model_ema.head.weight" in last["state_dict"]
    assert not torch.equal(
        last["state_dict"]["model_ema.head.weight"], last["state_dict"]["model.head.weight"]
    )
    history, config = wandb_history_and_config(run_dir)  # exactly one wandb run
    assert config["trainer"]["devices"] == 2
    assert any("val/acc1" in h for h in history)


def test_multirun_two_jobs_two_dirs_two_wandb_runs(image_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_steps=4",
        "optimizer.lr=0.001,0.003",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"], proc.stdout[-2000:]
    groups, lrs = set(), []
    for job in jobs:
        assert read_metrics(job)["global_step"] == 4
        run_file = next(job.glob("wandb/offline-run-*/run-*.wandb"))
        _, config = wandb_history_and_config(job)
        lrs.append(config["optimizer"]["lr"])
        for r in read_wandb_records(run_file):
            if r.WhichOneof("record_type") == "run":
                groups.add(r.run.run_group)
    assert lrs == pytest.approx([0.001, 0.003])
    assert groups == {"sweep"}  # the jobs of one sweep share a wandb group
