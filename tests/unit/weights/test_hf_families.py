"""transformers directories of DeiT, DINOv2 (with registers), CLIP and SigLIP -> the matching timm
network, with the same features as transformers (fp32, 1e-4 relative): tiny random models saved with
``save_pretrained``, compared in-process. Nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import assert_close_rel
from vit_ft.errors import ConfigError
from vit_ft.weights import create_from_arch, load_weights

transformers = pytest.importorskip("transformers")

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
NAMES = {0: "ant", 1: "bee", 2: "cat"}


def _models():
    """name -> (transformers model, its timm class name): one per model type and head kind."""
    T = transformers
    v28 = dict(VISION, image_size=28, patch_size=14)
    v32 = dict(VISION, image_size=32, patch_size=8)
    lab = dict(num_labels=3, id2label=NAMES, label2id={n: i for i, n in NAMES.items()})
    return {
        "deit_teacher": T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**v32, **lab)),
        "deit": T.DeiTForImageClassification(T.DeiTConfig(**v32, **lab)),
        "dinov2": T.Dinov2Model(T.Dinov2Config(**v28, layerscale_value=0.5)),
        "dinov2_cls": T.Dinov2ForImageClassification(T.Dinov2Config(**v28, **lab)),
        "dinov2_reg": T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**v28, num_register_tokens=3)),
        "clip_vision": T.CLIPVisionModel(T.CLIPVisionConfig(**v32)),
        "clip": T.CLIPModel(T.CLIPConfig(vision_config=v32, text_config=TEXT)),
        "clip_cls": T.CLIPForImageClassification(T.CLIPConfig(vision_config=v32, text_config=TEXT, **lab)),
        "siglip_vision": T.SiglipVisionModel(T.SiglipVisionConfig(**v32)),
        "siglip_cls": T.SiglipForImageClassification(
            T.SiglipConfig(vision_config=v32, text_config=TEXT, **lab)
        ),
    }


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """name -> (transformers model in eval mode, its saved directory)."""
    root = tmp_path_factory.mktemp("hf_families")
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, model in _models().items():
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
            if name == "dinov2_cls":  # a head on the class token only (the mean-patch half zero)
                model.classifier.weight[:, 32:] = 0
        model.eval()
        path = root / name
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


def _pixels(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _pre_logits(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _vision(model):
    return getattr(model, "vision_model", model)


@pytest.mark.parametrize(
    ("name", "timm_class", "size"),
    [
        ("deit_teacher", "VisionTransformerDistilled", 32),
        ("deit", "VisionTransformerDistilled", 32),
        ("dinov2", "VisionTransformer", 28),
        ("dinov2_cls", "VisionTransformer", 28),
        ("dinov2_reg", "VisionTransformer", 28),
        ("clip_vision", "VisionTransformer", 32),
        ("clip", "VisionTransformer", 32),
        ("clip_cls", "VisionTransformer", 32),
        ("siglip_vision", "VisionTransformer", 32),
        ("siglip_cls", "VisionTransformer", 32),
    ],
)
def test_same_features_as_transformers(name, timm_class, size, hf_dirs):
    """Pooled features (and logits of a classification head, and the last hidden state where both
    normalise it) equal transformers' at the checkpoint's size."""
    hf, path = hf_dirs[name]
    bb = load_weights(str(path))
    net = bb.model
    assert type(net).__name__ == timm_class and bb.preprocessing.img_size == size
    create_from_arch(bb.arch).load_state_dict(net.state_dict())  # what a vit-ft checkpoint rebuilds
    x = _pixels(size)
    with torch.no_grad():
        ours = _pre_logits(net, x)
        if name.startswith("clip") and name != "clip_cls":
            assert_close_rel(ours, _vision(hf)(pixel_values=x).pooler_output)
        elif name == "siglip_vision":
            out = hf(pixel_values=x)
            assert_close_rel(ours, out.pooler_output)
            assert_close_rel(net.forward_features(x), out.last_hidden_state)
        elif name.startswith(("dinov2", "deit")) and not name.endswith("cls"):
            base = getattr(hf, "deit", hf)
            out = base(pixel_values=x)
            assert_close_rel(net.forward_features(x), out.last_hidden_state)
        if hasattr(hf, "classifier") or name == "deit_teacher":
            assert bb.head_kept and bb.class_names == list(NAMES.values())
            assert_close_rel(net(x), hf(pixel_values=x).logits)
        else:
            assert not bb.head_kept and bb.num_classes == 0


def test_resolution_change_interpolates_like_transformers(hf_dirs):
    """A new model.img_size resamples the position embeddings as transformers interpolates them."""
    for name, size, kwargs in (
        ("dinov2", 42, {}),
        ("dinov2_reg", 42, {}),
        ("siglip_vision", 48, {"interpolate_pos_encoding": True}),
        ("clip_vision", 48, {"interpolate_pos_encoding": True}),
    ):
        hf, path = hf_dirs[name]
        bb = load_weights(str(path), img_size=size)
        x = _pixels(size, seed=2)
        with torch.no_grad():
            assert_close_rel(_pre_logits(bb.model, x), hf(pixel_values=x, **kwargs).pooler_output)


def test_dinov2_head_on_cls_and_mean_is_not_kept(hf_dirs, tmp_path):
    """Dinov2ForImageClassification's head reads [CLS, mean patch]: with a mean-patch part it cannot
    be timm's head, so a new one is trained (and said)."""
    from safetensors.torch import load_file, save_file

    _, path = hf_dirs["dinov2_cls"]
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_bytes((path / "config.json").read_bytes())
    sd = load_file(str(path / "model.safetensors"))
    sd["classifier.weight"][:, 32:] = 0.1
    save_file(sd, str(d / "model.safetensors"))
    bb = load_weights(str(d), num_classes=3)
    assert not bb.head_kept and any("mean patch token" in n for n in bb.notes)


def test_preprocessing_from_the_processor(hf_dirs, tmp_path):
    """mean/std, resample, shortest_edge and crop_size -> Preprocessing (crop_pct = crop / resize)."""
    _, path = hf_dirs["dinov2"]
    prep = {
        "do_resize": True,
        "size": {"shortest_edge": 32},
        "do_center_crop": True,
        "crop_size": {"height": 28, "width": 28},
        "resample": 3,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
    }
    d = tmp_path / "d"
    d.mkdir()
    for f in path.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / "preprocessor_config.json").write_text(json.dumps(prep))
    p = load_weights(str(d)).preprocessing
    assert (p.img_size, p.interpolation, p.crop_pct) == (28, "bicubic", pytest.approx(28 / 32))
    assert p.mean == (0.485, 0.456, 0.406) and p.std == (0.229, 0.224, 0.225)


def test_unsupported_model_type_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "swin", "hidden_size": 8}))
    with pytest.raises(ConfigError, match=r"model_type='swin'.*supported.*dinov2_with_registers.*siglip"):
        load_weights(str(tmp_path))


def _outputs(model, x):
    """(logits or None, pooled features or None) of a transformers model."""
    if hasattr(model, "text_model"):  # CLIPModel: its vision tower
        return None, model.vision_model(pixel_values=x).pooler_output
    out = model(pixel_values=x)
    return getattr(out, "logits", None), getattr(out, "pooler_output", None)


@pytest.mark.parametrize(
    ("name", "written"),
    [
        ("deit_teacher", "DeiTForImageClassificationWithTeacher"),
        ("deit", "DeiTForImageClassificationWithTeacher"),
        ("dinov2_cls", "Dinov2ForImageClassification"),
        ("dinov2_reg", "Dinov2WithRegistersModel"),
        ("clip", "CLIPVisionModel"),
        ("clip_cls", "CLIPForImageClassification"),
        ("siglip_vision", "SiglipVisionModel"),
        ("siglip_cls", "SiglipForImageClassification"),
    ],
)
def test_export_writes_its_own_transformers_type(name, written, hf_dirs, tmp_path):
    """load -> save_hf_pretrained -> transformers from_pretrained: the same logits / pooled features
    as the original transformers model, and the export reads back to the same network."""
    from vit_ft.weights import save_hf_pretrained

    hf, path = hf_dirs[name]
    bb = load_weights(str(path))
    out = save_hf_pretrained(bb.model, bb.arch, bb.preprocessing, bb.class_names, tmp_path / "export")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [written]
    back = getattr(transformers, written).from_pretrained(out).eval()
    size = bb.preprocessing.img_size
    x = _pixels(size, seed=3)
    with torch.no_grad():
        ref_logits, ref_pooled = _outputs(hf, x)
        logits, pooled = _outputs(back, x)
        if ref_logits is not None:
            assert_close_rel(logits, ref_logits)
        else:
            assert_close_rel(pooled, ref_pooled)
        again = load_weights(str(out))
        assert_close_rel(again.model(x), bb.model(x), rtol=1e-6)
    assert again.class_names == bb.class_names


def test_export_refuses_what_transformers_cannot_express(hf_dirs):
    """A CLIP or SigLIP (attention-pool) network with a trained class-token head has no transformers
    class: one line, nothing written."""
    from vit_ft.weights import hf_export

    for name in ("clip_vision", "siglip_vision"):
        bb = load_weights(str(hf_dirs[name][1]), num_classes=3)
        with pytest.raises(ConfigError, match="cannot be written as a transformers model.*format=timm"):
            hf_export(bb.model, ["a", "b", "c"])


def test_export_refuses_other_timm_classes():
    import timm

    from vit_ft.weights import hf_export

    eva = timm.create_model("eva02_tiny_patch14_224", depth=1, embed_dim=32, num_heads=2, img_size=28)
    with pytest.raises(ConfigError, match="timm's Eva is none of them.*format=timm"):
        hf_export(eva)
    no_bias = timm.create_model(
        "vit_base_patch16_siglip_224", depth=1, embed_dim=32, num_heads=2, qkv_bias=False
    )
    with pytest.raises(ConfigError, match="without q/k/v biases"):
        hf_export(no_bias)
