"""Multi-label through the real CLI, one trained run shared: train.py on a generated manifest (coloured
squares present or absent = labels), then eval.py, predict.py and export.py on its checkpoint."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.cli.test_resume_cli import final_weights, kill_when_stalled
from tests.helpers import ML_CLASSES, TINY, make_multilabel_manifest, read_metrics, run_cli

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    """One multi-label run, killed -9 mid-epoch; then one multirun: the uninterrupted run (job 0, which the
    other tests use) and the killed run resumed (job 1)."""
    tmp = tmp_path_factory.mktemp("mlabel")
    data = make_multilabel_manifest(tmp / "data", n_train=32, n_val=16)
    with open(data / "train.csv", "a") as f:
        f.write("img/gone.png,red\n")  # a bad row: left out, counted (data.on_bad_image=skip)
    data_args = ["data=manifest", f"data.train={data / 'train.csv'}", f"data.val={data / 'val.csv'}"]
    args = [
        *data_args,
        *TINY,
        "trainer.max_epochs=3",  # 32 images, batch 8: 4 steps an epoch
        "data.on_bad_image=skip",
        "model.mixup.mixup_alpha=0.4",  # multi-hot targets mixed
        "model.label_smoothing=0.05",
        "callbacks.last_checkpoint.every_n_steps=2",
        "logger=none",
    ]
    cut = kill_when_stalled(args, "batch:7", tmp) / "checkpoints" / "last.ckpt"  # epoch 1, saved at step 6
    killed = torch.load(cut, map_location="cpu", weights_only=True)
    sweep = tmp / "sweep"
    proc = run_cli("train.py", "-m", *args, f"ckpt_path=null,{cut}", f"hydra.sweep.dir={sweep}", tmp_path=tmp)
    return tmp, data, sweep / "0", data_args, proc, killed, sweep / "1"


def test_train_decides_multilabel_and_writes_its_outputs(ml_run):
    _, _, run_dir, _, proc, _, _ = ml_run
    assert "model.task=auto: multilabel" in proc.stdout + proc.stderr
    m = read_metrics(run_dir)
    assert m["status"] == "completed" and m["optimized_metric"] == "val/mAP"  # followed from val/acc1
    assert m["best"]["metric"] == "val/mAP" and m["value"] > 0.6  # chance: about the labels' prevalence
    for key in ("val/mAP", "val/mAP_micro", "val/f1_micro", "val/f1_macro", "val/exact_match", "val/loss"):
        assert key in m["final"], key
    assert m["bad_images"]["count"] == 1 and "gone.png" in m["bad_images"]["files"][0]
    a = m["analysis"]
    assert a["task"] == "multilabel" and a["images"] == 16 and sorted(a["per_class"]) == list(ML_CLASSES)
    assert set(a["per_class"]["red"]) >= {"ap", "f1", "support", "threshold"}
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["hyper_parameters"]["task"] == "multilabel"
    thr = last["vit_ft"]["multilabel"]["thresholds"]
    assert [a["per_class"][c]["threshold"] for c in ML_CLASSES] == pytest.approx(thr)
    with open(run_dir / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and set(json.loads(rows[0]["probs"])) == set(ML_CLASSES)


def test_a_multilabel_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(ml_run):
    _, _, run_dir, _, _, killed, resumed = ml_run
    assert killed["epoch"] == 1 and killed["global_step"] == 6
    ref, again = (final_weights(d / "checkpoints" / "last.ckpt") for d in (run_dir, resumed))
    assert [k for k in ref if not torch.equal(ref[k], again[k])] == []
    a, b = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        for d in (run_dir, resumed)
    )
    assert a["vit_ft"]["multilabel"]["thresholds"] == b["vit_ft"]["multilabel"]["thresholds"]
    assert read_metrics(resumed)["final"]["val/mAP"] == read_metrics(run_dir)["final"]["val/mAP"]


def test_eval_gives_the_same_metrics(ml_run):
    tmp, _, run_dir, data_args, _, _, _ = ml_run
    out = tmp / "eval"
    run_cli(
        "eval.py",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        *data_args,
        "trainer=cpu",
        "trainer.precision=32",
        "data.num_workers=0",
        "data.batch_size=8",
        "data.on_bad_image=skip",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={out}",
        tmp_path=tmp,
    )
    ours, trained = read_metrics(out), read_metrics(run_dir)
    assert ours["metrics"]["val/mAP"] == pytest.approx(trained["final"]["val/mAP"], abs=1e-5)
    for name, row in trained["analysis"]["per_class"].items():
        assert ours["analysis"]["per_class"][name] == pytest.approx(row, abs=1e-5)


def test_predict_gives_the_labels_over_the_checkpoint_thresholds(ml_run):
    tmp, data, run_dir, _, _, _, _ = ml_run
    out = tmp / "preds.jsonl"
    images = [str(data / "img" / f"val_{i}.png") for i in range(16)]
    run_cli(
        "predict.py",
        f"weights={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"images=[{','.join(images)}]",
        f"out={out}",
        "quiet=true",
        "device=cpu",
        tmp_path=tmp,
    )
    got = {r["image"]: r for r in map(json.loads, out.read_text().splitlines())}
    with open(run_dir / "val_predictions.csv", newline="") as f:
        csv_rows = {r["file"]: r for r in csv.DictReader(f)}
    for path in images:
        rec, row = got[path], csv_rows[path]
        assert sorted(t["label"] for t in rec["labels"]) == sorted(row["pred_labels"].split())
        probs = json.loads(row["probs"])
        for t in rec["topk"]:
            assert t["prob"] == pytest.approx(probs[t["label"]], abs=1e-4)


def test_export_writes_problem_type_and_thresholds(ml_run):
    tmp, _, run_dir, _, _, _, _ = ml_run
    out = tmp / "exported"
    run_cli("export.py", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"out={out}", tmp_path=tmp)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    thr = last["vit_ft"]["multilabel"]["thresholds"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["problem_type"] == "multi_label_classification" and cfg["thresholds"] == pytest.approx(thr)
    from safetensors import safe_open

    with safe_open(str(out / "timm_model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["vit_ft"])["thresholds"] == pytest.approx(thr)
    # read back: a multi-label head with its thresholds, from either file
    from vit_ft.checkpoint_format import MULTILABEL_ATTR
    from vit_ft.weights import load_weights

    for src in (out, out / "timm_model.safetensors"):
        assert getattr(load_weights(str(src)).model, MULTILABEL_ATTR) == pytest.approx(thr)


def test_onnx_export_carries_the_thresholds_and_predicts_the_same_labels(ml_run):
    tmp, data, run_dir, _, _, _, _ = ml_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    onnx_file = tmp / "deploy" / "model.onnx"
    run_cli("export.py", f"ckpt_path={ckpt}", "format=onnx", f"out={onnx_file}", "card=false", tmp_path=tmp)
    thr = torch.load(ckpt, map_location="cpu", weights_only=True)["vit_ft"]["multilabel"]["thresholds"]
    from vit_ft.weights.onnx_read import read_metadata

    assert json.loads(read_metadata(onnx_file)[0]["thresholds"]) == pytest.approx(thr)
    images = [str(data / "img" / f"val_{i}.png") for i in range(16)]
    outs = {}
    for name, weights in (("ckpt", ckpt), ("onnx", onnx_file)):
        outs[name] = tmp / f"preds_{name}.jsonl"
        run_cli(
            "predict.py",
            f"weights={weights}",
            f"images=[{','.join(images)}]",
            f"out={outs[name]}",
            "quiet=true",
            "device=cpu",
            tmp_path=tmp,
        )
    got = {n: [json.loads(r) for r in p.read_text().splitlines()] for n, p in outs.items()}
    assert [sorted(t["label"] for t in r["labels"]) for r in got["onnx"]] == [
        sorted(t["label"] for t in r["labels"]) for r in got["ckpt"]
    ]
    assert any(r["labels"] for r in got["onnx"])  # some image is over a threshold
