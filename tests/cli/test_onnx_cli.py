"""ONNX through the real CLI, three subprocesses in all: a tiny run trained with LoRA and EMA, its best
checkpoint exported with ``export.py format=onnx`` (verified on the run's validation images), and
``predict.py weights=model.onnx`` giving the checkpoint's predictions (the checkpoint's side, onnx_info
and a corrupted ``.onnx`` refused in one line run in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SHAPE_CLASSES, TINY, run_cli

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("onnx")
    run_dir = tmp / "run"
    run_cli(
        "train.py",
        "data=imagefolder",
        f"data.root={image_folder}",
        *TINY,
        "trainer.max_epochs=1",
        "model.ema.decay=0.5",  # the EMA is what eval, predict and export use (use_for=eval)
        "model.lora.rank=2",  # adapters merged into the exported network
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp,
    )
    ckpt = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))[0]
    out = tmp / "deploy" / "model.onnx"
    proc = run_cli("export.py", f"ckpt_path={ckpt}", "format=onnx", f"out={out}", tmp_path=tmp)
    return tmp, ckpt, out, proc


def test_export_is_verified_on_the_runs_val_images(exported):
    tmp, _, out, proc = exported
    # the file, its model card and the report's pictures beside it; no temp file
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == [
        "README.md",
        "images",
        "model.onnx",
    ]
    assert "library_name: onnx" in (out.parent / "README.md").read_text()
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("verify batch 1: max |dlogit| ") and "top-1 agreement 1/1" in ln for ln in lines)
    assert any(ln.startswith("verify batch 8: ") and "top-1 agreement 8/8" in ln for ln in lines), proc.stdout
    assert "verified by ONNX Runtime on 8 images of " in proc.stdout and "opset 17, fp32" in proc.stdout
    assert not (tmp / "outputs").exists()


def test_predict_on_onnx_equals_the_checkpoint(exported, image_folder, capsys):
    from vit_ft.onnx_info import main
    from vit_ft.tasks.predict import predict_files

    tmp, ckpt, out, _ = exported
    images = str(image_folder / "val")
    ref_file, onnx_file = tmp / "ckpt.jsonl", tmp / "onnx.jsonl"
    predict_files(str(ckpt), images, topk=2, out=str(ref_file), quiet=True, device="cpu")
    proc = run_cli(
        "predict.py", f"weights={out}", f"images={images}", "topk=2", f"out={onnx_file}", tmp_path=tmp
    )
    ref = [json.loads(ln) for ln in ref_file.read_text().splitlines()]
    got = [json.loads(ln) for ln in onnx_file.read_text().splitlines()]
    assert len(got) == len(ref) == 24  # make_image_folder: 6 val images per class
    for a, b in zip(got, ref):
        assert a["image"] == b["image"] and [t["index"] for t in a["topk"]] == [t["index"] for t in b["topk"]]
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        assert abs(a["topk"][0]["prob"] - b["topk"][0]["prob"]) < 1e-4
    first = got[0]["topk"][0]
    assert f"{got[0]['image']}\n  {first['prob']:.4f}  {first['label']}" in proc.stdout
    assert "ONNX Runtime (CPUExecutionProvider)" in proc.stderr

    capsys.readouterr()
    assert main([str(out)]) == 0
    info = capsys.readouterr().out
    assert ", ".join(SHAPE_CLASSES) in info and "img_size       : 32" in info and "vit_ft_version" in info


def test_corrupted_onnx_is_one_line(exported, image_folder, capsys):
    """predict.py's job in process (as the CLI runs it): a truncated .onnx -> one line, exit status 2."""
    from omegaconf import OmegaConf

    from vit_ft.tasks.cli import run_cli as run_job
    from vit_ft.tasks.predict import PredictConfig, predict

    tmp, _, out, _ = exported
    bad = tmp / "bad.onnx"
    bad.write_bytes(Path(out).read_bytes()[:5000])
    cfg = OmegaConf.merge(
        OmegaConf.structured(PredictConfig), {"weights": str(bad), "images": str(image_folder / "val")}
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_job(predict, cfg)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: weights={str(bad)!r} is not a readable ONNX model")
