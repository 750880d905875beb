"""predict.py: top-k class names for generated images, from tiny random checkpoints (nothing downloads)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tests.conftest import ROOT, run_cli, tiny_hf_vit
from vit_ft.data.folder import find_images
from vit_ft.data.transforms import build_eval_transform
from vit_ft.errors import ConfigError
from vit_ft.labels import head_labels
from vit_ft.models.predictor import load_predictor, predict_images
from vit_ft.tasks.cli import run_cli as run_in_process

transformers = pytest.importorskip("transformers")

CLASSES = ["circle", "cross", "square", "triangle"]  # the image_folder fixture's classes, sorted


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf_vit(dict(enumerate(CLASSES)), seed=0, scale=0.3)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny-vit"
    hf_model.save_pretrained(path)
    prep = {"do_normalize": True, "do_resize": True, "image_mean": [0.4, 0.5, 0.6]}
    prep.update(image_std=[0.2, 0.3, 0.25], resample=2, size={"height": 32, "width": 32})
    (path / "preprocessor_config.json").write_text(json.dumps(prep))
    return path


def test_find_images(image_folder, tmp_path):
    paths = find_images(str(image_folder / "val"))
    assert len(paths) == 24 and paths == sorted(paths) and all(p.startswith(str(image_folder)) for p in paths)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no image files"):
        find_images(str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        find_images(str(tmp_path / "missing.jpg"))
    assert find_images([paths[0], paths[1]]) == paths[:2]


def test_predictions_equal_transformers(hf_dir, hf_model, image_folder):
    """Batched top-k = softmax of transformers' own logits on the eval transform's pixels."""
    paths = find_images(str(image_folder / "val"))[::2]  # 12 images, batches of 5
    predictor = load_predictor(str(hf_dir))
    assert predictor.labels == CLASSES and predictor.preprocessing.img_size == 32
    records = list(predict_images(predictor, paths, topk=3, batch_size=5, num_workers=0))
    assert [r["image"] for r in records] == paths
    transform = build_eval_transform(32, interpolation="bilinear")
    x = torch.stack([transform(p) for p in paths]).float() / 255
    mean, std = (
        torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1),
        torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1),
    )
    with torch.no_grad():
        probs = hf_model(pixel_values=(x - mean) / std).logits.softmax(-1)
    for rec, p in zip(records, probs):
        top = p.topk(3)
        assert [t["index"] for t in rec["topk"]] == top.indices.tolist()
        assert [t["label"] for t in rec["topk"]] == [CLASSES[i] for i in top.indices.tolist()]
        assert torch.allclose(torch.tensor([t["prob"] for t in rec["topk"]]), top.values, atol=1e-5)


def test_imagenet_head_is_labelled_with_imagenet_names(tmp_path, image_folder):
    names, note = head_labels(1000, None)
    assert names[285] == "Egyptian cat" and "imagenet-1k" in note
    assert head_labels(3, ["a", "b", "c"]) == (["a", "b", "c"], None)
    assert head_labels(3, None)[0] == ["class_0", "class_1", "class_2"]
    # a timm state dict with a 1000-class head: ImageNet names from timm, via the Backbone
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=1000)
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[285] = 50.0  # whatever the image, "Egyptian cat"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    notes: list[str] = []
    predictor = load_predictor(
        str(tmp_path / "w.safetensors"),
        backbone="vit_tiny_patch16_224",
        timm_kwargs={"depth": 1},
        notes=notes,
    )
    [rec] = predict_images(predictor, find_images(str(image_folder / "val" / "circle"))[:1], topk=2)
    assert rec["topk"][0]["index"] == 285 and rec["topk"][0]["label"] == "Egyptian cat"
    assert rec["topk"][0]["prob"] > 0.99 and any("1000-class head with its class names" in n for n in notes)


def _predict_cli():
    spec = importlib.util.spec_from_file_location("predict_cli_entry", ROOT / "predict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _error_line(capsys, **overrides) -> str:
    entry = _predict_cli()
    cfg = OmegaConf.merge(OmegaConf.structured(entry.PredictConfig), overrides)
    with pytest.raises(SystemExit) as e:
        run_in_process(entry.predict, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


def test_bad_input_is_one_line(hf_dir, image_folder, tmp_path, capsys):
    val = str(image_folder / "val")
    assert "does not exist" in _error_line(capsys, weights=str(hf_dir), images=str(tmp_path / "nope.jpg"))
    (tmp_path / "empty").mkdir()
    assert "no image files" in _error_line(capsys, weights=str(hf_dir), images=str(tmp_path / "empty"))
    assert "does not exist" in _error_line(capsys, weights=str(tmp_path / "missing.pth"), images=val)
    assert "no-such-org/nope" in _error_line(
        capsys, weights="no-such-org/nope", images=val
    )  # unknown, offline
    assert "topk=0" in _error_line(capsys, weights=str(hf_dir), images=val, topk=0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    line = _error_line(capsys, weights=str(hf_dir), images=str(tmp_path / "bad"))
    assert "broken.jpg" in line and "on_bad_image=skip" in line


def test_cli_prints_and_writes_jsonl(hf_dir, image_folder, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for p in find_images(str(image_folder / "val"))[:3]:
        (images / Path(p).name).write_bytes(Path(p).read_bytes())
    (images / "zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "o" / "preds.jsonl"
    proc = run_cli(
        "predict.py",
        f"weights={hf_dir}",
        f"images={images}",
        "topk=2",
        f"out={out}",
        "batch_size=2",
        "on_bad_image=skip",
        tmp_path=tmp_path,
    )
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(lines) == 3 and all(len(r["topk"]) == 2 for r in lines)
    first = lines[0]["topk"][0]
    assert set(first) == {"index", "label", "prob"} and first["label"] == CLASSES[first["index"]]
    assert f"{lines[0]['image']}\n  {first['prob']:.4f}  {first['label']}" in proc.stdout
    assert "skipping unusable image" in proc.stderr and "zz_broken.png" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # predict writes nothing but out=
