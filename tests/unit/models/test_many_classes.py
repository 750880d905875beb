"""Many classes: above ``DENSE_CONFUSION_MAX`` the confusion matrix is its non-zero cells, on the device
and on the host, and every number made from it is the dense path's (the cap is lowered here to compare)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchmetrics import Metric

from vit_ft.models import analysis as analysis_module
from vit_ft.models.analysis import SparseConfusion, analysis_summary, per_class_accuracy
from vit_ft.models.metrics import ConfusionMatrix, SingleLabelMetrics, SparseConfusionMatrix
from vit_ft.models.predictions import Predictions
from vit_ft.models.subset import SubsetMetrics
from vit_ft.tasks.outputs import eval_summary

K = 7
NAMES = [
    "cat",
    "dog",
    "dog",
    "ñandú",
    "三角",
    "empty, class",
    "owl",
]  # a repeated name; class 5 has no images


def _batches(seed: int = 0, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for size in (13, 1, 29, 8)[:n]:
        y = torch.randint(0, K - 1, (size,), generator=g)
        y[y == 5] = 6  # class 5: no images
        logits = torch.randn(size, K, generator=g)
        logits[:, 1] += 0.8  # "dog" [1] is predicted often: ties among the confusions
        out.append((logits, y))
    return out


def _evaluate(ev, batches) -> tuple[list[tuple[str, float]], dict]:
    for logits, y in batches:
        ev.update(logits, y)
    return [(n, float(v)) for n, v in ev.compute()], ev.analysis


@pytest.fixture
def low_cap(monkeypatch):
    monkeypatch.setattr(analysis_module, "DENSE_CONFUSION_MAX", 2)


def _random_confusion(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cm = rng.integers(0, 3, (k, k)) * (rng.random((k, k)) < 0.4)  # many ties, many empty cells
    cm[k // 2] = 0  # a class without images
    cm[0, 0] = 0  # a class never right
    return cm.astype(np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_summary_of_the_cells_is_the_summary_of_the_matrix(seed):
    cm = _random_confusion(12, seed)
    names = [f"c{i}" for i in range(12)]
    sparse = SparseConfusion.from_dense(cm)
    assert np.array_equal(sparse.toarray(), cm) and sparse.sum() == int(cm.sum())
    assert analysis_summary(sparse, names, split="val", ece=0.1, top=5) == analysis_summary(
        cm, names, split="val", ece=0.1, top=5
    )
    dense_acc, dense_macro = per_class_accuracy(cm)
    acc, macro = per_class_accuracy(sparse)
    assert np.array_equal(acc, dense_acc, equal_nan=True) and macro == dense_macro
    # from (true, pred) pairs, repeats adding up
    true, pred = np.repeat(np.nonzero(cm)[0], cm[cm > 0]), np.repeat(np.nonzero(cm)[1], cm[cm > 0])
    order = np.random.default_rng(seed).permutation(true.size)
    assert np.array_equal(SparseConfusion.from_pairs(true[order], pred[order], 12).toarray(), cm)
    with pytest.raises(ValueError, match="outside"):
        SparseConfusion.from_pairs([0, 12], [1, 1], 12)


def test_the_evaluator_above_the_cap_gives_the_dense_analysis(monkeypatch):
    batches = _batches()
    dense = SingleLabelMetrics("val", K, analysis=True)
    monkeypatch.setattr(analysis_module, "DENSE_CONFUSION_MAX", 2)
    sparse = SingleLabelMetrics("val", K, analysis=True)
    assert isinstance(dense.extra.confusion, ConfusionMatrix)
    assert isinstance(sparse.extra.confusion, SparseConfusionMatrix)
    logged_dense, a_dense = _evaluate(dense, batches)
    logged_sparse, a_sparse = _evaluate(sparse, batches)
    assert logged_sparse == logged_dense  # loss, acc1, acc5, acc1_macro, ece: the same numbers
    assert isinstance(a_sparse["confusion"], SparseConfusion)
    assert np.array_equal(a_sparse["confusion"].toarray(), a_dense["confusion"])
    # metrics.json's analysis, as eval.py predictions=false writes it
    summary = eval_summary(a_sparse, NAMES, "val")
    assert summary == eval_summary(a_dense, NAMES, "val")
    assert summary["per_class"]["empty, class"]["acc1"] is None and summary["top_confusions"]
    assert json.dumps(summary) == json.dumps(eval_summary(a_dense, NAMES, "val"))
    # the next epoch starts afresh; the sanity check's pass (no analysis) gives the same acc1_macro
    logged_dense, _ = _evaluate(dense, batches[1:])
    for logits, y in batches[1:]:
        sparse.update(logits, y)
    assert [(n, float(v)) for n, v in sparse.compute(analysis=False)] == logged_dense[:-1]  # no ece
    assert sparse.extra.confusion.codes == []  # reset


def test_an_extra_set_above_the_cap_gives_the_dense_analysis(low_cap, monkeypatch):
    index = torch.tensor([6, 0, 3, 1])  # the set's 4 classes among the model's 7
    batches = [(lg, y % 4) for lg, y in _batches(seed=3)]
    sparse = SubsetMetrics("extra", 4, index)
    monkeypatch.setattr(analysis_module, "DENSE_CONFUSION_MAX", 2048)
    dense = SubsetMetrics("extra", 4, index)
    logged_sparse, a_sparse = _evaluate(sparse, batches)
    logged_dense, a_dense = _evaluate(dense, batches)
    assert logged_sparse == logged_dense
    names = ["a", "b", "c", "d"]
    assert isinstance(a_sparse["confusion"], SparseConfusion)
    assert analysis_summary(
        a_sparse["confusion"], names, split="extra", ece=a_sparse["ece"]
    ) == analysis_summary(a_dense["confusion"], names, split="extra", ece=a_dense["ece"])


def test_the_prediction_pass_above_the_cap_gives_the_dense_analysis(low_cap):
    rng = np.random.default_rng(5)
    true = rng.integers(0, K, 60)
    pred = np.where(rng.random(60) < 0.5, true, rng.integers(0, K, 60))
    topk = np.stack([pred, (pred + 1) % K], axis=1)
    preds = Predictions(np.arange(60), true, topk, np.full((60, 2), 0.4, dtype=np.float32))
    sparse = preds.confusion(K)
    assert isinstance(sparse, SparseConfusion)
    dense = np.zeros((K, K), dtype=np.int64)
    np.add.at(dense, (true, pred), 1)
    assert np.array_equal(sparse.toarray(), dense)
    assert analysis_summary(sparse, NAMES, split="val", ece=preds.ece()) == analysis_summary(
        dense, NAMES, split="val", ece=preds.ece()
    )


def _state_numel(module: torch.nn.Module) -> dict[str, int]:
    """Elements of every metric state under ``module`` (a list state: the sum of its tensors')."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, Metric):
            for attr, value in m.metric_state.items():
                tensors = value if isinstance(value, list) else [value]
                out[f"{name}.{attr}"] = sum(t.numel() for t in tensors)
    return out


def test_30000_classes_hold_no_k_squared_state():
    k = 30_000
    ev = SingleLabelMetrics("val", k, analysis=True)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (64,), generator=g)
    logits = torch.randn(64, k, generator=g)
    logits[torch.arange(32), y[:32]] += 10.0  # half right
    ev.update(logits, y)
    sizes = _state_numel(ev)
    assert max(sizes.values()) <= k, sizes  # dense: 900,000,000 int64 (7.2 GB)
    assert sizes["extra.confusion.codes"] == 64  # one code per image
    logged = dict(ev.compute())
    confusion = ev.analysis["confusion"]
    assert isinstance(confusion, SparseConfusion) and confusion.sum() == 64
    assert float(logged["val/acc1"]) == pytest.approx(
        int(confusion.count[confusion.true == confusion.pred].sum()) / 64
    )
    summary = eval_summary(ev.analysis, [f"class {i}" for i in range(k)], "val")
    assert summary["images"] == 64 and len(summary["per_class"]) == k and len(summary["top_confusions"]) == 20


def _two_ranks(rank: int, port: int, batches, out) -> None:
    import torch.distributed as dist

    analysis_module.DENSE_CONFUSION_MAX = 2  # this process's own module
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ev = SingleLabelMetrics("val", K, analysis=True)
        for logits, y in batches if rank == 0 else []:  # rank 1 sees no image
            ev.update(logits, y)
        pairs = [(n, float(v)) for n, v in ev.compute()]
        c = ev.analysis["confusion"]
        out.put((rank, pairs, c.true.tolist(), c.pred.tolist(), c.count.tolist()))
    finally:
        dist.destroy_process_group()


def test_two_ranks_one_without_images_gather_the_cells():
    import socket

    import torch.multiprocessing as mp

    batches = _batches(seed=7)
    one = SingleLabelMetrics("val", K, analysis=True)
    expected, a = _evaluate(one, batches)
    cm = a["confusion"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_two_ranks, args=(r, port, batches, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for _, pairs, true, pred, count in got:
        assert [n for n, _ in pairs] == [n for n, _ in expected]
        for (name, value), (_, want) in zip(pairs, expected):
            assert value == pytest.approx(want, abs=1e-6), name
        dense = np.zeros((K, K), dtype=np.int64)
        dense[true, pred] = count
        assert np.array_equal(dense, cm)
