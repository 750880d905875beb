"""Linear probes on cached features: the cache, its keys, the probe module, the CLI (issue 5)."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from tests.conftest import TINY, make_image_folder, quiet_trainer, read_metrics, run_cli
from vit_ft.data import ImageFolderDataModule
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier, load_classifier
from vit_ft.probe.extract import FeatureExtractor, split_features
from vit_ft.probe.features import clear_memory_cache
from vit_ft.probe.linear import FeatureDataModule, LinearProbe, fold_batchnorm, prepare_linear_probe
from vit_ft.probe.settings import FewshotSettings, LinearProbeSettings

SPLITS = ["train", "val"]


def tiny_classifier(seed: int = 0) -> ViTClassifier:
    torch.manual_seed(seed)
    return ViTClassifier(
        backbone="vit_tiny_patch16_224",
        weights=None,
        img_size=32,
        class_names=["circle", "cross", "square", "triangle"],
        freeze_backbone=True,
        timm_kwargs={"patch_size": 8, "depth": 1},
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        scheduler={"warmup_steps": 0, "decay": "cosine"},
    )


def datamodule(root, interpolation: str | None = None, clf: ViTClassifier | None = None):
    dm = ImageFolderDataModule(root=str(root), batch_size=8, num_workers=0, persistent_workers=False)
    dm.setup()
    pre = (clf or tiny_classifier()).preprocessing
    dm.configure_preprocessing(pre.img_size, interpolation or pre.interpolation)
    return dm


def count_forwards(clf: ViTClassifier) -> list[int]:
    calls = [0]
    clf.model.patch_embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture
def settings(tmp_path) -> LinearProbeSettings:
    clear_memory_cache()
    return LinearProbeSettings(cache_dir=str(tmp_path / "features"))


def test_second_run_reuses_the_cache_without_backbone_passes(image_folder, settings):
    clf = tiny_classifier()
    calls = count_forwards(clf)
    first, rep = split_features(clf, datamodule(image_folder), SPLITS, settings)
    assert calls[0] > 0 and {r["source"] for r in rep.values()} == {"extracted"}
    assert len(first["train"]) == 64 and first["train"].features.shape == (64, 192)
    assert torch.equal(first["train"].indices, torch.arange(64))
    calls[0] = 0
    again, rep = split_features(clf, datamodule(image_folder), SPLITS, settings)  # in memory
    assert calls[0] == 0 and {r["source"] for r in rep.values()} == {"memory"}
    clear_memory_cache()  # as a new process would be
    fresh = tiny_classifier()
    calls = count_forwards(fresh)
    disk, rep = split_features(fresh, datamodule(image_folder), SPLITS, settings)
    assert calls[0] == 0 and {r["source"] for r in rep.values()} == {"disk"}
    for s in SPLITS:
        assert torch.equal(disk[s].features, first[s].features)
        assert torch.equal(disk[s].labels, first[s].labels)


def test_weights_preprocessing_or_data_changes_invalidate_the_cache(image_folder, settings, tmp_path):
    clf = tiny_classifier()
    _, base = split_features(clf, datamodule(image_folder), SPLITS, settings)
    keys = {s: r["key"] for s, r in base.items()}

    changed = tiny_classifier()
    with torch.no_grad():
        changed.model.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    _, rep = split_features(changed, datamodule(image_folder), SPLITS, settings)
    assert all(r["source"] == "extracted" and r["key"] != keys[s] for s, r in rep.items())

    _, rep = split_features(clf, datamodule(image_folder, interpolation="bilinear"), SPLITS, settings)
    assert all(r["source"] == "extracted" and r["key"] != keys[s] for s, r in rep.items())

    with torch.no_grad():  # the head is not part of the features: same key
        clf.model.head.weight.add_(1.0)
    _, rep = split_features(clf, datamodule(image_folder), SPLITS, settings)
    assert all(r["source"] == "memory" and r["key"] == keys[s] for s, r in rep.items())

    other = make_image_folder(tmp_path / "other", n_train=16, n_val=6)
    (other / "val" / "circle" / "circle_0000.jpg").unlink()
    _, rep = split_features(clf, datamodule(other), SPLITS, settings)
    assert rep["val"]["source"] == "extracted" and rep["val"]["key"] != keys["val"]


def test_corrupt_or_stale_cache_file_is_one_clear_error_or_rebuilt(image_folder, settings):
    clf = tiny_classifier()
    _, rep = split_features(clf, datamodule(image_folder), ["val"], settings)
    path = rep["val"]["path"]
    with open(path, "wb") as f:
        f.write(b"not a cache")
    clear_memory_cache()
    with pytest.raises(ConfigError) as e:
        split_features(clf, datamodule(image_folder), ["val"], settings)
    msg = str(e.value)
    assert "\n" not in msg and "is corrupt" in msg and path in msg and "probe.on_bad_cache=rebuild" in msg

    rebuild = LinearProbeSettings(cache_dir=settings.cache_dir, on_bad_cache="rebuild")
    feats, rep = split_features(clf, datamodule(image_folder), ["val"], rebuild)
    assert rep["val"]["source"] == "extracted" and len(feats["val"]) == 24

    obj = torch.load(path, weights_only=True)  # same key, contents that disagree with the data
    obj["labels"] = (obj["labels"] + 1) % 4
    torch.save(obj, path)
    clear_memory_cache()
    with pytest.raises(ConfigError, match=r"is stale \(its contents do not match the data\)"):
        split_features(clf, datamodule(image_folder), ["val"], settings)


def test_gather_drops_padded_duplicates_and_sorts_by_index():
    ex = FeatureExtractor(tiny_classifier())
    f = torch.arange(10.0)[:, None].repeat(1, 192)
    # What a padding sampler delivers: index 0 twice, out of order.
    ex.parts = {
        0: [(torch.tensor([3, 1, 0]), f[[3, 1, 0]], torch.tensor([1, 0, 0]))],
    }
    ex.parts[0].append((torch.tensor([2, 0]), f[[2, 0]], torch.tensor([1, 0])))
    ex.merge(world=1)
    assert ex.parts == {}
    feats, labels, idx = ex.result[0]
    assert idx.tolist() == [0, 1, 2, 3] and labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(feats[:, 0], torch.tensor([0.0, 1.0, 2.0, 3.0]))


def test_batchnorm_folds_into_the_head_exactly():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(16, affine=False, eps=1e-6)
    bn.train()
    bn(torch.randn(64, 16) * 3 + 1)
    bn.eval()
    head = torch.nn.Linear(16, 5)
    x = torch.randn(8, 16)
    w, b = fold_batchnorm(head.weight, head.bias, bn.running_mean, bn.running_var, bn.eps)
    torch.testing.assert_close(x @ w.T + b, head(bn(x)), rtol=1e-5, atol=1e-5)


def _fit(module, dm, epochs: int = 3) -> float:
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(devices=1, max_epochs=epochs)
    trainer.fit(module, datamodule=dm)
    return float(trainer.callback_metrics["val/acc1"])


def test_cached_and_in_loop_probes_agree_and_leave_the_backbone_untouched(image_folder, settings):
    clf = tiny_classifier()
    before = {k: v.clone() for k, v in clf.model.state_dict().items() if not k.startswith("head.")}
    base = datamodule(image_folder)
    feats, _ = split_features(clf, base, SPLITS, settings)
    cached = LinearProbe(clf, batchnorm=True)
    acc_cached = _fit(cached, FeatureDataModule(base, feats))
    head_cached = clf.model.head.weight.detach().clone()
    after = clf.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical backbone

    clf2 = tiny_classifier()  # same init
    dm = datamodule(image_folder)
    settings_loop = LinearProbeSettings.from_dict({"cache": False, "augment": False, "batchnorm": True})
    in_loop, loop_dm = prepare_linear_probe(settings_loop, clf2, dm, None)
    assert in_loop.in_loop and loop_dm is dm and not dm.augment_train
    assert repr(dm.transform(True)) == repr(dm.transform(False))  # trains on the eval transform
    acc_loop = _fit(in_loop, dm)
    # Random-init features: the point is agreement (0.33 both here; chance is 0.25 on 24 val images).
    assert acc_cached >= 0.25 and abs(acc_cached - acc_loop) <= 0.1
    # Same features, same seed and batches: the heads themselves are close.
    torch.testing.assert_close(clf2.model.head.weight, head_cached, rtol=0.05, atol=0.05)


def test_nothing_to_train_is_one_clear_error(tmp_path):
    root = make_image_folder(tmp_path / "bad", n_train=2, n_val=2)
    for p in (root / "train").rglob("*.*"):
        p.write_bytes(b"broken")
    dm = ImageFolderDataModule(root=str(root), batch_size=8, num_workers=0, on_bad_image="skip")
    dm.setup()
    dm.configure_preprocessing(32, "bicubic")
    settings = LinearProbeSettings.from_dict({"cache_dir": None})
    with pytest.raises(
        ConfigError, match="the probe has nothing to train: the train split has no usable image"
    ):
        prepare_linear_probe(settings, tiny_classifier(), dm, None, with_test=False)


@pytest.mark.parametrize(
    "cls,probe,message",
    [
        (
            LinearProbeSettings,
            {"shot": 5},
            "probe.shot is not a setting of probe.mode=linear (known: ['augment', 'batchnorm', 'cache', "
            "'cache_dir', 'extract_batch_size', 'features', 'mode', 'on_bad_cache'])",
        ),
        (
            FewshotSettings,
            {"mode": "fewshot", "shot": 5},
            "probe.shot is not a setting of probe.mode=fewshot (known: ['cache', 'cache_dir', 'eval_split', "
            "'extract_batch_size', 'features', 'l2_reg', 'mode', 'on_bad_cache', 'seeds', 'shots'])",
        ),
        (FewshotSettings, {"batchnorm": True}, "probe.batchnorm is not a setting of probe.mode=fewshot"),
        (LinearProbeSettings, {"seeds": 3}, "probe.seeds is not a setting of probe.mode=linear"),
        (LinearProbeSettings, {"features": "avg"}, "probe.features='avg' must be cls (final-norm CLS token)"),
        (FewshotSettings, {"on_bad_cache": "skip"}, "probe.on_bad_cache='skip' must be error or rebuild"),
        (
            LinearProbeSettings,
            {"extract_batch_size": 0},
            "probe.extract_batch_size=0 must be a positive integer",
        ),
        (LinearProbeSettings, {"mode": "ridge"}, "probe.mode='ridge' must be linear or fewshot"),
        (
            LinearProbeSettings,
            {"mode": "fewshot"},
            "probe.mode=fewshot is run by its own job, not as a linear probe",
        ),
        (FewshotSettings, {"mode": "linear"}, "probe.mode=linear is trained by train.py"),
        (FewshotSettings, {"shots": [0, 5]}, "probe.shots=[0, 5] must be a list of positive integers"),
        (FewshotSettings, {"seeds": True}, "probe.seeds=True must be a positive integer"),
        (
            FewshotSettings,
            {"l2_reg": "best"},
            "probe.l2_reg='best' must be a positive number (default 1024) or auto",
        ),
    ],
)
def test_settings_are_validated_per_mode_with_one_line_errors(cls, probe, message):
    with pytest.raises(ConfigError) as e:
        cls.from_dict(probe)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_settings_from_a_config_node():
    s = LinearProbeSettings.from_dict({"mode": "linear", "cache_dir": "~/features", "batchnorm": True})
    assert s.batchnorm and s.cache and not s.cache_dir.startswith("~")
    f = FewshotSettings.from_dict({"mode": "fewshot", "shots": 5, "l2_reg": "auto", "cache": True})
    assert f.shots == [5] and f.seeds == 5 and f.l2_reg == "auto" and f.eval_split is None
    assert FewshotSettings.from_dict({"shots": [10, 1, 10]}).shots == [1, 10]


def test_cli_linear_probe_sweep_reuses_the_cache_and_writes_loadable_checkpoints(image_folder, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train.py",
        "-m",
        "experiment=linear_probe",
        "data=imagefolder",
        f"data.root={image_folder}",
        *[o for o in TINY if not o.startswith(("optimizer", "scheduler"))],
        "trainer.max_epochs=4",
        "probe.batchnorm=true",
        "probe.features=mean",
        "logger=none",
        "optimizer.lr=0.03,0.3",
        f"hydra.sweep.dir={sweep}",
        tmp_path=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert out.count("features: extracted train (64 images), val (24 images)") == 1
    assert "features: train (64 images) from the memory cache" in out
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 2
    for job in ("0", "1"):
        m = read_metrics(sweep / job)
        assert m["status"] == "completed" and m["global_step"] == 4 * 8
        assert {"val/acc1", "val/loss", "train/loss", "train/lr"} <= set(m["final"])
        clf = load_classifier(m["checkpoints"]["best"])  # a ViTClassifier with the folded head
        assert clf.hparams["arch"]["kwargs"]["global_pool"] == "avg"
        acc = m["best"]["score"]
        ev = (
            run_cli(
                "eval.py",
                f"data.root={image_folder}",
                "model=vit_tiny",
                "trainer=cpu",
                "trainer.precision=32",
                "data.num_workers=0",
                "data.batch_size=8",
                f"ckpt_path={m['checkpoints']['best']}",
                f"hydra.run.dir={tmp_path / ('eval' + job)}",
                tmp_path=tmp_path,
            )
            if job == "1"
            else None
        )
        if ev is not None:
            got = json.loads((tmp_path / "eval1" / "metrics.json").read_text())["metrics"]["val/acc1"]
            assert got == pytest.approx(acc, abs=1e-6)
