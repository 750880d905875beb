"""``train.py -m experiment=linear_probe`` through the real CLI: the feature cache shared by a sweep's
jobs, checkpoints that eval.py reads back (a probe on DINOv2's last4 features included), and a
``data.extra_eval`` set scored after each probe as eval.py scores it from the checkpoint."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.helpers import TINY, read_metrics, run_cli
from vit_ft.models.load_checkpoint import load_classifier


def test_cli_linear_probe_sweep_reuses_the_cache_and_writes_loadable_checkpoints(image_folder, tmp_path):
    sweep = tmp_path / "sweep"
    shifted = tmp_path / "shifted"  # an extra evaluation set: the val images of 2 of the 4 classes
    for c in ("circle", "square"):
        shutil.copytree(image_folder / "val" / c, shifted / c)
    proc = run_cli(
        "train.py",
        "-m",
        "experiment=linear_probe",
        "data=imagefolder",
        f"data.root={image_folder}",
        *[o for o in TINY if not o.startswith(("optimizer", "scheduler", "+model.timm_kwargs.depth"))],
        "+model.timm_kwargs.depth=4",  # last4 takes the last 4 blocks
        "trainer.max_epochs=4",
        "probe.batchnorm=true",
        "probe.features=mean,last4",
        "logger=none",
        "optimizer.lr=0.03,0.3",
        f"+data.extra_eval.shifted.root={shifted}",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    out = proc.stdout + proc.stderr
    # once per feature type; the other learning rate reads it from memory
    assert out.count("features: extracted train (64 images), val (24 images)") == 2
    assert out.count("features: train (64 images) from the memory cache") == 2
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 4
    jobs = {}
    for job in ("0", "1", "2", "3"):
        overrides = (sweep / job / ".hydra" / "overrides.yaml").read_text()
        jobs.setdefault("last4" if "probe.features=last4" in overrides else "mean", []).append(job)
    assert len(jobs["mean"]) == len(jobs["last4"]) == 2
    eval_job = jobs["last4"][-1]
    for job in ("0", "1", "2", "3"):
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
        if job in jobs["mean"]:  # timm's own pooling switched to the patch mean: a plain timm model
            assert clf.hparams["arch"]["kwargs"]["global_pool"] == "avg" and clf.head_features is None
        else:  # a head on the 5 concatenated tokens
            assert clf.head_features == "last4" and clf.model.head.in_features == 5 * 192
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
                f"+data.extra_eval.shifted.root={shifted}",
                f"hydra.run.dir={tmp_path / ('eval' + job)}",
                tmp_path=tmp_path,
            )
            if job == eval_job
            else None
        )
        # the extra set, scored after the probe trained (from its best checkpoint, on the images)
        extra = m["extra_eval"]["shifted"]
        assert (
            extra["images"] == 12
            and extra["class_subset"] is True
            and (sweep / job / "shifted_predictions.csv").is_file()
        )
        if ev is not None:  # eval.py on the images reproduces the last4 probe's score on cached features
            ev_dir = tmp_path / ("eval" + job)
            scored = json.loads((ev_dir / "metrics.json").read_text())
            assert scored["metrics"]["val/acc1"] == pytest.approx(acc, abs=1e-6)
            assert (ev_dir / "val_predictions.csv").is_file()
            for k in ("shifted/acc1", "shifted/loss"):  # and the extra set as the run scored it
                assert scored["extra_eval"]["shifted"]["metrics"][k] == pytest.approx(
                    extra["metrics"][k], abs=1e-5
                )
