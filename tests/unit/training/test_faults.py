"""Faults in a real fit, in process: a NaN/inf loss or gradient stops the run (or skips the step
without touching weights or optimizer state), non-finite weights are never checkpointed, and a
checkpoint that cannot be written stops with one line and leaves the previous one as it was."""

from __future__ import annotations

import copy
import errno
import os

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import SingleDeviceStrategy

from tests.helpers import ROOT, quiet_trainer, vector_loader
from vit_ft.errors import RunFault
from vit_ft.training import checkpoint_io
from vit_ft.training.checkpoint_io import AtomicCheckpointIO
from vit_ft.training.nonfinite import NonFiniteLossGuard


class Poisoned(L.LightningModule):
    """A linear classifier whose loss is NaN at the given batches (or whose gradient is inf);
    records its weights and optimizer state after every batch."""

    def __init__(self, optimizer: str, nan_at=(), inf_grad_at=()) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.optimizer, self.nan_at, self.inf_grad_at = optimizer, set(nan_at), set(inf_grad_at)
        self.snapshots: list[tuple[dict, dict]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.layer(x), y)
        return loss * float("nan") if batch_idx in self.nan_at else loss

    def on_after_backward(self):
        if self.trainer.fit_loop.epoch_loop.batch_idx in self.inf_grad_at:
            self.layer.weight.grad[0, 0] = float("inf")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        opt = self.trainer.optimizers[0]
        self.snapshots.append((copy.deepcopy(self.state_dict()), copy.deepcopy(opt.state_dict()["state"])))

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        return torch.optim.AdamW(self.parameters(), lr=0.01)


def loader(n: int = 32):
    return vector_loader(n, batch_size=4)


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_skip_leaves_weights_and_optimizer_state_untouched(optimizer):
    model = Poisoned(optimizer, nan_at={2}, inf_grad_at={4})
    guard = NonFiniteLossGuard(action="skip", max_skips=3)
    quiet_trainer(max_steps=6, callbacks=[guard], gradient_clip_val=1.0).fit(model, loader())
    snaps = model.snapshots
    assert guard.skipped == 2 and guard.consecutive == 0
    for bad in (2, 4):  # the NaN-loss step and the inf-gradient step changed nothing
        assert same(snaps[bad][0], snaps[bad - 1][0]) and same(snaps[bad][1], snaps[bad - 1][1])
    for good in (1, 3, 5):  # the others trained (momentum buffers / moments and steps moved on)
        assert not same(snaps[good][0], snaps[good - 1][0]) and not same(snaps[good][1], snaps[good - 1][1])
    assert all(torch.isfinite(t).all() for t in snaps[-1][0].values())
    assert guard.state_dict() == {"skipped": 2, "consecutive": 0}  # travels in checkpoints


def test_stop_raises_one_line_before_the_step_and_consecutive_skips_stop():
    model = Poisoned("sgd", nan_at={3})
    with pytest.raises(RunFault, match=r"non-finite training loss nan at optimizer step 4 \(epoch 0\)") as e:
        quiet_trainer(max_steps=6, callbacks=[NonFiniteLossGuard()]).fit(model, loader())
    assert "\n" not in str(e.value) and len(model.snapshots) == 3
    model = Poisoned("sgd", inf_grad_at={1})
    with pytest.raises(RunFault, match="non-finite gradient norm inf at optimizer step 2"):
        quiet_trainer(max_steps=6, callbacks=[NonFiniteLossGuard()], gradient_clip_val=1.0).fit(
            model, loader()
        )
    assert all(torch.isfinite(t).all() for t in model.layer.state_dict().values())  # clipping never ran

    model = Poisoned("sgd", nan_at=set(range(1, 8)))
    guard = NonFiniteLossGuard(action="skip", max_skips=3)
    with pytest.raises(RunFault, match="3 optimizer steps in a row skipped"):
        quiet_trainer(max_steps=8, callbacks=[guard]).fit(model, loader())
    assert guard.skipped == 3 and same(model.snapshots[-1][0], model.snapshots[0][0])


def test_bad_settings_are_config_errors():
    from vit_ft.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.on_nonfinite='ignore' must be one of"):
        NonFiniteLossGuard(action="ignore")
    with pytest.raises(ConfigError, match="trainer.max_nonfinite_skips=0"):
        NonFiniteLossGuard(action="skip", max_skips=0)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    model = Poisoned("sgd")
    trainer = quiet_trainer(max_steps=1, callbacks=[NonFiniteLossGuard()], plugins=[AtomicCheckpointIO()])
    trainer.fit(model, loader())
    good = tmp_path / "last.ckpt"
    trainer.save_checkpoint(good)
    before = good.read_bytes()
    with torch.no_grad():
        model.layer.bias[1] = float("nan")
    with pytest.raises(RunFault, match=r"weights are not finite \(layer.bias holds NaN/inf\)"):
        trainer.save_checkpoint(good)
    assert good.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_checkpoints_written_before_the_guard_moved_restore_its_counts():
    """Lightning keys a callback's state by its class name, not its module: an older run's checkpoint
    (when the guard lived in training/callbacks.py) resumes with its skipped-step counts."""
    ckpt = torch.load(ROOT / "tests/fixtures/old_format/probe.ckpt", map_location="cpu", weights_only=True)
    guard = NonFiniteLossGuard(action="skip")
    guard.skipped = -1
    guard.load_state_dict(ckpt["callbacks"][guard.state_key])
    assert guard.skipped == 0 and guard.consecutive == 0


# -- checkpoint writes that fail -------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A fitted trainer, its checkpoint folder with one good last.ckpt, and an empty $TMPDIR."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr("tempfile.tempdir", None)
    model = Poisoned("sgd")
    trainer = quiet_trainer(max_steps=1, plugins=[AtomicCheckpointIO()])
    trainer.fit(model, loader())
    folder = tmp_path / "checkpoints"
    (folder).mkdir()
    (folder / "best.ckpt.tmp").write_bytes(b"left by a kill -9")
    trainer.save_checkpoint(folder / "last.ckpt")
    assert sorted(os.listdir(folder)) == ["last.ckpt"]  # the stale .tmp removed at the first save
    return trainer, folder, tmpdir


def test_disk_full_mid_write_keeps_the_previous_checkpoint(saved, monkeypatch):
    trainer, folder, tmpdir = saved
    before = (folder / "last.ckpt").read_bytes()

    def half_then_full(obj, f, *a, **k):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_full)
    with pytest.raises(RunFault) as e:
        trainer.save_checkpoint(folder / "last.ckpt")
    msg = str(e.value)
    assert msg.startswith(f"cannot write checkpoint {folder / 'last.ckpt'}: the disk is full (No space left")
    assert msg.endswith("the previous checkpoint is kept") and "\n" not in msg
    assert (folder / "last.ckpt").read_bytes() == before
    assert sorted(os.listdir(folder)) == ["last.ckpt"] and os.listdir(tmpdir) == []


def test_read_only_or_vanished_folder(saved, monkeypatch):
    trainer, folder, tmpdir = saved

    def read_only(path):  # as root, chmod does not stop a write: the opener fails as on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    with monkeypatch.context() as m:
        m.setattr(checkpoint_io, "open_checkpoint_file", read_only)
        with pytest.raises(RunFault, match=rf"the folder {folder} is not writable \(Read-only file system\)"):
            trainer.save_checkpoint(folder / "last.ckpt")
    assert sorted(os.listdir(folder)) == ["last.ckpt"]
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(RunFault, match=rf"the folder {folder} no longer exists"):
        trainer.save_checkpoint(folder / "last.ckpt")
    assert os.listdir(tmpdir) == []


def test_a_full_disk_anywhere_is_a_run_fault():
    from vit_ft.errors import run_fault

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/run/metrics.json")
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        fault = run_fault(wrapped)
    assert (
        str(fault)
        == "cannot write /run/metrics.json: No space left on device; free space or set paths.output_dir"
    )
    assert run_fault(OSError(errno.ENOENT, "No such file")) is None and run_fault(ValueError("x")) is None


class FakeFSDPStrategy(SingleDeviceStrategy):
    """On CPU, what the guard sees of Lightning's FSDP: a strategy named so, whose precision plugin refuses
    clipping by norm, and whose root module offers ``clip_grad_norm_`` (FSDP's: the norm over all shards)."""


class Sharded(Poisoned):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root_calls: list[float] = []
        self.clipped_norms: list[float] = []

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        self.root_calls.append(max_norm)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        self.clipped_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return norm


def test_under_fsdp_the_root_module_gives_the_norm_and_clips():
    from lightning.pytorch.plugins.precision import FSDPPrecision

    model = Sharded("sgd", inf_grad_at={3})
    guard = NonFiniteLossGuard(action="skip", max_skips=3)
    strategy = FakeFSDPStrategy(device=torch.device("cpu"), precision_plugin=FSDPPrecision("32-true"))
    quiet_trainer(max_steps=6, callbacks=[guard], gradient_clip_val=0.05, strategy=strategy).fit(
        model, loader()
    )
    # every step asked the root (a collective on every rank), with the clip value; Lightning's FSDP
    # precision, which refuses clipping by norm, was never asked
    assert model.root_calls == [0.05] * 6 and guard.skipped == 1
    assert all(n <= 0.05 + 1e-6 for i, n in enumerate(model.clipped_norms) if i != 3)
    assert same(model.snapshots[3][0], model.snapshots[2][0])  # the inf-gradient step changed nothing
