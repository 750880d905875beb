"""Exact resume: a run stopped right after a step checkpoint and resumed from it ends with the very
weights of an uninterrupted run (torch.equal), in-process with a tiny ViT on real image files."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import make_image_folder, quiet_trainer
from vit_ft.data import ImageFolderDataModule
from vit_ft.models.classifier import ViTClassifier
from vit_ft.training.checkpoint_io import AtomicCheckpointIO
from vit_ft.training.checkpointing import StepCheckpoint

SEED = 7


class Killed(Exception):
    pass


class KillAt(Callback):
    """Stop the run before the batch that follows optimizer step ``step`` (as a kill -9 there would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(self.step)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "shapes", n_train=10, n_val=2, size=36)


def build(folder, ckpt_dir, *, workers=0, accumulate=1, every_n_steps=None, callbacks=(), max_epochs=2, **model_kw):
    L.seed_everything(SEED, workers=True, verbose=False)
    dm = ImageFolderDataModule(root=str(folder), batch_size=8, num_workers=workers, seed=SEED, hflip=0.5)
    dm.setup("fit")
    model = ViTClassifier(
        backbone="vit_tiny_patch16_224",
        weights=None,
        img_size=32,
        num_classes=len(dm.class_names),
        class_names=dm.class_names,
        timm_kwargs={"depth": 1, "drop_rate": 0.1},
        drop_path_rate=0.1,
        optimizer={"name": "adamw", "lr": 0.003},
        scheduler={"warmup_steps": 2},
        **model_kw,
    )
    dm.configure_preprocessing(32, "bilinear")
    ckpt = StepCheckpoint(dirpath=str(ckpt_dir), filename="last", monitor=None, every_n_steps=every_n_steps, every_minutes=None)
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        deterministic=True,
        accumulate_grad_batches=accumulate,
        callbacks=[ckpt, *callbacks],
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=1,
    )
    dm.configure_batch(trainer.world_size, accumulate)
    return dm, model, trainer


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(folder, tmp, *, kill=None, **kw):
    ref_dir = tmp / "ckpt"
    dm, model, trainer = build(folder, ref_dir, callbacks=[KillAt(kill)] if kill else [], **kw)
    if kill is None:
        trainer.fit(model, datamodule=dm)
        return weights(model)
    with pytest.raises(Killed):
        trainer.fit(model, datamodule=dm)
    dm, model, trainer = build(folder, ref_dir, **kw)
    trainer.fit(model, datamodule=dm, ckpt_path=str(ref_dir / "last.ckpt"))
    return weights(model)


def assert_equal(a, b):
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}: max {max((a[k]-b[k]).abs().max().item() for k in bad)}"


@pytest.mark.parametrize("kill", [3, 7])
def test_resume_mid_epoch_equals_uninterrupted(folder, tmp_path, kill):
    ref = run(folder, tmp_path / "ref")
    out = run(folder, tmp_path / "cut", kill=kill, every_n_steps=1)
    assert_equal(ref, out)
