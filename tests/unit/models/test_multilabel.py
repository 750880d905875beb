"""Multi-label: the loss (BCE, ASL, smoothing, mixup), the metrics against a numpy reference, DDP-equal
metrics over two gloo ranks, and a tiny classifier trained in-process keeping its thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vit_ft.checkpoint_format import multilabel_thresholds
from vit_ft.errors import ConfigError
from vit_ft.models.augment import DeviceAugment
from vit_ft.models.multilabel_loss import LOSSES, MultiLabelLoss, smooth_binary
from vit_ft.models.multilabel_metrics import MultiLabelMetrics, multilabel_scores


# -- a numpy reference (sklearn's definitions; sklearn is not a dependency) ------------------------------
def ref_ap(scores: np.ndarray, y: np.ndarray) -> float:
    """sklearn's average_precision_score: sum over thresholds of (R_n - R_{n-1}) P_n, ties grouped."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = (distinct + 1) - tp
    prec, rec = tp / (tp + fp), tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def ref_f1(pred: np.ndarray, y: np.ndarray) -> float:
    tp, fp, fn = (pred & y).sum(), (pred & ~y).sum(), (~pred & y).sum()
    return 2 * tp / (2 * tp + fp + fn)


SCORES = np.array(
    [
        [0.9, 0.1, 0.3, 0.2],
        [0.2, 0.8, 0.35, 0.1],
        [0.7, 0.6, 0.3, 0.4],
        [0.4, 0.3, 0.9, 0.3],
        [0.6, 0.2, 0.1, 0.05],
    ],
    dtype=np.float32,
)
TARGETS = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=bool)


def test_scores_equal_the_reference_and_hand_values():
    res = multilabel_scores(torch.from_numpy(SCORES), torch.from_numpy(TARGETS))
    aps = [ref_ap(SCORES[:, c], TARGETS[:, c]) for c in range(3)]
    # hand: class 0 ranks .9(+) .7(-) .6(+) .4(+): AP = (1 + 2/3 + 3/4) / 3
    assert aps[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert res["ap"][:3] == pytest.approx(aps) and math.isnan(res["ap"][3])  # class 3: no positive
    assert res["mAP"] == pytest.approx(np.mean(aps))
    assert res["mAP_micro"] == pytest.approx(ref_ap(SCORES.ravel(), TARGETS.ravel()))
    pred = SCORES >= 0.5
    assert res["f1_micro"] == pytest.approx(ref_f1(pred, TARGETS))
    per = [ref_f1(pred[:, c], TARGETS[:, c]) for c in range(3)]  # class 3: no positive, no prediction
    assert res["f1_macro"] == pytest.approx(np.mean(per))
    assert res["exact_match"] == pytest.approx(np.mean((pred == TARGETS).all(1)))
    assert res["support"] == [3, 2, 2, 0]
    # max-F1 thresholds, halfway to the next lower score: class 2 is separable between 0.35 and 0.3 (F1 1);
    # class 0 best between 0.4 and 0.2 (F1 6/7)
    assert res["best_thresholds"][2] == pytest.approx(0.325) and res["best_thresholds"][0] == pytest.approx(
        0.3
    )
    assert res["best_thresholds"][3] == 0.5
    thr = torch.tensor(res["best_thresholds"])
    again = multilabel_scores(torch.from_numpy(SCORES), torch.from_numpy(TARGETS), thr)
    assert again["f1_macro"] > res["f1_macro"] and again["thresholds"] == pytest.approx(
        res["best_thresholds"]
    )


def test_scores_with_ties_equal_the_reference_on_random_data():
    g = np.random.default_rng(1)
    s = np.round(g.random((60, 7)), 1).astype(np.float32)  # many ties
    y = g.random((60, 7)) < 0.3
    res = multilabel_scores(torch.from_numpy(s), torch.from_numpy(y))
    assert res["mAP_micro"] == pytest.approx(ref_ap(s.ravel(), y.ravel()))
    for c in range(7):
        assert res["ap"][c] == pytest.approx(ref_ap(s[:, c], y[:, c]))
        best_f1 = max(ref_f1(s[:, c] >= t, y[:, c]) for t in np.unique(s[:, c]))
        assert ref_f1(s[:, c] >= res["best_thresholds"][c], y[:, c]) == pytest.approx(best_f1)


def test_evaluator_logs_the_scores_batched():
    ev = MultiLabelMetrics("val", 4, analysis=True)
    logits = torch.logit(torch.from_numpy(SCORES))
    for i in range(0, 5, 2):
        ev.update(logits[i : i + 2], torch.from_numpy(TARGETS[i : i + 2]).float())
    out = dict(ev.compute())
    ref = multilabel_scores(torch.from_numpy(SCORES), torch.from_numpy(TARGETS))
    assert out["val/mAP"] == pytest.approx(ref["mAP"]) and out["val/f1_micro"] == pytest.approx(
        ref["f1_micro"]
    )
    bce = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(TARGETS).float())
    assert float(out["val/loss"]) == pytest.approx(float(bce), rel=1e-5)
    assert ev.analysis["support"] == [3, 2, 2, 0]
    assert dict(ev.compute()) == {}  # reset: nothing seen since
    assert ev.names() == [
        f"val/{n}" for n in ("loss", "mAP", "mAP_micro", "f1_micro", "f1_macro", "exact_match")
    ]


def _rank(rank: int, port: int, out) -> None:
    # (this module imports only torch, numpy and the metrics at its top: a spawned rank starts fast)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ev = MultiLabelMetrics("val", 4, analysis=True)
        logits = torch.logit(torch.from_numpy(SCORES))
        for rows in [[0, 1, 2]] if rank == 0 else [[3], [4]]:  # unequal shares and batches
            ev.update(logits[rows], torch.from_numpy(TARGETS[rows]).float())
        out.put((rank, {k: float(v) for k, v in ev.compute()}))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_one_process_metrics():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    ranks = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    ev = MultiLabelMetrics("val", 4)
    ev.update(torch.logit(torch.from_numpy(SCORES)), torch.from_numpy(TARGETS).float())
    one = {k: float(v) for k, v in ev.compute()}
    assert ranks[0] == pytest.approx(one) and ranks[1] == pytest.approx(one)
    # one rank's own view differs: the shares really were merged
    ref0 = multilabel_scores(torch.from_numpy(SCORES[:3]), torch.from_numpy(TARGETS[:3]))
    assert ref0["mAP"] != pytest.approx(one["val/mAP"])


def test_losses_smoothing_and_asl():
    logits, y = torch.randn(4, 3), (torch.rand(4, 3) > 0.5).float()
    bce = MultiLabelLoss("default", label_smoothing=0.2)
    assert float(bce(logits, y)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, y * 0.8 + 0.1))
    )
    assert float(bce(logits, y, smoothed=True)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits, y))
    )
    assert smooth_binary(torch.tensor([1.0, 0.0]), 0.1).tolist() == pytest.approx([0.95, 0.05])
    asl = MultiLabelLoss("asl")  # gamma_pos=0, gamma_neg=4, clip=0.05: the positive term is plain BCE's
    p = torch.sigmoid(logits)
    pn = (1 - p + 0.05).clamp(max=1)
    per = -(y * torch.log(p) + (1 - y) * torch.log(pn) * (1 - pn) ** 4)
    assert float(asl(logits, y)) == pytest.approx(float(per.sum() / 4), rel=1e-5)
    assert LOSSES == ("default", "asl")
    from tests.helpers import tiny_classifier

    with pytest.raises(ConfigError, match="model.loss=asl is the multi-label asymmetric loss"):
        tiny_classifier(loss="asl")
    with pytest.raises(ConfigError, match="model.task='multi' must be one of auto, single, multilabel"):
        tiny_classifier(task="multi")
    assert tiny_classifier(task="auto").task == "single"  # no data to decide from


def test_mixup_mixes_multi_hot_vectors():
    aug = DeviceAugment({"mixup_alpha": 1.0}, 0.0, 0.0, 3, multi_label=True)
    y = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    torch.manual_seed(0)
    np.random.seed(0)
    _, t = aug(torch.zeros(4, 3, 8, 8), y)
    lam = float(t[0, 0])  # y[0] and its partner y[3]: lam * 1 + (1 - lam) * 0
    assert torch.allclose(t, lam * y + (1 - lam) * y.flip(0))


def test_ranges_name_the_code_s_choices():
    from vit_ft.data.manifest import TASKS
    from vit_ft.settings_ranges import RANGES

    assert set(RANGES["model.task"].values) == set(TASKS)
    assert set(RANGES["model.loss"].values) == set(LOSSES)


def ml_loader(n: int = 16, k: int = 3, batch_size: int = 8, seed: int = 0):
    """Images whose channel means say which of ``k`` labels are on: learnable multi-hot targets."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, k, generator=g) > 0.5).float()
    x = (y[:, :, None, None].expand(n, k, 32, 32) * 200 + 20).to(torch.uint8)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def test_classifier_trains_multilabel_and_checkpoint_keeps_thresholds(tmp_path):
    from tests.helpers import quiet_trainer, tiny_classifier
    from vit_ft.models.load_checkpoint import load_classifier

    clf = tiny_classifier(
        task="multilabel", num_classes=3, class_names=["a", "b", "c"], loss="asl", ema={"decay": 0.5}
    )
    trainer = quiet_trainer(max_epochs=2, enable_checkpointing=False)
    trainer.fit(clf, train_dataloaders=ml_loader(), val_dataloaders=ml_loader(seed=1))
    m = trainer.callback_metrics
    assert {"val/mAP", "val/mAP_micro", "val/f1_micro", "val/f1_macro", "val/exact_match", "val/loss"} <= set(
        m
    )
    assert "train/acc1" not in m and math.isfinite(float(m["train/loss"]))
    assert "val_ema/mAP" in m  # the EMA's stream is multi-label too
    assert clf.eval_analysis["class_names"] == ["a", "b", "c"] and len(clf.eval_analysis["ap"]) == 3
    chosen = clf.thresholds.tolist()
    assert chosen == pytest.approx(clf.eval_analysis["best_thresholds"])
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    assert multilabel_thresholds(torch.load(path, weights_only=True)) == pytest.approx(chosen)
    back = load_classifier(str(path))
    assert back.task == "multilabel" and back.thresholds.tolist() == pytest.approx(chosen)
    probs = back.predict_step(next(iter(ml_loader()))[0], 0)
    assert probs.shape == (8, 3) and not torch.allclose(probs.sum(1), torch.ones(8))  # sigmoid, not softmax
    # predict.py's predictor: every label over the checkpoint's thresholds, or over threshold= for all
    from PIL import Image

    from vit_ft.models.predictor import load_predictor, predict_images

    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (220, 20, 220)).save(img)
    pred = load_predictor(str(path), device="cpu")
    assert pred.thresholds == pytest.approx(chosen)
    rec = next(predict_images(pred, [str(img)], topk=3, num_workers=0))
    probs = {t["label"]: t["prob"] for t in rec["topk"]}
    assert [t["label"] for t in rec["labels"]] == sorted(
        [c for c, t in zip("abc", chosen) if probs[c] >= t], key=lambda c: -probs[c]
    )
    assert load_predictor(str(path), device="cpu", threshold=0.0).thresholds == [0.0] * 3
    all_on = next(
        predict_images(load_predictor(str(path), device="cpu", threshold=0.0), [str(img)], num_workers=0)
    )
    assert len(all_on["labels"]) == 3
