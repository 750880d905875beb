"""Checkpoint writes that fail behind a wrapper: ``torch.save`` reports a full disk as a ``RuntimeError``
raised while handling the ``OSError``; a value pickle refuses; a storage error. Each is one line naming
the file, with the previous checkpoint as it was (the other write faults: test_faults.py)."""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch

from tests.unit.training.test_faults import saved  # noqa: F401 - the fixture: a trainer and one last.ckpt
from vit_ft.errors import RunFault, run_fault
from vit_ft.training import checkpoint_io
from vit_ft.training.checkpoint_io import AtomicCheckpointIO, write_fault


class FillingFile(io.FileIO):
    """A real file on a disk that fills up after ``room`` bytes (the error as the kernel gives it)."""

    def __init__(self, path, room: int = 2000, code: int = errno.ENOSPC) -> None:
        super().__init__(path, "wb")
        self.room, self.code = room, code

    def write(self, b) -> int:
        if self.tell() + len(b) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        return super().write(b)


@pytest.mark.parametrize(("code", "what"), [(errno.ENOSPC, "the disk is full (No space left on device, "),
                                            (errno.EDQUOT, "the disk quota is used up (Disk quota exceeded, ")])  # fmt: skip
def test_a_disk_that_fills_under_torch_save_is_one_line_naming_the_file(saved, monkeypatch, code, what):  # noqa: F811
    trainer, folder, tmpdir = saved
    last = folder / "last.ckpt"
    before = last.read_bytes()
    monkeypatch.setattr(checkpoint_io, "open_checkpoint_file", lambda p: FillingFile(p, code=code))
    with pytest.raises(RunFault) as e:
        trainer.save_checkpoint(last)
    context = e.value.__cause__
    assert isinstance(context, RuntimeError) and isinstance(context.__context__, OSError)  # torch's wrapping
    msg = str(e.value)
    assert msg.startswith(f"cannot write checkpoint {last}: {what}") and "\n" not in msg
    assert msg.endswith("; the previous checkpoint is kept")
    assert last.read_bytes() == before and sorted(os.listdir(folder)) == ["last.ckpt"]
    assert os.listdir(tmpdir) == []
    assert run_fault(RuntimeError("Lightning's wrapper")) is None  # not a fault by itself
    wrapped = RuntimeError("re-raised by a loop")
    wrapped.__cause__ = e.value
    assert run_fault(wrapped) is e.value  # the entry point finds this line, not a bare "cannot write:"


def test_the_first_checkpoint_says_there_was_none_to_keep(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_io, "open_checkpoint_file", lambda p: FillingFile(p, room=10))
    target = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(RunFault, match=r"the disk is full .*; there was no earlier checkpoint to keep$"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, target)
    assert os.listdir(target.parent) == []


def test_a_value_pickle_refuses_and_a_storage_error(tmp_path, monkeypatch):
    io_ = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io_.save_checkpoint({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    def local():
        return 1

    with pytest.raises(RunFault) as e:
        io_.save_checkpoint({"w": torch.ones(3), "callback": local}, target)
    assert str(e.value) == (
        f"cannot write checkpoint {target}: a value in it cannot be pickled (Can't pickle local object "
        f"'{local.__qualname__}') - keep only plain data in the checkpoint; the previous checkpoint is kept"
    )

    def refused(obj, f, *a, **k):
        f.write(b"x" * 100)
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file"
        )

    monkeypatch.setattr(checkpoint_io.torch, "save", refused)
    with pytest.raises(RunFault, match=r"the storage refused the write \(RuntimeError: \[enforce fail"):
        io_.save_checkpoint({"w": torch.ones(3)}, target)
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def bug(obj, f, *a, **k):
        raise ValueError("a bug in the writer")

    monkeypatch.setattr(checkpoint_io.torch, "save", bug)
    with pytest.raises(ValueError, match="a bug in the writer"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")
    assert write_fault(tmp_path / "x.ckpt", KeyError("k")) is None
    assert os.listdir(tmp_path) == []


class TwoRanks:
    """What share_save_faults sees of a 2-rank DDP strategy: this rank's save, and the other rank's
    answer to the boolean all-reduce."""

    world_size = 2

    def __init__(self, fails: bool, peer_fails: bool) -> None:
        self.fails, self.peer_fails, self.reduced = fails, peer_fails, []

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        if self.fails:
            raise RunFault(f"cannot write checkpoint {filepath}: the disk is full")

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.reduced.append((decision, all))
        return (decision or self.peer_fails) if not all else (decision and not self.peer_fails)


@pytest.mark.parametrize(
    ("fails", "peer_fails", "raised"),
    [
        (False, False, None),
        (True, False, "the disk is full"),  # the writer: its own line
        (
            False,
            True,
            "another rank's write failed",
        ),  # the rank that would have waited at the next collective
    ],
)
def test_a_failed_save_on_one_rank_stops_every_rank(fails, peer_fails, raised):
    from vit_ft.training.checkpoint_io import share_save_faults

    strategy = TwoRanks(fails, peer_fails)
    share_save_faults(strategy)
    share_save_faults(strategy)  # once only
    if raised is None:
        strategy.save_checkpoint({}, "run/checkpoints/last.ckpt")
    else:
        with pytest.raises(RunFault, match=raised) as e:
            strategy.save_checkpoint({}, "run/checkpoints/last.ckpt")
        assert "\n" not in str(e.value) and "last.ckpt" in str(e.value)
    assert strategy.reduced == [(fails, False)]  # one all-reduce per save, on every rank
