"""The metrics every validation adds: confusion matrix, mean-per-class accuracy, ECE, reliability bins."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multiclass_calibration_error

from tests.helpers import quiet_trainer, tiny_classifier, uint8_loader
from vit_ft.models.classifier import ViTClassifier
from vit_ft.models.metrics import (
    AnalysisMetrics,
    ConfusionMatrix,
    MeanLoss,
    ReliabilityBins,
    SingleLabelMetrics,
)
from vit_ft.models.streams import eval_streams


def tiny(k: int) -> ViTClassifier:
    return tiny_classifier(num_classes=k, class_names=["a b", "ñandú", "c", "d", "三角"][:k])


def test_confusion_matrix_counts_as_torchmetrics_does():
    g = torch.Generator().manual_seed(0)
    ours, stock = (
        ConfusionMatrix(num_classes=6, validate_args=False),
        MulticlassConfusionMatrix(num_classes=6),
    )
    for _ in range(3):
        logits, y = torch.randn(50, 6, generator=g), torch.randint(0, 6, (50,), generator=g)
        ours.update(logits, y)
        stock.update(logits, y)
    ours.update(torch.tensor([2, 2, 2]), torch.tensor([1, 1, 1]))  # class indices; repeated cells
    stock.update(torch.tensor([2, 2, 2]), torch.tensor([1, 1, 1]))
    assert torch.equal(ours.compute(), stock.compute()) and int(ours.compute().sum()) == 153


def test_reliability_bins_count_confidence_and_correct_per_bin():
    m = ReliabilityBins(15)
    # bin 14 (right), exactly 1: the last bin too (wrong), bin 8 (right), bin 9 (right)
    m.update(torch.tensor([0.95, 1.0]), torch.tensor([True, False]))
    m.update(torch.tensor([0.55, 0.6]), torch.tensor([True, True]))
    r = m.compute()
    assert len(r["bin_edges"]) == 16 and r["bin_edges"][0] == 0.0 and r["bin_edges"][-1] == 1.0
    assert r["count"][14] == 2 and r["count"][8] == 1 and r["count"][9] == 1 and sum(r["count"]) == 4
    assert r["accuracy"][14] == 0.5 and r["confidence"][14] == pytest.approx(0.975)
    assert r["accuracy"][9] == 1.0 and r["confidence"][9] == pytest.approx(0.6)
    assert np.isnan(r["accuracy"][0]) and np.isnan(r["confidence"][0])  # an empty bin has no accuracy


def test_analysis_metrics_ece_is_torchmetrics_multiclass_one():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(300, 9, generator=g) * 3, torch.randint(0, 9, (300,), generator=g)
    m = AnalysisMetrics(9)
    for s in range(0, 300, 64):
        m.update(logits[s : s + 64], y[s : s + 64])
    res = m.compute()
    ref = float(multiclass_calibration_error(logits.softmax(-1), y, num_classes=9, n_bins=15, norm="l1"))
    assert res["ece"] == pytest.approx(ref, abs=1e-6)
    assert res["confusion"].sum() == 300 and sum(res["reliability"]["count"]) == 300
    m.reset()
    assert np.isnan(m.compute()["ece"])  # no images: no calibration error (and no error)


def perturbed(k: int = 5) -> L.LightningModule:
    m = tiny(k)
    with torch.no_grad():  # a zero head predicts class 0 for everything: give it some spread
        m.model.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    return m


def outputs(m: L.LightningModule, dl: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    m.eval()
    with torch.no_grad():
        logits = torch.cat([m(x) for x, _ in dl])
    return logits, torch.cat([y for _, y in dl])


@pytest.mark.parametrize("stage", ["val", "test"])
def test_validation_logs_macro_accuracy_and_ece_and_leaves_the_gathered_analysis(stage):
    m, dl = perturbed(), uint8_loader(n=40)
    logits, y = outputs(m, dl)
    assert m.eval_analysis is None
    trainer = quiet_trainer()
    res = (trainer.validate if stage == "val" else trainer.test)(m, dataloaders=dl, verbose=False)[0]

    pred = logits.argmax(1)
    expected = np.zeros((5, 5), dtype=np.int64)
    np.add.at(expected, (y.numpy(), pred.numpy()), 1)
    per_class = [expected[c, c] / expected[c].sum() for c in range(5) if expected[c].sum()]
    ece = float(multiclass_calibration_error(logits.softmax(-1), y, num_classes=5, n_bins=15, norm="l1"))
    a = m.eval_analysis
    assert a["split"] == stage and a["class_names"] == ["a b", "ñandú", "c", "d", "三角"]
    assert a["confusion"].dtype == np.int64 and np.array_equal(a["confusion"], expected)
    assert res[f"{stage}/acc1_macro"] == pytest.approx(np.mean(per_class), abs=1e-6) == a["acc1_macro"]
    assert res[f"{stage}/acc1"] == pytest.approx(np.trace(expected) / 40, abs=1e-6)
    assert res[f"{stage}/ece"] == pytest.approx(ece, abs=1e-5) and a["ece"] == pytest.approx(ece, abs=1e-5)
    assert sum(a["reliability"]["count"]) == 40
    assert sum(
        round(c * acc) for c, acc in zip(a["reliability"]["count"], a["reliability"]["accuracy"]) if c
    ) == int((pred == y).sum())
    # the metrics start afresh each epoch
    res2 = trainer.validate(m, dataloaders=dl, verbose=False)[0] if stage == "val" else None
    if res2 is not None:
        assert np.array_equal(m.eval_analysis["confusion"], expected)


def test_a_class_without_images_is_left_out_of_the_mean():
    m = perturbed(3)
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1] * 6)  # class 2 has no images
    dl = DataLoader(TensorDataset(x, y), batch_size=5)
    logits, _ = outputs(m, dl)
    res = quiet_trainer().validate(m, dataloaders=dl, verbose=False)[0]
    pred = logits.argmax(1)
    acc = [float((pred[y == c] == c).float().mean()) for c in (0, 1)]
    assert res["val/acc1_macro"] == pytest.approx(sum(acc) / 2, abs=1e-6)
    assert m.eval_analysis["confusion"][2].sum() == 0


class SeesAnalysis(L.Callback):
    def __init__(self) -> None:
        self.after_sanity, self.at_end = "unset", []

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self.after_sanity = pl_module.eval_analysis

    def on_validation_end(self, trainer, pl_module) -> None:
        self.at_end.append(pl_module.eval_analysis)


def test_sanity_check_sets_nothing_and_callbacks_see_each_validation(tmp_path):
    m, cb = perturbed(), SeesAnalysis()
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=1, callbacks=[cb], limit_train_batches=2)
    trainer.fit(m, train_dataloaders=uint8_loader(), val_dataloaders=uint8_loader(seed=1))
    assert cb.after_sanity is None
    # on_validation_end after the sanity check sees nothing yet; then one analysis per epoch
    assert cb.at_end[0] is None and len(cb.at_end) == 3
    assert all(a["confusion"].sum() == 32 for a in cb.at_end[1:]) and cb.at_end[1] is not cb.at_end[2]
    assert {"val/acc1_macro", "val/ece"} <= set(trainer.callback_metrics)
    # no metric state in checkpoints: old checkpoints load, new ones are unchanged
    assert not [k for k in m.state_dict() if k.startswith(("val_", "test_", "train_"))]


def test_a_stream_gives_its_prefixed_pairs_then_starts_afresh():
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(20, 6, generator=g), torch.randint(0, 6, (20,), generator=g)
    ev = SingleLabelMetrics("test", 6, analysis=True)
    ev.update(logits[:12], y[:12])
    ev.update(logits[12:], y[12:])
    got = dict(ev.compute())
    assert list(got) == ["test/loss", "test/acc1", "test/acc5", "test/acc1_macro", "test/ece"]
    assert float(got["test/loss"]) == pytest.approx(float(F.cross_entropy(logits, y)), abs=1e-6)
    assert float(got["test/acc1"]) == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean()
    assert float(got["test/acc5"]) == pytest.approx(float(top5))
    assert ev.analysis["confusion"].sum() == 20 and ev.analysis["acc1_macro"] == got["test/acc1_macro"]
    # reset: no batch since, so no loss or accuracy (Lightning logs nothing), the analysis says NaN
    again = dict(ev.compute())
    assert list(again) == ["test/acc1_macro", "test/ece"] and np.isnan(again["test/ece"])
    assert dict(ev.compute(analysis=False)) == {} and ev.analysis is None  # the sanity check


def test_streams_per_prefix_and_ema_streams_without_the_analysis():
    plain, with_ema = eval_streams(3, ema=False), eval_streams(3, ema=True)
    assert list(plain) == ["val", "test"] and list(with_ema) == ["val", "test", "val_ema", "test_ema"]
    ev = with_ema["val_ema"]
    assert ev.extra is None and ev.acc5 is None  # 3 classes: no top-5
    ev.update(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    assert [n for n, _ in ev.compute()] == ["val_ema/loss", "val_ema/acc1", "val_ema/acc1_macro"]


def test_the_loss_mean_weights_batches_and_stays_float32_under_a_bf16_module():
    m = MeanLoss().to(torch.bfloat16)  # what precision=bf16-true does to the LightningModule
    assert m.total.dtype == torch.float32  # a rank without batches gathers float32 too
    m.update(torch.tensor(1.0), 3)
    m.update(torch.tensor(1.0 / 3), 6)  # bf16 sums would round this
    assert m.total.dtype == torch.float32
    assert float(m.compute()) == pytest.approx((3 * 1.0 + 6 / 3) / 9, abs=1e-7)
    m.reset()
    assert m.total.dtype == torch.float32 and int(m.count) == 0


def _two_ranks(rank: int, port: int, logits: torch.Tensor, y: torch.Tensor, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        full, empty = SingleLabelMetrics("val", 6, analysis=True), SingleLabelMetrics("val_ema", 6)
        for part in [slice(0, 10)] if rank == 0 else [slice(10, 18), slice(18, None)]:
            full.update(logits[part], y[part])  # the ranks' batches differ in count and size
        pairs = {k: float(v) for k, v in full.compute()}  # plain floats: no tensor outlives its process
        out.put((rank, pairs, dict(empty.compute())))  # no rank saw a batch: all skip
    finally:
        dist.destroy_process_group()


def test_two_ranks_log_what_one_process_logs_over_all_images():
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(4)
    logits, y = torch.randn(26, 6, generator=g), torch.randint(0, 6, (26,), generator=g)
    one = SingleLabelMetrics("val", 6, analysis=True)
    one.update(logits, y)
    expected = dict(one.compute())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_two_ranks, args=(r, port, logits, y, out)) for r in range(2)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for _, pairs, empty in got:
        assert empty == {} and list(pairs) == list(expected)
        for name, value in expected.items():
            assert float(pairs[name]) == pytest.approx(float(value), abs=1e-6), name
