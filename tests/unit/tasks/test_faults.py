"""Faults of whole runs, in process (train/eval/predict tasks on composed configs): a non-finite loss
fails the run with one line and ``status: failed``; checkpoint files are checked before any data or
model setup; resuming on renamed classes stops with the difference; eval and predict accept a
mid-epoch checkpoint and refuse a half-written one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import TINY
from tests.unit.tasks.test_config_and_errors import bad_input, compose_cfg
from vit_ft.tasks.cli import run_cli as run_in_process
from vit_ft.tasks.evaluate import evaluate
from vit_ft.tasks.predict import predict_files
from vit_ft.tasks.train import train


def test_nan_loss_fails_the_run_with_one_line(image_folder, tmp_path, capsys):
    cfg = compose_cfg(
        [*TINY, "logger=none", f"data.root={image_folder}", "optimizer.lr=10", "optimizer.weight_decay=10"]
        + ["trainer.gradient_clip_val=null"],  # the largest lr and decay in range: diverges in a few steps
        tmp_path / "run",
    )
    with pytest.raises(SystemExit) as e:
        run_in_process(train, cfg)
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: non-finite ") and "at optimizer step" in err[-1]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "failed" and m["error_type"] == "RunFault" and m["global_step"] >= 1
    assert m["nonfinite"] == {"on_nonfinite": "stop", "skipped_steps": 0} and m["value"] is None
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # nothing non-finite published


@pytest.fixture(scope="module")
def mid_epoch_run(image_folder, tmp_path_factory):
    """One optimizer step of 2 in the epoch, saved as last.ckpt (a mid-epoch checkpoint)."""
    out = tmp_path_factory.mktemp("mid") / "run"
    cfg = compose_cfg(
        [
            *TINY,
            "logger=none",
            f"data.root={image_folder}",
            "trainer.max_steps=1",
            "test=false",
            "callbacks.last_checkpoint.every_n_steps=1",
            "~callbacks.run_report",
            "~callbacks.model_checkpoint",
        ],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


def test_checkpoint_files_are_checked_before_the_data(mid_epoch_run, tmp_path, capsys):
    half = tmp_path / "last.ckpt.tmp"  # what a save killed half-way leaves
    half.write_bytes(mid_epoch_run.read_bytes()[:5000])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    no_data = "data.root=/no/such/folder"  # checked after the file: the file's error comes first
    line = bad_input([no_data, f"ckpt_path={half}"], tmp_path, capsys)
    assert line.startswith(f"error: ckpt_path='{half}' is truncated or corrupt")
    line = bad_input([no_data, f"ckpt_path={tmp_path / 'empty.ckpt'}"], tmp_path, capsys)
    assert "is empty (0 bytes)" in line
    line = bad_input([no_data, f"model.weights={half}"], tmp_path, capsys)
    assert line.startswith(f"error: model.weights='{half}' is truncated or corrupt")


def test_resume_on_renamed_classes_stops_with_the_difference(mid_epoch_run, image_folder, tmp_path, capsys):
    root = Path(shutil.copytree(image_folder, tmp_path / "renamed"))
    for split in ("train", "val"):
        (root / split / "circle").rename(root / split / "disc")
    line = bad_input([f"data.root={root}", f"ckpt_path={mid_epoch_run}"], tmp_path, capsys)
    assert "was trained on other classes than the data has" in line
    assert "only then: ['circle'], only now: ['disc']" in line


def test_eval_and_predict_accept_a_mid_epoch_checkpoint_and_refuse_a_half_one(
    mid_epoch_run, image_folder, tmp_path, capsys
):
    import torch

    loop = torch.load(mid_epoch_run, weights_only=True, mmap=True)["loops"]["fit_loop"]
    progress = loop["epoch_loop.batch_progress"]
    assert progress["current"]["processed"] == 1 and not progress["is_last_batch"]  # batch 1 of 2: mid-epoch
    cfg = compose_cfg(
        [*TINY, f"data.root={image_folder}", f"ckpt_path={mid_epoch_run}", "predictions=false"],
        tmp_path / "eval",
        config_name="eval",
    )
    assert evaluate(cfg)["val/acc1"] is not None
    images = image_folder / "val" / "circle"
    assert predict_files(str(mid_epoch_run), str(images), quiet=True, num_workers=0) == len(
        list(images.iterdir())
    )
    half = tmp_path / "half.ckpt"
    half.write_bytes(mid_epoch_run.read_bytes()[:-100])
    with pytest.raises(Exception, match=f"weights='{half}' is truncated or corrupt"):
        predict_files(str(half), str(images), quiet=True, num_workers=0)
