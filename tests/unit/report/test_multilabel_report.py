"""The run report's multi-label pages from a multi-label val_predictions.csv and metrics.json."""

from __future__ import annotations

import json

import numpy as np

from vit_ft.models.predictions import MultiLabelPredictions, write_multilabel_csv
from vit_ft.report import build_report
from vit_ft.report.files import read_run
from vit_ft.report.multilabel import FALSE_NEG, FALSE_POS, PR_CURVES, confident_errors, read_multilabel


def test_multilabel_pages_table_and_confident_errors(tmp_path):
    from PIL import Image

    names = ["cat", "dog", "car"]
    files = []
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    targets = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=bool)
    probs = np.array([[0.9, 0.7, 0.1], [0.2, 0.6, 0.3], [0.8, 0.4, 0.2], [0.1, 0.2, 0.9]], dtype=np.float32)
    preds = MultiLabelPredictions(np.arange(4), targets, probs)
    write_multilabel_csv(tmp_path / "val_predictions.csv", preds, names, lambda i: files[i], [0.5] * 3)
    (tmp_path / "metrics.json").write_text(
        json.dumps({"analysis": {"task": "multilabel", "split": "val", "per_class": {"dog": {"ap": 0.5}}}})
    )
    run = read_run(tmp_path)
    assert run.predictions is None and "val_predictions.csv" not in run.problems  # not a single-label CSV
    ml = read_multilabel(run)
    assert ml.names == names and ml.predicted.sum() == 5 and (ml.targets == targets).all()
    fp = confident_errors(ml, tmp_path, positives=True)
    assert [(m.index, m.pred_label) for m in fp] == [(0, "+dog")]
    fn = confident_errors(ml, tmp_path, positives=False)  # lowest probability of a true label first
    assert [(m.index, m.pred_label, m.true_label) for m in fn] == [
        (1, "missed car", "dog car"),
        (2, "missed dog", "cat dog"),
    ]
    md = build_report(tmp_path).read_text()
    assert "## Multi-label" in md and "| dog | 2 | 0.500 |" in md  # metrics.json's AP wins over the CSV's
    assert "| cat | 2 | 1.000 |" in md
    for name in (PR_CURVES, FALSE_POS, FALSE_NEG):
        assert (tmp_path / "report" / name).is_file() and f"report/{name}" in md
