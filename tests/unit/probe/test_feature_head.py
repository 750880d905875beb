"""A linear probe on ``probe.features=last4`` / ``cls+mean`` (DINOv2's linear evaluation): its checkpoint
is the network with a head on those features, which eval.py (``load_classifier``) and predict.py
(``load_predictor``) load and which predicts exactly what the probe computed on the cached features
(BatchNorm folded); export.py refuses it in one line."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from tests.helpers import ROOT, SHAPE_CLASSES, make_image_folder, probe_datamodule, quiet_trainer
from vit_ft.models.classifier import ViTClassifier
from vit_ft.models.features import network_logits
from vit_ft.models.load_checkpoint import load_classifier
from vit_ft.models.predictor import load_predictor
from vit_ft.preprocessing import Normalize
from vit_ft.probe.extract import feature_dim, token_features, use_feature_type
from vit_ft.probe.linear import LinearProbe, prepare_linear_probe
from vit_ft.probe.settings import LinearProbeSettings
from vit_ft.weights import load_weights

D = 32


def _dinov2_reg(seed: int = 0) -> ViTClassifier:
    """A tiny random DINOv2 with registers (4 blocks: last4 takes them all)."""
    torch.manual_seed(seed)
    return ViTClassifier(
        backbone="vit_small_patch14_reg4_dinov2",
        weights=None,
        img_size=32,
        class_names=list(SHAPE_CLASSES),
        freeze_backbone=True,
        timm_kwargs={"patch_size": 8, "embed_dim": D, "depth": 4, "num_heads": 2},
        optimizer={"name": "adamw", "lr": 0.05, "weight_decay": 0.0},
        scheduler={"warmup_steps": 0, "decay": "cosine"},
    )


def _images(dm) -> torch.Tensor:
    """The first 8 val images (eval transform, uint8), in record order as the cached features."""
    idx, x, _ = next(iter(dm.indexed_loader("val", batch_size=8)))
    assert idx.tolist() == list(range(8))
    return x


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes", n_train=4, n_val=2)  # 16 + 8 images


@pytest.fixture(scope="module")
def probes(small_folder, tmp_path_factory):
    """Per feature: (checkpoint, the probe's val features and its logits on them, the 8 val images)."""
    out = {}
    for features in ("last4", "cls+mean"):
        tmp = tmp_path_factory.mktemp(features.replace("+", "_"))
        clf = _dinov2_reg()
        dm = probe_datamodule(small_folder, clf=clf)
        settings = LinearProbeSettings.from_dict(
            {"features": features, "batchnorm": True, "cache_dir": str(tmp / "cache")}
        )
        probe, feature_dm = prepare_linear_probe(settings, clf, dm, None)
        assert probe.head.in_features == feature_dim(clf.model, features)
        trainer = quiet_trainer(devices=1, max_steps=4, limit_val_batches=0)
        trainer.fit(probe, datamodule=feature_dm)
        path = tmp / "probe.ckpt"
        trainer.save_checkpoint(path)
        probe.eval()
        f = feature_dm.features["val"].features[:8]
        with torch.no_grad():
            logits = probe(f)  # BatchNorm (running stats) then the head: not folded
        out[features] = (str(path), f, logits, _images(dm))
    return out


@pytest.mark.parametrize("features", ["last4", "cls+mean"])
@torch.no_grad()
def test_probe_checkpoint_predicts_what_the_probe_computed_on_its_features(probes, features):
    path, cached, probe_logits, images = probes[features]
    assert probe_logits.abs().max() > 0.1  # a trained head (the zero head would make this vacuous)
    clf = load_classifier(path).eval()
    assert clf.head_features == features and clf.hparams["arch"]["features"] == features
    assert clf.model.head.weight.shape == (4, feature_dim(clf.model, features))
    # the loaded network recomputes the cached features from the images (probe/extract's function) ...
    torch.testing.assert_close(token_features(clf.model, clf.normalize(images), features), cached)
    # ... and its logits are the probe's, BatchNorm folded into the head
    torch.testing.assert_close(clf(images), probe_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(clf.features(images), cached)
    # predict.py: the same probabilities through load_weights
    predictor = load_predictor(path, device="cpu", precision="32")
    torch.testing.assert_close(predictor(images), probe_logits.softmax(-1), rtol=1e-4, atol=1e-4)
    # an in-loop probe (probe.cache=false) on the loaded network computes the same logits from images
    in_loop = LinearProbe(clf, in_loop=True, features=features).eval()
    torch.testing.assert_close(in_loop(images), probe_logits, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_weights_of_a_last4_probe_keep_their_head_or_get_a_new_one_of_the_same_width(probes):
    path, _, probe_logits, images = probes["last4"]
    bb = load_weights(path)  # what predict.py and model.weights=<ckpt> read
    assert bb.arch["features"] == "last4" and bb.head_kept
    x = Normalize(bb.preprocessing)(images)
    torch.testing.assert_close(network_logits(bb.model, x, "last4"), probe_logits, rtol=1e-4, atol=1e-4)
    fresh = load_weights(path, num_classes=2)  # a new zero head on the same features
    assert fresh.model.head.weight.shape == (2, 5 * D) and not fresh.model.head.weight.any()


def test_a_probe_on_pool_from_last4_probe_weights_gets_timms_own_head_back(probes):
    clf = ViTClassifier(weights=probes["last4"][0], img_size=32, freeze_backbone=True)
    assert clf.head_features == "last4"
    use_feature_type(clf, "pool")  # what prepare_linear_probe does first
    probe = LinearProbe(clf, features="pool")
    assert clf.head_features is None and "features" not in clf.hparams["arch"]
    assert probe.head.in_features == D and not probe.head.weight.any()


def test_export_refuses_a_probe_on_token_features_in_one_line(probes, tmp_path, capsys):
    from omegaconf import OmegaConf

    from vit_ft.tasks.cli import run_cli

    spec = importlib.util.spec_from_file_location("export_cli_entry", ROOT / "export.py")
    entry = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = entry  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(entry)
    path = probes["last4"][0]
    for fmt in ("both", "timm"):
        out = tmp_path / f"out_{fmt}"
        cfg = OmegaConf.merge(OmegaConf.structured(entry.ExportConfig), {"ckpt_path": path, "out": str(out)})
        cfg.format = fmt
        with pytest.raises(SystemExit) as e:
            run_cli(entry.export, cfg)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(
            f"error: ckpt_path={path!r} is a linear probe whose head sits on probe.features=last4"
        )
        assert "probe.features=pool" in err[0]
        assert not out.exists()  # nothing half-written
