"""``train.py -m experiment=linear_probe`` through the real CLI: the feature cache shared by a sweep's
jobs, checkpoints that eval.py reads back."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import TINY, read_metrics, run_cli
from vit_ft.models.classifier import load_classifier


def test_cli_linear_probe_sweep_reuses_the_cache_and_writes_loadable_checkpoints(image_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        "experiment=linear_probe",
        "data=imagefolder",
        f"data.root={image_folder}",
        *[o for o in TINY if not o.startswith(("optimizer", "scheduler"))],
        "trainer.max_epochs=4",
        "probe.batchnorm=true",
        "probe.features=mean",
        "logger=none",
        "optimizer.lr=0.03,0.3",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert out.count("features: extracted train (64 images), val (24 images)") == 1
    assert "features: train (64 images) from the memory cache" in out
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2
    for job in ("0", "1"):
        m = read_metrics(sweep / job)
        assert m["status"] == "completed" and m["global_step"] == 4 * 8
        assert {"val/acc1", "val/loss", "train/loss", "train/lr"} <= set(m["final"])
        # predictions of the cached-feature probe, from the cached features (no pass over the images)
        with open(sweep / job / "val_predictions.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 24 == m["analysis"]["images"]
        right = sum(int(r["correct"]) for r in rows) / 24
        assert (
            right == pytest.approx(m["analysis"]["acc1"]) == pytest.approx(m["final"]["val/acc1"], abs=1e-6)
        )
        clf = load_classifier(m["checkpoints"]["best"])  # a ViTClassifier with the folded head
        assert clf.hparams["arch"]["kwargs"]["global_pool"] == "avg"
        acc = m["best"]["score"]
        ev = (
            run_cli(
                "eval.py",
                f"data.root={image_folder}",
                "model=vit_tiny",
                "trainer=cpu",
                "trainer.precision=32",
                "data.num_workers=0",
                "data.batch_size=8",
                f"ckpt_path={m['checkpoints']['best']}",
                f"hydra.run.dir={tmp_path / ('eval' + job)}",
                tmp_path=tmp_path,
            )
            if job == "1"
            else None
        )
        if ev is not None:
            got = json.loads((tmp_path / "eval1" / "metrics.json").read_text())["metrics"]["val/acc1"]
            assert got == pytest.approx(acc, abs=1e-6)
            assert (tmp_path / "eval1" / "val_predictions.csv").is_file()
