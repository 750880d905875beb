"""More evaluation sets through the CLI: a tiny training run scores a set of 2 of its 4 classes (with a
ReaL-style labels file) after training, then ``eval.py`` scores the same set from the best checkpoint."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from tests.helpers import TINY, read_metrics, run_cli

KEYS = {"shifted/acc1", "shifted/acc1_macro", "shifted/ece", "shifted/loss", "shifted/real_acc1"}


@pytest.fixture(scope="module")
def shifted(image_folder, tmp_path_factory):
    """The val images of circle and square, and a labels file accepting both classes for every circle
    image and listing none for the squares (left out): ReaL top-1 is then 1 whatever the model says."""
    root = tmp_path_factory.mktemp("extra") / "shifted"
    for c in ("circle", "square"):
        shutil.copytree(image_folder / "val" / c, root / c)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    real = {f: (["circle", "square"] if f.startswith("circle/") else []) for f in files}
    labels = root.parent / "real.json"
    labels.write_text(json.dumps(real))
    return root, labels, files


@pytest.fixture(scope="module")
def trained(image_folder, shifted, tmp_path_factory):
    root, labels, _ = shifted
    tmp = tmp_path_factory.mktemp("extra_run")
    run_dir = tmp / "run"
    proc = run_cli(
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "logger=csv",
        "optimized_metric=shifted/acc1",
        f"+data.extra_eval.shifted.root={root}",
        f"+data.extra_eval.shifted.labels_file={labels}",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp,
    )
    return run_dir, proc


def test_training_scores_the_extra_set_everywhere(trained, shifted):
    run_dir, proc = trained
    _, _, files = shifted
    m = read_metrics(run_dir)
    s = m["extra_eval"]["shifted"]
    assert set(s["metrics"]) == KEYS  # 2 classes: no acc5
    assert s["images"] == len(files) and s["skipped_images"] == 0
    assert s["classes"] == 2 and s["class_subset"] is True
    assert m["value"] == s["metrics"]["shifted/acc1"]  # optimized_metric may follow an extra set
    assert s["metrics"]["shifted/real_acc1"] == 1.0  # every listed image accepts both classes
    assert s["real_images"] == sum(f.startswith("circle/") for f in files)
    assert set(s["analysis"]["per_class"]) == {"circle", "square"}
    # its own predictions CSV, over the set's classes
    with open(run_dir / "shifted_predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(files)
    assert {r["true_label"] for r in rows} == {"circle", "square"}
    assert {r["pred_label"] for r in rows} <= {"circle", "square"}
    acc = sum(int(r["correct"]) for r in rows) / len(rows)
    assert s["metrics"]["shifted/acc1"] == pytest.approx(acc)
    # the logger, the summary and the report
    with open(run_dir / "csv" / "metrics.csv", newline="", encoding="utf-8") as f:
        logged = [r for r in csv.DictReader(f) if r.get("shifted/acc1")]
    assert len(logged) == 1 and float(logged[0]["shifted/acc1"]) == pytest.approx(acc)
    assert "shifted       : acc1" in proc.stdout and "shifted_predictions.csv" in proc.stdout
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "## More evaluation sets" in md and "### shifted" in md
    assert "(shifted_predictions.csv)" in md


def test_eval_scores_the_same_set_from_the_best_checkpoint(trained, shifted, image_folder, tmp_path):
    run_dir, _ = trained
    root, labels, _ = shifted
    train_metrics = read_metrics(run_dir)
    best = train_metrics["best"]["checkpoint"]
    out = tmp_path / "eval"
    proc = run_cli(
        "eval.py",
        f"ckpt_path={best}",
        f"data.root={image_folder}",
        "trainer=cpu",
        "data.batch_size=8",
        "data.num_workers=0",
        f"+data.extra_eval.shifted.root={root}",
        f"+data.extra_eval.shifted.labels_file={labels}",
        f"hydra.run.dir={out}",
        tmp_path=tmp_path,
    )
    m = read_metrics(out)
    got = m["extra_eval"]["shifted"]["metrics"]
    want = train_metrics["extra_eval"]["shifted"]["metrics"]
    assert set(got) == KEYS
    for k in ("shifted/acc1", "shifted/real_acc1", "shifted/loss"):  # the training scored the best weights
        assert got[k] == pytest.approx(want[k], abs=1e-5), k
    assert KEYS <= set(m["metrics"])
    assert (out / "shifted_predictions.csv").is_file()
    assert "shifted       : acc1" in proc.stdout
