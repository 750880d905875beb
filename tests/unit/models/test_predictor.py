"""Predictions (vit_ft.predict, what predict.py runs): top-k class names for generated images, from tiny
random checkpoints (nothing downloads)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.helpers import SHAPE_CLASSES as CLASSES
from vit_ft.data.folder import find_images
from vit_ft.data.transforms import build_eval_transform
from vit_ft.errors import ConfigError
from vit_ft.labels import head_labels
from vit_ft.models.predictor import load_predictor, predict_images

transformers = pytest.importorskip("transformers")


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
