"""The main job through the real CLI: learning, outputs, wandb, resume, eval."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from tests.helpers import TINY, read_metrics, run_cli, wandb_history_and_config
from vit_ft.training.optim import warmup_decay_factor

EPOCHS = 4
EASIER_CROPS = "data.train_scale=[0.35,1.0]"  # the 64-image set learns in 4 epochs whatever the seed


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    run_dir = tmp / "run"
    proc = run_cli(
        "train.py",
        "data=imagefolder",
        f"data.root={image_folder}",
        *TINY,
        f"trainer.max_epochs={EPOCHS}",
        EASIER_CROPS,
        "callbacks.model_checkpoint.save_top_k=-1",  # keep every epoch's checkpoint (for resume)
        "callbacks.model_checkpoint.monitor=step",
        "model.ema.decay=0.9",  # EMA beside the raw weights; eval.py then evaluates it (use_for=eval)
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp,
    )
    return tmp, run_dir, proc


def test_run_learns_and_writes_outputs(trained):
    _, run_dir, proc = trained
    m = read_metrics(run_dir)
    assert m["status"] == "completed"
    assert m["final"]["val/acc1"] > 0.4  # 4 classes: chance is 0.25 (0.58-0.71 over seeds 1, 2, 3, 42)
    assert m["global_step"] == EPOCHS * 8  # 64 train images / batch 8
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len([c for c in ckpts if c.startswith("best-")]) == EPOCHS
    assert not [c for c in ckpts if c.endswith(".tmp")]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == m["global_step"]  # last.ckpt is the final state, not the best epoch
    assert m["checkpoints"]["last"].endswith("last.ckpt")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert str(run_dir) in proc.stdout and "wandb sync" in proc.stdout


def test_checkpoint_carries_class_names_and_arch(trained, image_folder):
    _, run_dir, _ = trained
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hp = ck["hyper_parameters"]
    assert hp["class_names"] == sorted(p.name for p in (image_folder / "train").iterdir())
    assert hp["arch"]["kwargs"]["img_size"] == 32 and hp["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_wandb_offline_run_holds_metrics_and_config(trained):
    _, run_dir, _ = trained
    history, config = wandb_history_and_config(run_dir)
    keys = set().union(*history)
    assert {"train/loss", "train/lr", "val/loss", "val/acc1"} <= keys
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert len(losses) == EPOCHS * 8
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # loss falls
    assert config["optimizer"]["name"] == "adamw" and config["data"]["batch_size"] == 8
    assert config["class_names"] == ["circle", "cross", "square", "triangle"]
    lrs = {h["trainer/global_step"]: h["train/lr"] for h in history if "train/lr" in h}
    total = EPOCHS * 8
    for step in (0, 2, 5, total - 1):  # logged after `step` optimizer steps
        assert lrs[step] == pytest.approx(0.002 * warmup_decay_factor(step, total, 3), rel=1e-6, abs=1e-12)


def test_resume_continues_at_same_step_and_lr(trained, image_folder):
    tmp, run_dir, _ = trained
    first = sorted((run_dir / "checkpoints").glob("best-epoch000-*.ckpt"))[0]
    resumed = tmp / "resumed"
    run_cli(
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        f"trainer.max_epochs={EPOCHS}",
        EASIER_CROPS,
        f"ckpt_path={first}",
        "logger=csv",
        f"hydra.run.dir={resumed}",
        tmp_path=tmp,
    )
    m = read_metrics(resumed)
    assert m["global_step"] == EPOCHS * 8 and m["epoch"] == EPOCHS
    history, _ = wandb_history_and_config(run_dir)
    ref = {h["trainer/global_step"]: h["train/lr"] for h in history if "train/lr" in h}
    with open(resumed / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/lr")]
    got = {int(r["step"]): float(r["train/lr"]) for r in rows}
    assert min(got) == 8  # continues after the 8 steps of epoch 0, not from 0
    for step, lr in got.items():
        assert math.isclose(lr, ref[step], rel_tol=1e-6, abs_tol=1e-12)


def test_eval_without_predictions_is_one_pass_with_the_same_analysis(trained, image_folder):
    tmp, run_dir, _ = trained
    out = tmp / "eval_one_pass"
    run_cli(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"data.root={image_folder}",
        "trainer=cpu",
        "trainer.precision=32",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.enable_progress_bar=false",
        "predictions=false",
        f"hydra.run.dir={out}",
        tmp_path=tmp,
    )
    assert not list(out.glob("*_predictions.csv"))
    ours, trained_analysis = read_metrics(out)["analysis"], read_metrics(run_dir)["analysis"]
    assert ours["images"] == trained_analysis["images"]
    assert ours["acc1"] == pytest.approx(trained_analysis["acc1"], abs=1e-6)
    assert ours["per_class"] == trained_analysis["per_class"]


def test_eval_cli_reproduces_final_val_accuracy(trained, image_folder):
    tmp, run_dir, _ = trained
    out = tmp / "eval"
    proc = run_cli(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"data.root={image_folder}",
        "trainer=cpu",
        "trainer.precision=32",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}",
        tmp_path=tmp,
    )
    assert "val/acc1" in proc.stdout and "EMA weights" in proc.stdout + proc.stderr
    ev, final = read_metrics(out), read_metrics(run_dir)["final"]
    assert ev["split"] == "val"
    # model.ema.use_for=eval: eval.py evaluates the checkpoint's EMA weights, as validation did
    assert final["val_ema/loss"] != pytest.approx(final["val/loss"], abs=1e-4)
    assert ev["metrics"]["val/acc1"] == pytest.approx(final["val_ema/acc1"], abs=1e-6)
    assert ev["metrics"]["val/loss"] == pytest.approx(final["val_ema/loss"], abs=1e-5)
