"""The linear probe on cached features of multi-label data: BCE on multi-hot targets read from the records."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers import ML_CLASSES, make_multilabel_manifest, quiet_trainer


def test_cached_linear_probe_trains_with_bce_and_predicts_every_label(tmp_path):
    from vit_ft.data import ManifestDataModule
    from vit_ft.models.classifier import ViTClassifier
    from vit_ft.models.predictions import MultiLabelPredictions, predict_split
    from vit_ft.probe.linear import prepare_linear_probe
    from vit_ft.probe.settings import LinearProbeSettings

    root = make_multilabel_manifest(tmp_path / "d", n_train=16, n_val=8)
    torch.manual_seed(0)
    clf = ViTClassifier(
        backbone="vit_tiny_patch16_224",
        weights=None,
        img_size=32,
        class_names=list(ML_CLASSES),
        freeze_backbone=True,
        timm_kwargs={"patch_size": 8, "depth": 1},
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        scheduler={"warmup_steps": 0},
        task="multilabel",
    )
    dm = ManifestDataModule(
        train=str(root / "train.csv"),
        val=str(root / "val.csv"),
        batch_size=8,
        num_workers=0,
        persistent_workers=False,
    )
    assert dm.configure_task("auto") == "multilabel"
    dm.configure_preprocessing(clf.preprocessing)
    probe, fdm = prepare_linear_probe(LinearProbeSettings.from_dict({"cache_dir": None}), clf, dm, None)
    assert torch.equal(fdm.labels("val"), torch.from_numpy(dm.splits["val"].multi_hot_all()).float())
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(probe, datamodule=fdm)
    m = trainer.callback_metrics
    assert "val/mAP" in m and "train/acc1" not in m and np.isfinite(float(m["train/loss"]))
    preds = predict_split(trainer, probe, fdm.indexed_loader("val"))
    assert isinstance(preds, MultiLabelPredictions) and preds.probs.shape == (8, 3)
    assert (preds.targets == dm.splits["val"].multi_hot_all()).all()
