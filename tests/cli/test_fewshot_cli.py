"""``train.py experiment=fewshot`` through the real CLI: mean and std per shot count, in metrics.json and
wandb."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, read_metrics, run_cli, wandb_history_and_config


def test_cli_fewshot_reports_mean_and_std_per_shot_to_metrics_and_wandb(image_folder, tmp_path):
    run_dir = tmp_path / "fs"
    proc = run_cli(
        "train.py",
        "experiment=fewshot",
        "data=imagefolder",
        f"data.root={image_folder}",
        *TINY,
        "probe.shots=[1,5,16]",
        "probe.seeds=3",
        "optimized_metric=fewshot/5shot/acc",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
    )
    m = read_metrics(run_dir)
    assert m["status"] == "completed" and m["fewshot"]["eval_split"] == "val"
    for s in (1, 5, 16):
        acc, std = m["final"][f"fewshot/{s}shot/acc"], m["final"][f"fewshot/{s}shot/acc_std"]
        assert 0.0 <= acc <= 1.0 and std >= 0.0 and len(m["fewshot"]["per_seed"][f"{s}shot"]) == 3
    assert m["final"]["fewshot/16shot/acc_std"] == 0.0  # 16 shots = every train image: one draw
    assert m["value"] == m["final"]["fewshot/5shot/acc"]
    assert "16-shot" in proc.stdout
    history, _ = wandb_history_and_config(run_dir)
    logged = {k: v for h in history for k, v in h.items()}
    assert logged["fewshot/5shot/acc"] == pytest.approx(m["final"]["fewshot/5shot/acc"])

    bad = run_cli(
        "train.py",
        "experiment=fewshot",
        "data=imagefolder",
        f"data.root={image_folder}",
        *TINY,
        "probe.shots=[1,17]",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'bad'}",
        tmp_path=tmp_path,
        check=False,
    )
    assert bad.returncode == 2
    err = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert err == [
        "error: probe.shots=[1, 17] asks for 17 images per class but class 'circle' has only 16 "
        "in the train split; use shot counts up to 16"
    ]
    assert "features: train (64 images) from the disk cache" in bad.stdout + bad.stderr
