"""Exact resume: a run stopped right after a step checkpoint and resumed from it ends with the very
weights of an uninterrupted run (torch.equal), in-process with a tiny ViT on real image files; the
step checkpoint's settings. (DataLoader workers, a kill mid-save and DDP: tests/cli/test_resume_cli.py.)"""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import make_image_folder, quiet_trainer
from vit_ft.data import ImageFolderDataModule
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier
from vit_ft.preprocessing import Preprocessing
from vit_ft.training.checkpoint_io import AtomicCheckpointIO
from vit_ft.training.checkpointing import StepCheckpoint

SEED = 7


class Killed(Exception):
    pass


class KillAt(Callback):
    """Stop the run after optimizer step ``step`` (as a kill -9 there would), before the next batch or,
    with ``micro=1``, between the micro-batches of the next step."""

    def __init__(self, step: int, micro: int = 0) -> None:
        self.step, self.micro, self.seen = step, micro, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.seen == self.micro:
                raise Killed(self.step)
            self.seen += 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "shapes", n_train=10, n_val=2, size=36)


def build(
    folder, ckpt_dir, *, workers=0, accumulate=1, every_n_steps=None, callbacks=(), max_epochs=2, **model_kw
):
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
    dm.configure_preprocessing(Preprocessing(32))
    ckpt = StepCheckpoint(
        dirpath=str(ckpt_dir), filename="last", monitor=None, every_n_steps=every_n_steps, every_minutes=None
    )
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


def run(folder, tmp, *, kill=None, micro=0, **kw):
    ref_dir = tmp / "ckpt"
    dm, model, trainer = build(folder, ref_dir, callbacks=[KillAt(kill, micro)] if kill else [], **kw)
    if kill is None:
        trainer.fit(model, datamodule=dm)
        return weights(model)
    with pytest.raises(Killed):
        trainer.fit(model, datamodule=dm)
    last = ref_dir / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == kill  # the last checkpoint before the kill
    acc = kw.get("accumulate", 1)  # 40 images, batch 8: 5 optimizer steps per epoch
    assert saved["ImageFolderDataModule"]["train_order"]["batches"] == (kill * acc - 1) % (5 * acc) + 1
    dm, model, trainer = build(folder, ref_dir, **kw)
    trainer.fit(model, datamodule=dm, ckpt_path=str(last))
    return weights(model)


def assert_equal(a, b):
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, (
        f"{len(bad)} tensors differ, e.g. {bad[:3]}: max {max((a[k] - b[k]).abs().max().item() for k in bad)}"
    )


@pytest.mark.parametrize(
    "kill, micro, kw",
    [
        (5, 0, {}),  # the end-of-epoch checkpoint: epoch 1 from its start
        # mid-epoch 1, accumulation 2, mixup (numpy's generator), dropout, drop-path, random crops and
        # flips in the main process: killed between the micro-batches of step 7
        (6, 1, {"accumulate": 2, "mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 0.0}}),
    ],
    ids=["epoch-end", "accumulate-mixup"],
)
def test_resumed_run_equals_uninterrupted(folder, tmp_path, kill, micro, kw):
    ref = run(folder, tmp_path / "ref", **kw)
    out = run(folder, tmp_path / "cut", kill=kill, micro=micro, every_n_steps=1, **kw)
    assert_equal(ref, out)


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"every_n_steps": 0}, "every_n_steps=0"),
        ({"every_minutes": -1}, "every_minutes=-1"),
        ({"every_n_steps": True}, "every_n_steps=True"),
        ({"every_minutes": float("nan")}, "every_minutes=nan"),
    ],
)
def test_bad_intervals_are_one_clear_error(tmp_path, kw, key):
    with pytest.raises(ConfigError, match=f"callbacks.last_checkpoint.{key} must be a positive"):
        StepCheckpoint(dirpath=str(tmp_path), **kw)


def test_time_interval_saves_mid_epoch_only_at_optimizer_step_boundaries(folder, tmp_path):
    """every_minutes with a clock that is always due: a save after every optimizer step (accumulation
    2: every other batch), none on an epoch's last batch (the end-of-epoch save follows)."""
    steps = []

    class Record(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            steps.append((trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.current.processed))

    dm, model, trainer = build(folder, tmp_path, accumulate=2, callbacks=[Record()], max_epochs=1)
    ckpt = trainer.checkpoint_callback
    ticks = itertools.count()
    ckpt.clock = lambda: 60.0 * next(ticks)  # a minute passes between any two readings
    ckpt.every_minutes, ckpt.check_every = 1, 1
    trainer.fit(model, datamodule=dm)
    assert steps == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]  # 4 mid-epoch + the end-of-epoch save
