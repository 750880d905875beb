"""``train.py experiment=knn`` through the real CLI (issue 13): accuracies per k in metrics.json, wandb and
the summary; the second job of a sweep votes on the cached features without a pass over the images."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, read_metrics, run_cli, wandb_history_and_config


@pytest.fixture(scope="module")
def knn_sweep(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("knn")
    sweep = tmp / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        "experiment=knn",
        "data=imagefolder",
        f"data.root={image_folder}",
        *TINY,
        "probe.temperature=0.1",
        "logger=wandb,none",  # job 1: no wandb start-up (time); metrics.json either way
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp,
    )
    return proc, sweep, tmp


def test_cli_knn_reports_each_k_and_reuses_the_feature_cache(knn_sweep):
    proc, sweep, tmp = knn_sweep
    out = proc.stdout + proc.stderr
    assert out.count("features: extracted train (64 images), val (24 images)") == 1
    assert "features: train (64 images) from the memory cache" in out  # the second job
    assert len(list((tmp / "cache" / "features").glob("*.pt"))) == 2
    for job in ("0", "1"):
        m = read_metrics(sweep / job)
        assert m["status"] == "completed" and m["optimized_metric"] == "knn/k20/acc1"
        # default k = 10, 20, 100, 200 capped at the 64 train images; 4 classes: top-1 only
        assert set(m["final"]) == {"knn/k10/acc1", "knn/k20/acc1", "knn/k64/acc1"}
        assert all(0.0 <= v <= 1.0 for v in m["final"].values())
        assert m["value"] == m["final"]["knn/k20/acc1"]
        assert m["knn"]["k"] == [10, 20, 64] and m["knn"]["temperature"] == 0.1
        assert m["knn"]["eval_images"] == 24 and m["knn"]["bank_images"] == 64
    history, _ = wandb_history_and_config(sweep / "0")
    logged = {k: v for h in history for k, v in h.items()}
    assert logged["knn/k20/acc1"] == pytest.approx(read_metrics(sweep / "0")["final"]["knn/k20/acc1"])
    # same features, same votes: job 1 read them from memory and got the same accuracies
    again = read_metrics(sweep / "1")
    assert again["features"]["train"]["source"] == "memory"
    assert again["final"] == read_metrics(sweep / "0")["final"]
    assert out.count("k-NN accuracy on val (24 images; 64 train images as neighbours)") == 2
    assert "knn/k20/acc1  :" in proc.stdout
