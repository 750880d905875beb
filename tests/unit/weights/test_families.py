"""Every ViT family people fine-tune, from timm: a tiny random model of the SAME timm class per family
(DINOv2 with and without registers, CLIP, SigLIP, EVA-02, DeiT-distilled, BEiT), loaded through
``load_weights`` as a weight file and as a timm pretrained tag, with head replacement, resolution
change, freezing and layer decay. Nothing is downloaded."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.helpers import assert_close_rel
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier
from vit_ft.training.optim import build_optimizer
from vit_ft.weights import load_weights

# family -> (timm model, pretrained tag, native img size); all built with TINY_KW
FAMILIES = {
    "dinov2": ("vit_small_patch14_dinov2", "lvd142m", 28),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", "lvd142m", 28),
    "clip": ("vit_base_patch16_clip_quickgelu_224", "openai", 32),
    "siglip": ("vit_base_patch16_siglip_224", "webli", 32),
    "eva02": ("eva02_tiny_patch14_224", "mim_in22k", 28),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", "fb_in1k", 32),
    "beit": ("beit_base_patch16_224", "in22k_ft_in22k_in1k", 32),
}
TINY_KW = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """family -> (reference model with a 5-class head, its state dict as a safetensors file)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for fam, (name, _, size) in FAMILIES.items():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, img_size=size, num_classes=5, **TINY_KW).eval()
        with torch.no_grad():  # non-trivial heads, LayerScale and biases
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        path = root / f"{fam}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out[fam] = (model, path)
    return out


def _x(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _heads_zero(model) -> bool:
    heads = [model.head] + ([model.head_dist] if hasattr(model, "head_dist") else [])
    return all(torch.count_nonzero(h.weight) == 0 and torch.count_nonzero(h.bias) == 0 for h in heads)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_family_weight_file(fam, family_files):
    """Same logits as the model it was saved from; a new zero head (both heads for DeiT-distilled);
    a new resolution resamples position embeddings / BEiT's bias tables / EVA's RoPE."""
    name, _, size = FAMILIES[fam]
    ref, path = family_files[fam]
    bb = load_weights(str(path), backbone=name, timm_kwargs=TINY_KW)
    assert type(bb.model) is type(ref) and bb.head_kept and bb.arch["kwargs"]["img_size"] == size
    with torch.no_grad():
        assert_close_rel(bb.model(_x(size)), ref(_x(size)), rtol=1e-6)
    bb = load_weights(str(path), backbone=name, timm_kwargs=TINY_KW, num_classes=3, img_size=2 * size)
    assert not bb.head_kept and _heads_zero(bb.model) and bb.preprocessing.img_size == 2 * size
    with torch.no_grad():
        feats = bb.model.forward_head(bb.model.forward_features(_x(2 * size)), pre_logits=True)
    assert feats.shape == (2, 32) and torch.isfinite(feats).all()
    assert bb.model(_x(2 * size)).shape == (2, 3)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_family_timm_tag(fam, family_files):
    """``model.weights=<timm tag>`` goes through timm's own pretrained loading (the file stands in for
    the hub download): the same features, and a zero head of the data's classes."""
    name, tag, size = FAMILIES[fam]
    ref, path = family_files[fam]
    tk = {**TINY_KW, "pretrained_cfg_overlay": {"file": str(path), "num_classes": 5}}
    bb = load_weights(f"timm/{name}.{tag}", timm_kwargs=tk, img_size=size, num_classes=3)
    assert type(bb.model) is type(ref) and not bb.head_kept and _heads_zero(bb.model)
    assert bb.arch["name"] == f"{name}.{tag}" and bb.model(_x(size)).shape == (2, 3)
    with torch.no_grad():
        ours = bb.model.forward_head(bb.model.forward_features(_x(size)), pre_logits=True)
        assert_close_rel(ours, ref.forward_head(ref.forward_features(_x(size)), pre_logits=True), rtol=1e-6)


@pytest.mark.parametrize("fam", list(FAMILIES))
def test_family_freeze_and_layer_decay(fam, family_files):
    """freeze_backbone trains only the head(s); layer decay groups every family by block (timm's
    group_matcher), with the new head in the last group."""
    name, _, size = FAMILIES[fam]
    clf = ViTClassifier(
        backbone=name,
        weights=str(family_files[fam][1]),
        img_size=size,
        num_classes=3,
        freeze_backbone=True,
        timm_kwargs=dict(TINY_KW),
    )
    trainable = {n.split(".")[0] for n, p in clf.model.named_parameters() if p.requires_grad}
    assert trainable == ({"head", "head_dist"} if fam == "deit_distilled" else {"head"})
    clf.train()
    assert not clf.model.blocks[0].training and clf.model.head.training
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    assert clf.features(x).shape == (2, 32) and clf(x).shape == (2, 3)
    for p in clf.model.parameters():
        p.requires_grad = True
    opt = build_optimizer(clf.model, name="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) == 2 + 2 and scales[-1] == pytest.approx(1.0)  # stem, 2 blocks, head


def test_beit_wrong_backbone_is_one_line(family_files):
    with pytest.raises(ConfigError, match="does not fit"):
        load_weights(
            str(family_files["beit"][1]), backbone="deit_tiny_distilled_patch16_224", timm_kwargs=TINY_KW
        )
