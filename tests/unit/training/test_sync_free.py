"""The training step is sync-free: between Lightning's logging steps vit-ft's step (a real Trainer fit
of a tiny ViT with the default callbacks: progress bar, step checkpoint, preemption, history, the
non-finite guard, EMA in one variant) reads nothing back from the device, exactly as a bare PyTorch
loop with gradient clipping; and the non-finite guard, which now decides on the device, stays exact.

Device-to-host reads are counted in the main process on CPU: a ``TorchDispatchMode`` sees every
``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``, ``int(t)``) and the ops whose output
size depends on the data (``nonzero``, ``masked_select``, ``unique``, ...), a ``TorchFunctionMode`` sees
``tolist``, ``numpy`` and ``cpu``. Each read is charged to the optimizer step running when it happens.
"""

from __future__ import annotations

import collections
import logging
import warnings

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import quiet_trainer, vector_loader
from tests.unit.training.test_faults import Poisoned as FaultsPoisoned
from vit_ft.errors import RunFault
from vit_ft.models.classifier import ViTClassifier
from vit_ft.models.steps import fused_optimizer
from vit_ft.training.callbacks import MetricsHistory
from vit_ft.training.checkpoint_io import AtomicCheckpointIO
from vit_ft.training.checkpointing import StepCheckpoint
from vit_ft.training.nonfinite import NonFiniteLossGuard
from vit_ft.training.optim import build_scheduler
from vit_ft.training.preemption import Preemption

STEPS = 50
_ops = torch.ops.aten
SYNC_OPS = {_ops._local_scalar_dense, _ops.is_nonzero, _ops.equal, _ops.nonzero, _ops.masked_select}
SYNC_OPS |= {_ops._unique2, _ops.unique_dim, _ops.unique_consecutive, _ops.repeat_interleave}
SYNC_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu}


class SyncCounter(TorchDispatchMode):
    """Counts device-to-host reads per ``self.step`` (set by whoever runs the steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.step: object = "start"
        self.counts: collections.Counter = collections.Counter()
        self.what: dict[object, list[str]] = collections.defaultdict(list)

    def hit(self, name: str) -> None:
        self.counts[self.step] += 1
        self.what[self.step].append(name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS:
            self.hit(func._schema.name)
        return func(*args, **(kwargs or {}))


class MethodCounter(TorchFunctionMode):
    def __init__(self, counter: SyncCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNC_METHODS:
            self.counter.hit(func.__name__)
        return func(*args, **(kwargs or {}))


class StepMark(L.Callback):
    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.counter.step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        self.counter.step = "end"  # the epoch's end (its checkpoint) and the fit's


def tiny_vit(ema: dict | None = None) -> ViTClassifier:
    torch.manual_seed(0)
    return ViTClassifier(
        backbone="vit_tiny_patch16_224",
        img_size=32,
        num_classes=4,
        class_names=list("abcd"),
        timm_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2},
        optimizer={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        scheduler={"warmup_steps": 5},
        ema=ema,
    )


def images(n: int = STEPS * 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 4, (n,), generator=g)), batch_size=4)


def vit_ft_counts(tmp_path, every: int, ema: dict | None) -> SyncCounter:
    """A fit as train.py builds it (the default callbacks, the guard, atomic checkpoint IO)."""
    counter = SyncCounter()
    d = str(tmp_path)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=STEPS,
        logger=False,
        log_every_n_steps=every,
        gradient_clip_val=1.0,
        enable_model_summary=False,
        enable_progress_bar=True,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=d,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            StepMark(counter),
            NonFiniteLossGuard(),
            MetricsHistory(d),
            StepCheckpoint(dirpath=d, filename="last", every_minutes=30),
            Preemption(dirpath=d),
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with counter, MethodCounter(counter):
            trainer.fit(tiny_vit(ema), images())
    return counter


def bare_counts() -> SyncCounter:
    """The same model, data, optimizer, schedule and clipping in a plain loop."""
    counter = SyncCounter()
    module = tiny_vit()
    model = module.model.train()
    opt = fused_optimizer(model, dict(module.optimizer_cfg))
    sched = build_scheduler(opt, total_steps=STEPS, warmup_steps=5)
    with counter, MethodCounter(counter):
        for step, (x, y) in enumerate(images()):
            counter.step = step
            loss = F.cross_entropy(model(module.normalize(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            sched.step()
    return counter


@pytest.fixture(scope="module")
def bare():
    return bare_counts()


def per_step(counter: SyncCounter) -> list[int]:
    return [counter.counts[s] for s in range(STEPS)]


def test_the_step_reads_nothing_back_beyond_a_bare_loop(tmp_path, bare):
    assert per_step(bare) == [0] * STEPS
    ours = vit_ft_counts(tmp_path, every=1000, ema=None)
    # The first step logs (history.csv's first row); every other step reads nothing, as the bare loop.
    assert per_step(ours)[1:] == per_step(bare)[1:], dict(ours.what)
    assert 0 < ours.counts[0] <= 12 and ours.counts["end"] > 0  # the first step's logs; the fit's end


def test_with_ema_reads_only_at_logging_steps(tmp_path, bare):
    ours = vit_ft_counts(tmp_path, every=10, ema={"decay": 0.99})
    logging_steps = {0} | {s for s in range(STEPS) if (s + 1) % 10 == 0}
    extra = {s: n - bare.counts[s] for s, n in enumerate(per_step(ours)) if n != bare.counts[s]}
    assert set(extra) == logging_steps, dict(ours.what)  # reads at each logging step, and only there
    assert max(extra.values()) <= 12


# -- the guard decides on the device, and stays exact ---------------------------------------------------
class Poisoned(FaultsPoisoned):
    """test_faults.py's poisoned linear classifier, with the fused SGD or AdamW vit-ft builds."""

    def configure_optimizers(self):
        cfg = {"name": "sgd", "lr": 0.1, "momentum": 0.9} if self.optimizer == "sgd" else {"name": "adamw"}
        opt = fused_optimizer(self, {"lr": 0.01, **cfg})
        assert all(g["fused"] for g in opt.param_groups)
        return opt


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_skipped_step_leaves_weights_and_optimizer_state_untouched(optimizer, caplog):
    model = Poisoned(optimizer, nan_at={0, 2}, inf_grad_at={4})  # the very first step too
    guard = NonFiniteLossGuard(action="skip", max_skips=3)
    trainer = quiet_trainer(max_steps=7, callbacks=[guard], gradient_clip_val=1.0, log_every_n_steps=1000)
    with caplog.at_level(logging.WARNING, logger="vit_ft"):
        trainer.fit(model, vector_loader(32, batch_size=4))
    assert guard.flags is not None  # decided on the device
    snaps = model.snapshots
    assert guard.skipped == 3 and guard.consecutive == 0  # read at the end of the fit
    for bad in (2, 4):  # the NaN-loss step and the inf-gradient step changed nothing
        assert same(snaps[bad][0], snaps[bad - 1][0]) and same(snaps[bad][1], snaps[bad - 1][1])
    for good in (1, 3, 5, 6):  # the others trained (momentum buffers / moments and steps moved on)
        assert not same(snaps[good][0], snaps[good - 1][0]) and not same(snaps[good][1], snaps[good - 1][1])
    assert all(torch.isfinite(t).all() for t in snaps[-1][0].values())
    for state in snaps[0][1].values():  # the skipped first step left no garbage: zero momentum, step 0
        assert all(torch.equal(t, torch.zeros_like(t)) for t in state.values())
    assert "3 optimizer step(s) skipped since the last check" in caplog.text
    assert "training loss nan at optimizer step 1" in caplog.text


def test_stop_names_the_first_bad_step_and_no_later_step_reaches_the_weights(tmp_path):
    model = Poisoned("sgd", nan_at={3})
    trainer = quiet_trainer(max_steps=8, callbacks=[NonFiniteLossGuard()], log_every_n_steps=6)
    with pytest.raises(RunFault, match=r"non-finite training loss nan at optimizer step 4 \(epoch 0\)") as e:
        trainer.fit(model, vector_loader(32, batch_size=4))
    assert "\n" not in str(e.value)
    snaps = model.snapshots
    assert len(snaps) == 5  # read at the logging step 6 (no read before it), before its snapshot
    assert all(same(s[0], snaps[2][0]) and same(s[1], snaps[2][1]) for s in snaps[3:])  # as after step 3

    model = Poisoned("adamw", inf_grad_at={1})
    guard = NonFiniteLossGuard()
    trainer = quiet_trainer(
        max_steps=8,
        callbacks=[guard, StepCheckpoint(dirpath=str(tmp_path), filename="last", every_n_steps=3)],
        enable_checkpointing=True,
        gradient_clip_val=1.0,
        log_every_n_steps=1000,
    )
    with pytest.raises(RunFault, match="non-finite gradient norm inf at optimizer step 2"):
        trainer.fit(model, vector_loader(32, batch_size=4))
    assert len(model.snapshots) == 2 and not list(tmp_path.iterdir())  # the step-3 checkpoint read it first
    assert all(torch.isfinite(t).all() for t in model.layer.state_dict().values())


def test_consecutive_skips_stop_at_the_read_with_the_weights_of_the_last_good_step():
    model = Poisoned("sgd", nan_at=set(range(1, 8)))
    guard = NonFiniteLossGuard(action="skip", max_skips=3)
    with pytest.raises(
        RunFault, match="non-finite training loss nan at optimizer step 4: 3 optimizer steps in a row"
    ):
        quiet_trainer(max_steps=8, callbacks=[guard], log_every_n_steps=1000).fit(
            model, vector_loader(32, batch_size=4)
        )
    assert guard.skipped == 3 and all(same(s[0], model.snapshots[0][0]) for s in model.snapshots)


# -- preemption: the all-reduce every N steps only ------------------------------------------------------
class FakeStrategy:
    def __init__(self) -> None:
        self.reduces = 0

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.reduces += 1
        return decision


class FakeTrainer:
    world_size = 2
    accumulate_grad_batches = 1

    def __init__(self) -> None:
        self.strategy = FakeStrategy()
        self.global_step = 0


def test_preemption_agrees_over_ranks_only_every_n_steps(tmp_path):
    cb = Preemption(dirpath=str(tmp_path))
    trainer = FakeTrainer()
    for step in range(1, 31):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, step - 1)
    assert trainer.strategy.reduces == 30 // cb.check_every
