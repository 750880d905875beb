"""Imbalanced classes through train.py: a 60:6:6 folder trained with data.sampler=balanced,
model.class_weights=balanced and monitor=val/acc1_macro. The run prints the imbalance line with its
hint, the best checkpoint and metrics.json follow val/acc1_macro, the checkpoint keeps the weights; a
run killed -9 mid-epoch and resumed ends with the uninterrupted run's weights (torch.equal).
Two subprocesses: the killed run, then one multirun of the uninterrupted run and the resume."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.bench_imbalanced import make_imbalanced_folder
from tests.cli.test_resume_cli import final_weights, kill_when_stalled
from tests.helpers import TINY, run_cli
from vit_ft.models.losses import balanced_class_weights

ARGS = [
    *TINY,
    "trainer.max_epochs=2",  # 72 images, batch 8: 9 steps per epoch
    "trainer.deterministic=true",
    "data.num_workers=2",
    "data.sampler=balanced",
    "model.class_weights=balanced",
    "monitor=val/acc1_macro",
    "callbacks.last_checkpoint.every_n_steps=2",
    "logger=none",
    "test=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imbalanced_cli")
    root = make_imbalanced_folder(str(tmp / "data"), [60, 6, 6], val=6, size=32)
    args = [f"data.root={root}", *ARGS]
    cut = kill_when_stalled(args, "batch:14", tmp)  # inside epoch 1; saved at step 12
    killed = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sweep = tmp / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        *args,
        f"ckpt_path=null,{cut / 'checkpoints' / 'last.ckpt'}",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp,
    )
    return proc.stdout + proc.stderr, killed, sweep


def test_the_run_prints_the_imbalance_and_follows_the_macro_accuracy(runs):
    out, _, sweep = runs
    assert "class counts (train): 6 (rare_a) to 60 (common) images per class over 3 classes; " in out
    assert "imbalance ratio 10.0" in out and "try data.sampler" not in out  # 10 is not over 10
    m = json.loads((sweep / "0" / "metrics.json").read_text())
    assert m["optimized_metric"] == "val/acc1_macro" == m["best"]["metric"]
    assert m["value"] == m["best"]["score"] and "val/acc1_macro" in m["final"]
    assert "val/acc1_macro:" in out  # the closing summary names it
    best = torch.load(m["checkpoints"]["best"], map_location="cpu", weights_only=True)
    assert best["hyper_parameters"]["class_weights"] == pytest.approx(balanced_class_weights([60, 6, 6]))
    state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["monitor"] == "val/acc1_macro"


def test_a_balanced_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(runs):
    _, killed, sweep = runs
    order = killed["ImageFolderDataModule"]["train_order"]
    assert killed["epoch"] == 1 and order["sampler"] == "balanced" and 0 < order["batches"] < 9
    ref, resumed = (final_weights(sweep / str(j) / "checkpoints" / "last.ckpt") for j in (0, 1))
    assert [k for k in ref if not torch.equal(ref[k], resumed[k])] == []
