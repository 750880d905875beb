"""Every family's model config (conf/model/<family>.yaml, a timm pretrained tag) fine-tunes, validates
and checkpoints through train.py — ONE Hydra multirun over the families, each tag loaded by timm from a
tiny random model of the same class (``pretrained_cfg_overlay.file``: nothing is downloaded) — and
each checkpoint predicts and evaluates in-process."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.helpers import TINY, run_cli

# dinov2_vits14 is dinov2_vits14_reg's class without registers (covered in-process by tests/unit/weights)
FAMILIES = [
    "dinov2_vits14_reg",
    "clip_vitb16",
    "siglip_vitb16",
    "eva02_s14",
    "deit_s16_distilled",
    "beit_b16",
]
TINY_KW = {"depth": 2, "embed_dim": 32, "num_heads": 2}
SIZE = 112  # a multiple of both patch sizes, 14 and 16


@pytest.fixture(scope="module")
def family_weights(tmp_path_factory):
    """A tiny random model of each family's class, saved where its timm tag is told to load from."""
    from omegaconf import OmegaConf

    from tests.helpers import ROOT

    weights = tmp_path_factory.mktemp("family_weights")
    for fam in FAMILIES:
        backbone = OmegaConf.load(ROOT / "conf" / "model" / f"{fam}.yaml").backbone
        torch.manual_seed(0)
        m = timm.create_model(backbone, pretrained=False, img_size=SIZE, num_classes=0, **TINY_KW)
        save_file(
            {k: v.contiguous() for k, v in m.state_dict().items()}, str(weights / f"{backbone}.safetensors")
        )
    return weights


def family_sweep(weights, image_folder, tmp, name, *extra):
    """``train.py -m model=<every family>`` on the tiny models; the sweep folder and the process."""
    tiny = [o for o in TINY if not o.startswith(("model=", "model.img_size", "+model.timm_kwargs"))]
    sweep_dir = tmp / name
    proc = run_cli(
        "train.py",
        "-m",
        *extra,
        f"model={','.join(FAMILIES)}",
        *tiny,
        f"model.img_size={SIZE}",
        *(f"+model.timm_kwargs.{k}={v}" for k, v in TINY_KW.items()),
        f"+model.timm_kwargs.pretrained_cfg_overlay.file={weights}/" + "${model.backbone}.safetensors",
        "+model.timm_kwargs.pretrained_cfg_overlay.num_classes=0",
        f"data.root={image_folder}",
        "logger=csv",
        f"hydra.sweep.dir={sweep_dir}",
        tmp_path=tmp,
        timeout=600,
    )
    return sweep_dir, proc


@pytest.fixture(scope="module")
def sweep(family_weights, image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("families_cli")
    return family_sweep(
        family_weights,
        image_folder,
        tmp,
        "multirun",
        "data=imagefolder",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "~callbacks.run_report",
        "~callbacks.model_checkpoint",
    )


@pytest.fixture(scope="module")
def knn_sweep(family_weights, image_folder, tmp_path_factory):
    """The same families, frozen: k-NN on each model's own pooled features (SigLIP's attention pool,
    DeiT-distilled's two tokens...)."""
    tmp = tmp_path_factory.mktemp("families_knn")
    return family_sweep(
        family_weights, image_folder, tmp, "knn", "experiment=knn", "probe.features=pool", "probe.k=[5]"
    )


def _job(sweep_dir, i):
    return sweep_dir / str(i)


def test_every_family_fine_tunes_and_validates(sweep):
    sweep_dir, _ = sweep
    for i, fam in enumerate(FAMILIES):
        m = json.loads((_job(sweep_dir, i) / "metrics.json").read_text())
        assert m["status"] == "completed", (fam, m.get("error"))
        assert 0.0 <= m["final"]["val/acc1"] <= 1.0 and m["final"]["val/loss"] > 0, fam
        assert (_job(sweep_dir, i) / "val_predictions.csv").is_file(), fam


def test_every_family_is_knn_evaluated_on_its_own_pooling(knn_sweep):
    sweep_dir, _ = knn_sweep
    for i, fam in enumerate(FAMILIES):
        m = json.loads((_job(sweep_dir, i) / "metrics.json").read_text())
        assert m["status"] == "completed", (fam, m.get("error"))
        assert 0.0 <= m["final"]["knn/k5/acc1"] <= 1.0, fam


def test_every_family_checkpoint_predicts_and_keeps_its_architecture(sweep, image_folder):
    from vit_ft.models.predictor import load_predictor, predict_images

    sweep_dir, _ = sweep
    import csv

    expected = {"deit_s16_distilled": "VisionTransformerDistilled", "eva02_s14": "Eva", "beit_b16": "Beit"}
    for i, fam in enumerate(FAMILIES):
        pred = load_predictor(
            str(_job(sweep_dir, i) / "checkpoints" / "last.ckpt"), device="cpu", precision="32"
        )
        assert type(pred.model).__name__ == expected.get(fam, "VisionTransformer"), fam
        assert pred.preprocessing.img_size == SIZE and pred.labels == [
            "circle",
            "cross",
            "square",
            "triangle",
        ]
        with open(_job(sweep_dir, i) / "val_predictions.csv") as f:
            val = list(csv.DictReader(f))[:4]  # what the run's final model predicted on val
        rows = list(predict_images(pred, [r["file"] for r in val], topk=2, num_workers=0))
        for r, v in zip(rows, val):
            assert r["topk"][0]["label"] == v["pred_label"], fam
            assert abs(r["topk"][0]["prob"] - float(v["prob"])) < 1e-4, fam
