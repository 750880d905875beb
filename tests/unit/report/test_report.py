"""The run report from files written here in the documented formats (metrics.json's analysis,
<split>_predictions.csv, history.csv, config_resolved.yaml): pictures, report.md and the CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import ROOT, photo
from vit_ft.report import NotARunError, build_report, figures, mistakes_of, read_run
from vit_ft.report.analysis import analysis_of, from_confusion, select_mistakes
from vit_ft.report.build import PICTURES, REPORT_DIR
from vit_ft.report.figures import MISTAKES_CSV

HEADER = ["index", "file", "true_index", "true_label", "pred_index", "pred_label", "prob", "correct", "topk"]
LINK = re.compile(r"\]\(<?([^)>]+)>?\)")


def prediction_rows(names, confusion, files=None, probs=None):
    """One CSV row per image of ``confusion`` (rows true, columns predicted), in the documented format."""
    rows = []
    for t in range(len(names)):
        for p in range(len(names)):
            for _ in range(int(confusion[t][p])):
                i = len(rows)
                prob = probs[i] if probs is not None else 0.5 + 0.4 * ((i * 37) % 100) / 100
                topk = json.dumps([[names[p], prob]])
                rows.append([i, files[i] if files else f"/nowhere/{i}.jpg", t, names[t], p, names[p],
                             prob, int(t == p), topk])  # fmt: skip
    return rows


def write_predictions(run_dir: Path, rows, split="val"):
    with open(run_dir / f"{split}_predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)


def metrics_analysis(names, confusion, split="val"):
    cm = np.asarray(confusion)
    a = from_confusion(cm, names, split, "test")
    return {
        "split": split,
        "images": int(cm.sum()),
        "acc1": a.acc1,
        "acc1_macro": a.acc1_macro,
        "ece": 0.05,
        "per_class": {
            c.name: {
                "index": c.index,
                "images": c.images,
                "acc1": c.acc1,
                "top_confusion": c.top_confusion,
                "top_confusion_count": c.top_confusion_count,
            }  # fmt: skip
            for c in a.classes
        },
        "top_confusions": [{"true": p.true, "pred": p.pred, "count": p.count} for p in a.pairs],
    }


def write_history(run_dir: Path, steps=8):
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "train/loss", "train/lr", "val/acc1", "val/loss"])
        for s in range(1, steps + 1):
            w.writerow([s, (s - 1) // 4, 2.0 / s, 0.01, "", ""])
            if s % 4 == 0:
                w.writerow([s, (s - 1) // 4, "", "", 0.2 * s / 4, 1.5 / s])


def fake_run(run_dir: Path, names, confusion, *, predictions=True, metrics=True, history=True, files=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "task_name": "train",
        "seed": 42,
        "model": {"backbone": "vit_tiny_patch16_224", "weights": None, "img_size": 32},
        "data": {"_target_": "vit_ft.data.ImageFolderDataModule", "root": "/data/x", "batch_size": 8},
        "optimizer": {"name": "adamw", "lr": 0.002, "weight_decay": 0.05},
        "scheduler": {"decay": "cosine", "warmup_steps": 3},
        "trainer": {"precision": "32", "accelerator": "cpu", "devices": 1, "max_epochs": 2, "max_steps": -1},
        "class_names": list(names),
    }
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    if history:
        write_history(run_dir)
    if predictions:
        write_predictions(run_dir, prediction_rows(names, confusion, files))
    if metrics:
        payload = {
            "optimized_metric": "val/acc1",
            "value": 0.4,
            "best": {"metric": "val/acc1", "score": 0.4, "checkpoint": "ckpt/best.ckpt"},
            "final": {"val/acc1": 0.4, "val/loss": 1.2},
            "test": {},
            "global_step": 8,
            "epoch": 2,
            "status": "completed",
            "analysis": metrics_analysis(names, confusion),
        }
        (run_dir / "metrics.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    return run_dir


def linked(md: str) -> list[str]:
    return LINK.findall(md)


NAMES = ["cat", "dog", "bird", "owl"]
CONFUSION = [[5, 3, 0, 0], [0, 6, 1, 0], [1, 0, 4, 0], [0, 0, 0, 0]]  # owl: no validation images


def test_a_confused_class_shows_in_the_top_confusions(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    md = build_report(run).read_text(encoding="utf-8")
    a = analysis_of(read_run(run))
    assert (a.pairs[0].true, a.pairs[0].pred, a.pairs[0].count) == ("cat", "dog", 3)
    top = md.split("## Top confusions")[1]
    assert "| cat | dog | 3 | 37.5% |" in top
    worst = md.split("## Worst classes")[1].split("##")[0]
    assert "| cat | 8 | 62.5% | dog (3) |" in worst


def test_a_class_without_images_shows_as_no_images_not_zero(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    md = build_report(run).read_text(encoding="utf-8")
    a = analysis_of(read_run(run))
    owl = a.classes[3]
    assert owl.images == 0 and owl.acc1 is None and owl not in a.worst()
    assert "owl" not in md.split("## Worst classes")[1].split("No val images")[0]  # not in the table
    assert "No val images (no accuracy, not 0%): 1 class(es): owl." in md
    with figures.drawing():
        ax = figures.new_figure(4, 3).subplots()
        figures.bars(ax, a.worst(), a.without_images())
    texts = [t.get_text() for t in ax.texts]
    assert texts[-1] == "no images" and "0.0% of 0" not in texts
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "owl"
    # the same from metrics.json alone (no predictions CSV)
    only_metrics = fake_run(tmp_path / "m", NAMES, CONFUSION, predictions=False)
    b = analysis_of(read_run(only_metrics))
    assert b.source == "metrics.json" and b.classes[3].acc1 is None and b.pairs[0].count == 3


def test_1000_classes_draw_the_top_pairs_not_a_grid(tmp_path, monkeypatch):
    k = 1000
    names = [f"class {i}" for i in range(k)]
    rng = np.random.default_rng(0)
    cm = np.diag(rng.integers(1, 5, k))
    cm[7, 8] = 9  # the most confused pair
    cm[10, 3] = 4
    cm[999] = 0  # no images
    run = fake_run(tmp_path / "run", names, cm)

    def no_grid(*a, **k):
        raise AssertionError("a 1000x1000 grid was drawn")

    monkeypatch.setattr(figures, "confusion_grid", no_grid)
    md = build_report(run).read_text(encoding="utf-8")
    w, h = Image.open(run / REPORT_DIR / figures.CONFUSION).size
    assert w <= 1300 and h <= 1000
    assert "| class 7 | class 8 | 9 |" in md
    assert "1 class(es): class 999" in md
    worst = md.split("## Worst classes")[1].split("##")[0]
    assert worst.count("\n| class ") == 1 + 15  # the header and 15 rows, not 1000


def test_unicode_spaces_and_odd_characters_in_class_names(tmp_path):
    names = ["Great Dane", "café crème", "日本語 クラス", "$5 bill $", "a|b", "x" * 80]
    cm = np.eye(6, dtype=int) * 2
    cm[0, 1] = cm[4, 5] = cm[2, 3] = 1
    run = fake_run(tmp_path / "run with space", names, cm)
    md = build_report(run).read_text(encoding="utf-8")
    assert "café crème" in md and "日本語 クラス" in md and "a\\|b" in md and "$5 bill $" in md
    for _, title in PICTURES[:4]:
        assert f"![{title}]" in md
    assert figures.label("x" * 80) == "x" * 27 + "…"
    assert figures.label("two\nlines") == "two lines"


def test_the_mistakes_grid_holds_exactly_the_most_confident_mistakes(tmp_path):
    run = tmp_path / "run"
    images = tmp_path / "images"
    images.mkdir()
    names = ["a", "b"]
    # 20 mistakes (a predicted as b) with distinct probabilities, and 4 correct images above them all
    cm = [[2, 20], [0, 2]]
    files, probs = [], []
    for i in range(24):
        f = images / f"img {i}.jpg"
        photo(40, 30, seed=i).save(f)
        files.append(str(f))
        probs.append(0.99 if i < 2 or i >= 22 else 0.30 + 0.03 * i)  # rows 0,1 and 22,23 are correct
    files[21] = "train[21] (" + files[21] + ")"  # a Hugging Face row naming its file
    os.remove(images / "img 20.jpg")  # the second most confident mistake cannot be opened
    fake_run(run, names, cm, files=files)
    write_predictions(run, prediction_rows(names, cm, files, probs))

    build_report(run)
    expected = [files[i] for i in range(21, 5, -1)]  # 16 mistakes, most confident first
    with open(run / REPORT_DIR / MISTAKES_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == expected
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 17)]
    shown = [r["image"] for r in rows]
    assert shown[0] == str(images / "img 21.jpg") and shown[1] == ""  # the unreadable one is not shown
    assert shown[2:] == [str(images / f"img {i}.jpg") for i in range(19, 5, -1)]
    assert [m.file for m in mistakes_of(run)] == expected
    assert all(r["true_label"] == "a" and r["pred_label"] == "b" for r in rows)
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "1 of their images could not be opened" in md
    picks = select_mistakes(read_run(run).predictions, run, n=3)
    assert [m.index for m in picks] == [21, 20, 19]


def test_report_md_links_every_picture_and_each_link_exists(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    md = build_report(run).read_text(encoding="utf-8")
    links = linked(md)
    assert {f"{REPORT_DIR}/{name}" for name, _ in PICTURES} <= set(links)
    assert f"{REPORT_DIR}/{MISTAKES_CSV}" in links
    for target in links:
        assert (run / target).is_file(), target
    assert "Not drawn" not in md
    assert "| model | vit_tiny_patch16_224, weights random init, img_size 32 |" in md
    assert "| recipe | adamw, lr 0.002, weight decay 0.05, schedule cosine, warmup steps 3 |" in md
    assert "- `val/acc1` (the run's result): 0.4" in md


def test_a_run_with_no_metrics_yet_gets_a_report_of_what_there_is(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION, predictions=False, metrics=False)
    md = build_report(run).read_text(encoding="utf-8")
    assert "no `metrics.json`" in md
    assert (run / REPORT_DIR / figures.CURVES).is_file()
    assert linked(md) == [f"{REPORT_DIR}/{figures.CURVES}"]
    assert "- Confusion: no per-class results yet" in md and "Last logged values" in md


def test_the_in_memory_analysis_of_a_validation_draws_the_pictures(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION, predictions=False, metrics=False)
    live = {
        "split": "val",
        "class_names": NAMES,
        "confusion": np.asarray(CONFUSION, dtype=np.int64),
        "acc1_macro": 0.7,
        "ece": 0.1,
        "reliability": {
            "bin_edges": [0, 0.5, 1],
            "confidence": [0.4, 0.8],
            "accuracy": [0.3, 0.9],
            "count": [3, 17],
        },  # fmt: skip
    }
    md = build_report(run, live).read_text(encoding="utf-8")
    for name in (figures.CURVES, figures.CONFUSION, figures.PER_CLASS, figures.RELIABILITY):
        assert f"{REPORT_DIR}/{name}" in linked(md)
    assert "ECE 0.1000 (from the last validation)" in md


def test_rebuilding_a_folder_that_is_not_a_run_exits_2_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for target in (tmp_path / "empty", tmp_path / "missing"):
        proc = subprocess.run([sys.executable, "-m", "vit_ft.report", str(target)], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0]
    with pytest.raises(NotARunError):
        build_report(tmp_path / "empty")


def test_the_sweep_report_links_each_jobs_run_report(tmp_path):
    from vit_ft.sweeps.report import write_report

    sweep = tmp_path / "sweep"
    for i, lr in enumerate(("0.01", "0.03")):
        job = sweep / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
        (job / "metrics.json").write_text(
            json.dumps({"optimized_metric": "val/acc1", "value": 0.1 * (i + 1)})
        )
    fake_run(sweep / "1", NAMES, CONFUSION, predictions=False)
    build_report(sweep / "1")
    md = write_report(sweep, with_plot=False)["markdown"]
    assert "| [1](1/report.md) |" in md
    assert "| 2 | 0 | completed |" in md  # job 0 has no report: its plain name
    for target in linked(md):
        assert (sweep / target).is_file()
