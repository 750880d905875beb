"""The run report of a real (tiny) training run, and its rebuild with ``python -m vit_ft.report``."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

from tests.helpers import ROOT, TINY, clean_env, run_cli, wandb_history_and_config

LINK = re.compile(r"\]\(<?([^)>]+)>?\)")
HEADER = ["index", "file", "true_index", "true_label", "pred_index", "pred_label", "prob", "correct", "topk"]


def test_training_leaves_history_pictures_and_a_report_that_rebuilds(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train.py",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3",
        "test=false",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
    )
    report = run_dir / "report.md"
    assert f"report        : {report}" in proc.stdout
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows if r["val/acc1"]] == [3, 6]
    md = report.read_text(encoding="utf-8")
    links = LINK.findall(md)
    assert "report/curves.png" in links
    for target in links:
        assert (run_dir / target).is_file(), target
    assert "vit_tiny_patch16_224" in md and "- status: completed" in md
    history, _ = wandb_history_and_config(run_dir)
    assert "report/curves/_type" in set().union(*history)  # the pictures went to the wandb run too

    # the rebuild, here with a predictions file in the documented format (the last column: JSON top-k)
    names = sorted(p.name for p in (image_folder / "val").iterdir())
    files = sorted(p for p in (image_folder / "val").rglob("*") if p.is_file())
    with open(run_dir / "val_predictions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, path in enumerate(files):
            t, p = names.index(path.parent.name), (i // 3) % len(names)
            prob = 0.3 + 0.02 * i
            w.writerow(
                [i, str(path), t, names[t], p, names[p], prob, int(t == p), json.dumps([[names[p], prob]])]
            )
    report.unlink()
    env = {**clean_env(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "vit_ft.report", str(run_dir)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"report        : {report}"
    md = report.read_text(encoding="utf-8")
    links = LINK.findall(md)
    for name in ("curves", "confusion", "per_class", "reliability", "mistakes"):
        assert f"report/{name}.png" in links
    for target in links:
        assert (run_dir / target).is_file(), target
    with open(run_dir / "report" / "mistakes.csv", newline="", encoding="utf-8") as f:
        shown = [r["image"] for r in csv.DictReader(f)]
    assert shown and all(shown)  # every image of the grid was opened
