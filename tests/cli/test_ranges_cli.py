"""Values out of their declared range (vit_ft/settings_ranges.py) through the real commands: one
``error:`` line naming the key, the value and the range, exit status 2, no traceback, nothing trained
or written; a sweep refuses a value all its jobs share before the first job."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, run_cli


def refused(proc, line: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {line}"


# data.hflip=2 and optimizer.layer_decay=0 (the other values seen) go through the same checker: the
# table-driven test in tests/unit/tasks/test_settings_ranges.py tries each bound of each on a composed config.
@pytest.mark.parametrize(
    "override, line",
    [
        ("optimizer.lr=1e300", "optimizer.lr=1e+300 is out of range: must be a number in (0, 10] or null"),
        (
            "optimizer.layer_decay=2",
            "optimizer.layer_decay=2 is out of range: must be a number in (0, 1] or null",
        ),
    ],
)
def test_train_refuses_before_reading_data(override, line, tmp_path):
    # data.root does not exist: the range is checked first, before any data or model is set up
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *TINY,
        "logger=none",
        f"data.root={tmp_path / 'no_such_folder'}",
        override,
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
        check=False,
    )
    refused(proc, line)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


def test_train_refuses_a_lora_rank_wider_than_its_layers(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *TINY,
        "logger=none",
        f"data.root={image_folder}",
        "model.lora.rank=1000",  # the tiny ViT's qkv is 192 -> 576 wide
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
        check=False,
    )
    refused(
        proc,
        "model.lora.rank=1000 is out of range: must be an integer in [1, 192] (the width of attn.qkv)",
    )
    assert not (run_dir / "checkpoints").exists()


def test_eval_predict_export_refuse_a_value_out_of_range(tmp_path):
    proc = run_cli(
        "eval.py",
        *TINY,
        f"data.root={tmp_path / 'no_such_folder'}",
        "data.eval_crop=1.5",
        f"hydra.run.dir={tmp_path / 'eval'}",
        tmp_path=tmp_path,
        check=False,
    )
    refused(
        proc, "data.eval_crop=1.5 is out of range: must be one of auto, none, or a number in (0, 1], or null"
    )
    proc = run_cli(
        "predict.py",
        "weights=no_such.ckpt",
        "images=no_such_folder",
        "topk=0",
        tmp_path=tmp_path,
        check=False,
    )
    refused(proc, "topk=0 is out of range: must be an integer >= 1")
    proc = run_cli(
        "export.py", "ckpt_path=no_such.ckpt", "out=x", "format=onnx", tmp_path=tmp_path, check=False
    )
    refused(proc, "format='onnx' is out of range: must be one of both, hf, timm")
    assert not (tmp_path / "x").exists()


def test_a_sweep_refuses_a_shared_value_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        *[o for o in TINY if not o.startswith("optimizer.lr=")],  # a fixed lr would win over the swept one
        "logger=none",
        f"data.root={tmp_path / 'no_such_folder'}",
        "data.hflip=2",
        "optimizer.lr=0.01,0.02",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
        check=False,
    )
    refused(proc, "data.hflip=2 is out of range: must be a number in [0, 1]")
    assert not [p for p in sweep.glob("*") if p.is_dir() and p.name.isdigit()]  # no job ran
