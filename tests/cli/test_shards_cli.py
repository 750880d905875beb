"""Shards through the real CLI: ``python -m vit_ft.data.shards`` writes them (a bad image left out: 63
train images, an odd total over uneven shards), a run killed -9 mid-epoch resumes to the uninterrupted
weights, and two single-device "nodes" (NODE_RANK 0/1, gloo) train to the same weights as one node with
two devices, with the same number of steps on every rank and validation every epoch.
Six CLI processes: write; killed run; uninterrupted + resumed (one multirun); 2 nodes; 2 devices."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli.test_resume_cli import final_weights, kill_when_stalled
from tests.helpers import ROOT, TINY, clean_env, make_image_folder, read_metrics, run_cli

BATCHES = 63 // 4  # 63 images, loader batch 4 (global 8 over accumulation 2 or 2 ranks x 4): 15 per epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict, str]:
    tmp = tmp_path_factory.mktemp("shards_cli")
    src = make_image_folder(tmp / "shapes")  # 64 train, 24 val
    sorted((src / "train" / "circle").iterdir())[0].unlink()  # 63 good images: an odd total
    (src / "train" / "cross" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    out = tmp / "shards"
    env = clean_env(tmp)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "vit_ft.data.shards", str(src), str(out), "--shard-size", "19k", "--workers", "2",
           "--on-bad-image", "skip"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    return out, index, proc.stdout


def test_write_reports_the_bad_image_and_uneven_shards(shards):
    out, index, stdout = shards
    train = index["splits"]["train"]
    assert train["total"] == 63 and "1 unusable images left out" in stdout and "zz_broken.jpg" in stdout
    assert len({s["count"] for s in train["shards"]}) > 1, train["shards"]
    assert f"train: 63 images in {len(train['shards'])} shards" in stdout


def _args(out: Path, index: dict) -> list[str]:
    pattern = out / index["splits"]["train"]["pattern"]
    return ["data=webdataset", f'data.train="{pattern}"', *TINY, "trainer.max_epochs=2",
            "trainer.deterministic=true", "logger=none", "callbacks.last_checkpoint.every_n_steps=2"]  # fmt: skip


def test_shard_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(shards, tmp_path):
    out, index, _ = shards
    args = [*_args(out, index), "trainer.accumulate_grad_batches=2", "data.num_workers=2"]
    # epoch 0: 15 batches, 8 steps; batch 22 = the 7th of epoch 1, after step 11 (last save: step 10)
    cut = kill_when_stalled(args, "batch:22", tmp_path)
    saved = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    order = saved["WebDatasetDataModule"]["train_order"]
    assert (saved["global_step"], order["epoch"], order["batches"]) == (10, 1, 4)
    sweep = tmp_path / "sweep"
    ckpt = cut / "checkpoints" / "last.ckpt"
    run_cli("train.py", "-m", *args, f"ckpt_path=null,{ckpt}", f"hydra.sweep.dir={sweep}", tmp_path=tmp_path)
    ref, resumed = (final_weights(sweep / j / "checkpoints" / "last.ckpt") for j in ("0", "1"))
    assert [k for k in ref if not torch.equal(ref[k], resumed[k])] == []
    assert read_metrics(sweep / "0")["global_step"] == 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_like_one_node_with_two_devices(shards, tmp_path):
    out, index, _ = shards
    args = [*_args(out, index), "trainer=ddp", "trainer.accelerator=cpu", "data.num_workers=1"]
    port = _free_port()
    procs = []
    for node in (0, 1):
        env = clean_env(tmp_path)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), LOCAL_RANK="0",
                   WORLD_SIZE="2")  # fmt: skip
        cmd = [sys.executable, str(ROOT / "train.py"), *args, "trainer.devices=1", "trainer.num_nodes=2",
               f"hydra.run.dir={tmp_path / f'node{node}'}"]  # fmt: skip
        log = open(tmp_path / f"node{node}.log", "w")
        procs.append(
            (subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        )
    try:
        for p, log in procs:
            p.wait(timeout=400)
            log.close()
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
    for node, (p, _) in enumerate(procs):
        assert p.returncode == 0, (tmp_path / f"node{node}.log").read_text()[-4000:]
    one = tmp_path / "one_node"
    run_cli("train.py", *args, "trainer.devices=2", f"hydra.run.dir={one}", tmp_path=tmp_path)
    m_nodes, m_one = read_metrics(tmp_path / "node0"), read_metrics(one)
    # 63 over 2 ranks: 31 each (one left out), 4 per loader batch: 7 equal steps per epoch, no hang
    assert m_nodes["global_step"] == m_one["global_step"] == 2 * (31 // 4)
    for run in (tmp_path / "node0", one):  # validation ran every epoch (its length is honest)
        with open(run / "history.csv", newline="") as f:
            assert {r["epoch"] for r in csv.DictReader(f) if r["val/acc1"]} == {"0", "1"}
    a = final_weights(tmp_path / "node0" / "checkpoints" / "last.ckpt")
    b = final_weights(one / "checkpoints" / "last.ckpt")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
