"""``probe.features=cls|mean|cls+mean|pool|last4`` on the token layouts of today's ViTs (issue 13):
register tokens (DINOv2-reg), no class token + attention pool (SigLIP), two tokens (distilled DeiT).
Every feature is checked against a hand computation from timm's ``forward_features`` / block outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch

from tests.helpers import probe_datamodule, tiny_probe_classifier
from vit_ft.errors import ConfigError
from vit_ft.models.features import network_logits
from vit_ft.probe.extract import (
    feature_dim,
    frozen_features,
    split_features,
    token_features,
    use_feature_type,
)
from vit_ft.probe.features import feature_key, preprocessing_fingerprint
from vit_ft.probe.settings import FewshotSettings

D = 32
KW = dict(img_size=32, patch_size=8, embed_dim=D, depth=4, num_heads=2, num_classes=3)


def _net(kind: str):
    torch.manual_seed(0)
    if kind == "registers":
        return timm.create_model("vit_small_patch14_reg4_dinov2", **KW).eval()  # reg_tokens=4, class token
    if kind == "siglip":
        return timm.create_model(
            "vit_base_patch16_siglip_224", **KW
        ).eval()  # no class token, global_pool=map
    return timm.create_model("deit_tiny_distilled_patch16_224", **KW).eval()  # VisionTransformerDistilled


def _normed_blocks(net, x) -> list[torch.Tensor]:
    """The final norm applied to each block's output (DINOv2's get_intermediate_layers(norm=True))."""
    outs = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: outs.append(o)) for b in net.blocks]
    try:
        net.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return [net.norm(o) for o in outs]


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_registers_prefix_tokens_are_left_out_of_the_mean_and_last4_is_dinov2s(x):
    net = _net("registers")
    assert net.num_prefix_tokens == 5  # CLS + 4 registers
    ff = net.forward_features(x)
    cls, mean = ff[:, 0], ff[:, 5:].mean(1)
    want = {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], -1), "pool": cls}
    blocks = _normed_blocks(net, x)
    want["last4"] = torch.cat([b[:, 0] for b in blocks[-4:]] + [blocks[-1][:, 5:].mean(1)], -1)
    for kind, ref in want.items():
        got = token_features(net, x, kind)
        assert got.shape == (3, feature_dim(net, kind)), kind
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=kind)
    assert feature_dim(net, "last4") == 5 * D and feature_dim(net, "cls+mean") == 2 * D


@torch.no_grad()
def test_siglip_pools_by_attention_and_has_no_cls(x):
    net = _net("siglip")
    assert net.num_prefix_tokens == 0 and net.attn_pool is not None
    ff = net.forward_features(x)
    torch.testing.assert_close(token_features(net, x, "pool"), net.attn_pool(ff))
    torch.testing.assert_close(token_features(net, x, "mean"), ff.mean(1))
    for kind in ("cls", "cls+mean", "last4"):
        clf = SimpleNamespace(model=net, hparams={})
        with pytest.raises(ConfigError) as e:
            use_feature_type(clf, kind)
        assert str(e.value).startswith(f"probe.features={kind} needs a CLS token but this VisionTransformer")
        assert "\n" not in str(e.value)
    # a linear probe on the mean: the head's own input becomes that mean (attention pool dropped, as timm
    # builds global_pool=avg), and the stored architecture says so
    clf = SimpleNamespace(model=net, hparams={"arch": {"kwargs": {"global_pool": "map"}}})
    use_feature_type(clf, "mean")
    assert net.attn_pool is None and clf.hparams["arch"]["kwargs"]["global_pool"] == "avg"
    torch.testing.assert_close(frozen_features(net, x), ff.mean(1))


@torch.no_grad()
def test_distilled_deit_pool_is_the_mean_of_its_two_tokens(x):
    net = _net("distilled")
    assert net.num_prefix_tokens == 2
    ff = net.forward_features(x)
    torch.testing.assert_close(token_features(net, x, "pool"), (ff[:, 0] + ff[:, 1]) / 2)
    torch.testing.assert_close(token_features(net, x, "cls"), ff[:, 0])
    torch.testing.assert_close(
        token_features(net, x, "cls+mean"), torch.cat([ff[:, 0], ff[:, 2:].mean(1)], -1)
    )
    blocks = _normed_blocks(net, x)
    torch.testing.assert_close(
        token_features(net, x, "last4"),
        torch.cat([b[:, 0] for b in blocks[-4:]] + [blocks[-1][:, 2:].mean(1)], -1),
    )
    # timm's head input cannot be the CLS token alone: a linear probe's head sits on the token itself
    use_feature_type(SimpleNamespace(model=net, hparams={}), "cls", head=False)  # k-NN / few-shot: untouched
    clf = SimpleNamespace(model=net, hparams={"arch": {"kwargs": {}}})
    use_feature_type(clf, "cls")
    assert clf.head_features == "cls" and clf.hparams["arch"]["features"] == "cls"
    torch.testing.assert_close(network_logits(net, x, "cls"), net.head(ff[:, 0]))
    with pytest.raises(ConfigError, match="^probe.features=pool: this distilled DeiT has two heads"):
        use_feature_type(SimpleNamespace(model=net, hparams={}), "pool")
    shallow = timm.create_model("vit_tiny_patch16_224", **{**KW, "depth": 2})
    with pytest.raises(
        ConfigError, match="^probe.features=last4 concatenates the last 4 blocks but this model has 2"
    ):
        use_feature_type(SimpleNamespace(model=shallow, hparams={}), "last4")


def test_feature_choice_is_in_the_cache_key(image_folder, tmp_path):
    clf = tiny_probe_classifier()
    keys = {
        f: feature_key("w", "d", preprocessing_fingerprint(clf, "T", f, "32-true"))
        for f in ("cls", "mean", "cls+mean", "pool", "last4")
    }
    assert len(set(keys.values())) == 5
    settings = FewshotSettings(cache_dir=str(tmp_path / "f"), features="cls+mean")
    feats, rep = split_features(clf, probe_datamodule(image_folder, clf=clf), ["val"], settings)
    assert feats["val"].features.shape == (24, 2 * 192) and rep["val"]["source"] == "extracted"
    plain, _ = split_features(clf, probe_datamodule(image_folder, clf=clf), ["val"], FewshotSettings())
    torch.testing.assert_close(feats["val"].features[:, :192], plain["val"].features)


@torch.no_grad()
def test_a_head_behind_fc_norm_is_probed_on_the_patch_mean_itself(x):
    net = timm.create_model("vit_tiny_patch16_224", global_pool="avg", **KW).eval()  # BEiT-style fc_norm
    ff = net.forward_features(x)
    torch.testing.assert_close(token_features(net, x, "pool"), net.fc_norm(ff[:, 1:].mean(1)))
    use_feature_type(SimpleNamespace(model=net, hparams={}), "mean", head=False)  # k-NN / few-shot: fine
    assert net.global_pool == "avg" and net.head.in_features == D
    # a linear probe: timm's head would see fc_norm(mean), so the head sits on the mean itself
    clf = SimpleNamespace(model=net, hparams={"arch": {"kwargs": {}}})
    use_feature_type(clf, "mean")
    assert clf.head_features == "mean" and net.head.in_features == D
    torch.testing.assert_close(network_logits(net, x, "mean"), net.head(ff[:, 1:].mean(1)))
