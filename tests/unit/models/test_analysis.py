"""The analysis of a confusion matrix, the prediction pass's pieces and its CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from vit_ft.models.analysis import analysis_summary, per_class_accuracy, unique_class_names
from vit_ft.models.predictions import CSV_HEADER, Predictions, gather_by_index, write_predictions_csv

NAMES = ["tabby cat", "ñandú", "ñandú twin", "三角 triangle", "empty, class"]
# Rows = true, columns = predicted. "ñandú twin" is deliberately confused with "ñandú" (6 of 8),
# "empty, class" has no images.
CONFUSION = np.array(
    [
        [9, 0, 0, 1, 0],
        [0, 4, 0, 0, 0],
        [0, 6, 2, 0, 0],
        [1, 0, 1, 3, 0],
        [0, 0, 0, 0, 0],
    ]
)


def test_macro_differs_from_micro_and_a_class_without_images_is_null():
    a = analysis_summary(CONFUSION, NAMES, split="val", ece=0.125)
    # By hand: micro = (9 + 4 + 2 + 3) / 27; macro = mean(9/10, 4/4, 2/8, 3/5) over the 4 classes with images.
    assert a["images"] == 27
    assert a["acc1"] == pytest.approx(18 / 27)
    assert a["acc1_macro"] == pytest.approx((0.9 + 1.0 + 0.25 + 0.6) / 4)
    assert a["acc1"] != pytest.approx(a["acc1_macro"])
    assert a["ece"] == 0.125 and a["split"] == "val"
    pc = a["per_class"]
    assert list(pc) == NAMES
    assert pc["empty, class"] == {
        "index": 4,
        "images": 0,
        "acc1": None,
        "top_confusion": None,
        "top_confusion_count": 0,
    }
    assert pc["ñandú twin"]["acc1"] == pytest.approx(0.25)
    assert (pc["ñandú twin"]["top_confusion"], pc["ñandú twin"]["top_confusion_count"]) == ("ñandú", 6)
    assert pc["ñandú"]["top_confusion"] is None  # never wrong
    assert a["top_confusions"][0] == {"true": "ñandú twin", "pred": "ñandú", "count": 6}
    # the rest: count 1 each, in (true, predicted) index order
    assert [(c["true"], c["pred"]) for c in a["top_confusions"][1:]] == [
        ("tabby cat", "三角 triangle"),
        ("三角 triangle", "tabby cat"),
        ("三角 triangle", "ñandú twin"),
    ]
    json.dumps(a)  # plain JSON types only


def test_no_images_at_all_and_top_limit():
    a = analysis_summary(np.zeros((3, 3), dtype=np.int64), ["a", "b", "c"], split="test", ece=float("nan"))
    assert a["acc1"] is None and a["acc1_macro"] is None and a["ece"] is None and a["top_confusions"] == []
    many = np.ones((30, 30), dtype=np.int64)
    assert (
        len(analysis_summary(many, [str(i) for i in range(30)], split="val", ece=0.0)["top_confusions"]) == 20
    )


def test_per_class_accuracy_and_repeated_names():
    acc, macro = per_class_accuracy(CONFUSION)
    assert np.isnan(acc[4]) and macro == pytest.approx(0.6875)
    assert unique_class_names(["crane", "bird", "crane"]) == ["crane [0]", "bird", "crane [2]"]
    a = analysis_summary(np.eye(3, dtype=np.int64), ["crane", "bird", "crane"], split="val", ece=0.0)
    assert list(a["per_class"]) == ["crane [0]", "bird", "crane [2]"]
    with pytest.raises(ValueError):
        analysis_summary(np.eye(3), ["a", "b"], split="val", ece=0.0)


def test_gather_two_ranks_drops_padded_duplicates_and_sorts():
    # Rank 0 had 3 rows, rank 1 had 2 (its second a sampler's padded repeat of index 0).
    shares = [
        (torch.tensor([4, 0, 2]), torch.tensor([40, 0, 20])),
        (torch.tensor([1, 0]), torch.tensor([10, 0])),
    ]
    columns = iter([0, 1])  # gather_by_index gathers the counts, then the index, then each column

    def all_gather(t):  # LightningModule.all_gather: [world, ...] of what every rank passed
        if t.shape == (1,):
            return torch.tensor([[3], [2]])
        j, n = next(columns), t.shape[0]
        return torch.stack([torch.cat([s[j], s[j].new_zeros(n - len(s[j]))]) for s in shares])

    idx, val = gather_by_index(all_gather, 2, *shares[0])
    assert idx.tolist() == [0, 1, 2, 4] and val.tolist() == [0, 10, 20, 40]
    idx1, val1 = gather_by_index(lambda t: t, 1, torch.tensor([2, 0, 0]), torch.tensor([2.0, 0.0, 0.0]))
    assert idx1.tolist() == [0, 2] and val1.tolist() == [0.0, 2.0]


def random_predictions(
    n: int = 200, k: int = 7, seed: int = 0
) -> tuple[Predictions, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    logits = torch.randn(n, k, generator=g) * 2
    logits[torch.arange(n), y] += 3 * torch.rand(n, generator=g)
    probs = logits.softmax(-1)
    p, i = probs.topk(5, dim=1)
    preds = Predictions(np.arange(n), y.numpy(), i.numpy(), p.numpy())
    return preds, probs, y


def test_predictions_confusion_and_ece_agree_with_torchmetrics():
    preds, probs, y = random_predictions()
    c = preds.confusion(7)
    assert c.sum() == 200 and np.trace(c) == int(preds.correct.sum())
    expected = np.zeros((7, 7), dtype=np.int64)
    np.add.at(expected, (y.numpy(), probs.argmax(1).numpy()), 1)
    assert np.array_equal(c, expected)
    ref = float(multiclass_calibration_error(probs, y, num_classes=7, n_bins=15, norm="l1"))
    assert preds.ece() == pytest.approx(ref, abs=1e-6)
    assert (
        Predictions(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 5), int), np.zeros((0, 5))).ece() is None
    )


def test_predictions_csv_round_trips_awkward_names(tmp_path):
    preds, _, _ = random_predictions(n=12, k=5)
    names = ['tabby "cat"', "ñandú", "a,b", "三角", "crane"]
    path = write_predictions_csv(tmp_path / "val_predictions.csv", preds, names, lambda i: f"/d/ñ {i}.jpg")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_HEADER and len(rows) == 12
    assert not list(tmp_path.glob("*.tmp"))
    for r, row in enumerate(rows):
        assert int(row["index"]) == r and row["file"] == f"/d/ñ {r}.jpg"
        assert row["true_label"] == names[int(row["true_index"])]
        assert row["pred_label"] == names[int(row["pred_index"])]
        assert row["correct"] == str(int(row["true_index"] == row["pred_index"]))
        topk = json.loads(row["topk"])
        assert len(topk) == 5 and topk[0][0] == row["pred_label"]
        assert float(row["prob"]) == pytest.approx(topk[0][1], abs=1e-6)
        assert [q for _, q in topk] == sorted((q for _, q in topk), reverse=True)
