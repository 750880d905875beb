"""What the model learned, through the CLI: metrics.json's ``analysis`` and ``<split>_predictions.csv``.

The data: four classes with awkward names, one of them ("ñandú twin") made of copies of another's
images ("ñandú"), so the model cannot tell the two apart: the confusion shows up between them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY, make_image_folder, read_metrics, run_cli

# class name -> (quickstart class whose images it takes, number of val images)
CLASSES = {
    "tabby cat": ("circle", 6),
    "ñandú": ("square", 6),
    "ñandú twin": ("square", 3),
    "三角 triangle": ("triangle", 6),
}
VAL_IMAGES = 21  # odd: 2 DDP processes share val 11/10, never a padded repeat that val/* would count
EVAL = [
    "trainer.precision=32",
    "data.num_workers=0",
    "data.batch_size=8",
    "trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def confused_folder(tmp_path_factory) -> Path:
    src = make_image_folder(tmp_path_factory.mktemp("shapes") / "shapes")
    root = tmp_path_factory.mktemp("confused")
    for name, (shape, n_val) in CLASSES.items():
        for split, n in (("train", 16), ("val", n_val)):
            d = root / split / name
            d.mkdir(parents=True)
            for f in sorted((src / split / shape).iterdir())[:n]:
                shutil.copy(f, d / f.name)
    return root


@pytest.fixture(scope="module")
def trained(confused_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    run_dir = tmp / "run"
    run_cli(
        "train.py",
        f"data.root={confused_folder}",
        *TINY,
        "trainer.max_epochs=4",
        "data.train_scale=[0.35,1.0]",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp,
    )
    return tmp, run_dir


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def confusion_of(rows: list[dict], k: int) -> np.ndarray:
    c = np.zeros((k, k), dtype=np.int64)
    for r in rows:
        c[int(r["true_index"]), int(r["pred_index"])] += 1
    return c


def test_analysis_and_predictions_show_the_confused_class(trained, confused_folder):
    _, run_dir = trained
    m = read_metrics(run_dir)
    a = m["analysis"]
    names = sorted(CLASSES)  # the folder's class order
    assert a["split"] == "val" and a["images"] == VAL_IMAGES and list(a["per_class"]) == names
    rows = read_rows(run_dir / "val_predictions.csv")
    assert len(rows) == VAL_IMAGES and sorted(int(r["index"]) for r in rows) == list(range(VAL_IMAGES))
    for r in rows:
        assert Path(r["file"]).is_file() and Path(r["file"]).parent.name == r["true_label"]
        assert len(json.loads(r["topk"])) == 4 and json.loads(r["topk"])[0][0] == r["pred_label"]

    # Micro and mean-per-class accuracy by hand, from the CSV's correct flags.
    correct = np.array([int(r["correct"]) for r in rows])
    true = np.array([int(r["true_index"]) for r in rows])
    micro = correct.mean()
    macro = np.mean([correct[true == c].mean() for c in range(4)])
    assert a["acc1"] == pytest.approx(micro) and a["acc1_macro"] == pytest.approx(macro)
    assert micro != pytest.approx(macro)
    # The final validation (same weights, same images) logged the same numbers.
    assert m["final"]["val/acc1"] == pytest.approx(micro, abs=1e-6)
    assert m["final"]["val/acc1_macro"] == pytest.approx(macro, abs=1e-6)
    assert m["final"]["val/ece"] == pytest.approx(a["ece"], abs=1e-5)
    for name, entry in a["per_class"].items():
        mine = correct[true == entry["index"]]
        assert entry["images"] == len(mine) == CLASSES[name][1] and entry["acc1"] == pytest.approx(
            mine.mean()
        )

    # The twin's images are the original's: each pair gets one prediction, so at most one of them is
    # right, and the pair is confused with each other.
    by_file = {}
    for r in rows:
        by_file.setdefault(Path(r["file"]).name, []).append(r)
    pairs = [v for v in by_file.values() if len(v) == 2]
    assert len(pairs) == CLASSES["ñandú twin"][1]
    for p in pairs:
        assert p[0]["pred_index"] == p[1]["pred_index"] and int(p[0]["correct"]) + int(p[1]["correct"]) <= 1
    c = confusion_of(rows, 4)
    i, j = names.index("ñandú"), names.index("ñandú twin")
    assert c[i, j] + c[j, i] > 0
    twins = {(t["true"], t["pred"]) for t in a["top_confusions"]}
    assert twins & {("ñandú", "ñandú twin"), ("ñandú twin", "ñandú")}
    assert sum(t["count"] for t in a["top_confusions"]) == VAL_IMAGES - np.trace(c)


def test_eval_in_two_processes_gives_the_one_process_matrix_and_predictions(trained, confused_folder):
    """eval.py of last.ckpt (the final model) over 2 DDP processes vs the training run's own pass (1 process)."""
    tmp, run_dir = trained
    out = tmp / "eval_ddp"
    run_cli(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"data.root={confused_folder}",
        *EVAL,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.run.dir={out}",
        tmp_path=tmp,
    )
    m, ev = read_metrics(run_dir), read_metrics(out)
    rows1, rows2 = read_rows(run_dir / "val_predictions.csv"), read_rows(out / "val_predictions.csv")
    assert len(rows1) == len(rows2) == VAL_IMAGES
    for r1, r2 in zip(rows1, rows2):
        assert (r1["index"], r1["file"], r1["pred_index"]) == (r2["index"], r2["file"], r2["pred_index"])
        assert float(r1["prob"]) == pytest.approx(float(r2["prob"]), abs=1e-5)
    assert np.array_equal(confusion_of(rows1, 4), confusion_of(rows2, 4))
    a1, a2 = m["analysis"], ev["analysis"]
    assert a1["per_class"] == a2["per_class"] and a1["top_confusions"] == a2["top_confusions"]
    assert a1["acc1_macro"] == pytest.approx(a2["acc1_macro"])
    assert a1["ece"] == pytest.approx(a2["ece"], abs=1e-6)
    # The metrics gathered over the two processes are the one process's (the final validation).
    for k in ("val/acc1", "val/acc1_macro", "val/ece"):
        assert ev["metrics"][k] == pytest.approx(m["final"][k], abs=1e-5), k
