"""Checkpoints written by an earlier main (tests/fixtures/old_format, see its README) still load in
eval/predict/export with the same logits, and still resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import make_image_folder, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_format"
KINDS = ["ema", "lora", "probe"]
TINY16 = [
    "model=vit_tiny",
    "model.img_size=16",
    "+model.timm_kwargs.depth=1",
    "+model.timm_kwargs.embed_dim=16",
    "+model.timm_kwargs.num_heads=2",
    "trainer=cpu",
    "trainer.precision=32",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "data.batch_size=8",
    "data.num_workers=0",
    "optimizer=adamw",
    "optimizer.lr=0.002",
    "scheduler.warmup_steps=1",
    "logger=none",
]


@pytest.mark.parametrize("kind", KINDS)
def test_old_checkpoint_loads_with_the_same_logits(kind):
    from vit_ft.models.load_checkpoint import load_classifier

    expected = torch.load(FIXTURES / "expected_logits.pt", weights_only=True)
    model = load_classifier(str(FIXTURES / f"{kind}.ckpt")).eval()
    with torch.no_grad():
        got = model(expected["x"])
    torch.testing.assert_close(got, expected[kind], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("old") / "data", n_train=8, n_val=4, size=24)


def test_old_checkpoints_in_eval_predict_export(data, tmp_path):
    """One entry point per kind (each CLI call costs seconds): eval a LoRA, predict with a probe, export an EMA run."""
    run_cli(
        "eval.py",
        f"ckpt_path={FIXTURES / 'lora.ckpt'}",
        f"data.root={data}",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path / 'eval'}",
        tmp_path=tmp_path,
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["metrics"]["val/acc1"] <= 1.0
    out = tmp_path / "preds.jsonl"
    run_cli(
        "predict.py",
        f"weights={FIXTURES / 'probe.ckpt'}",
        f"images={data / 'val'}",
        f"out={out}",
        tmp_path=tmp_path,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and rows[0]["topk"][0]["label"] in {"circle", "cross", "square", "triangle"}
    run_cli(
        "export.py", f"ckpt_path={FIXTURES / 'ema.ckpt'}", f"out={tmp_path / 'exported'}", tmp_path=tmp_path
    )
    assert (tmp_path / "exported" / "config.json").is_file()


def test_old_checkpoint_resumes(data, tmp_path):
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(FIXTURES / "ema.ckpt", ckpt)
    before = torch.load(ckpt, map_location="cpu", weights_only=True)
    run_dir = tmp_path / "run"
    run_cli(
        "train.py",
        *TINY16,
        f"data.root={data}",
        "model.ema.decay=0.9",
        "model.ema.use_for=eval",
        "trainer.max_epochs=3",
        f"ckpt_path={ckpt}",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
    )
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert before["global_step"] == 8 and after["global_step"] == 12
    assert any(k.startswith("model_ema.") for k in after["state_dict"])


OLD_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "old_run"


def test_an_old_run_folder_resumes_with_ckpt_path_auto_as_it_ran(data, tmp_path):
    """Written before recipe/monitor/lr_base existed: the same command (run longer) continues it with the
    configured batch and warmup and its own lr, not recipe=auto's or lr_base x batch."""
    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    saved = run_dir / "config_resolved.yaml"
    saved.write_text(saved.read_text().replace("root: /tmp/oldrun_data", f"root: {data}"))
    old = [o for o in TINY16 if o not in ("optimizer=adamw", "optimizer.lr=0.002")]  # lr: the saved one
    proc = run_cli(
        "train.py",
        *old,
        f"data.root={data}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        tmp_path=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "was written by an older vit-ft: it resumes as it ran" in out and "another config" not in out
    assert "recipe=auto:" not in out and "lr 0.002: optimizer.lr as given" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 8 and metrics["epoch"] == 2
    # the same command again: the folder is now today's and finished
    again = run_cli(
        "train.py",
        *old,
        f"data.root={data}",
        f"hydra.run.dir={run_dir}",
        "trainer.max_epochs=2",
        tmp_path=tmp_path,
    )
    assert "nothing to do" in again.stdout
