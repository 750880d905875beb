"""A disk that fills up during a checkpoint save, through the real ``train.py`` (one run): one error
line, exit status 1, the previous last.ckpt intact, no partial ``.tmp`` beside it and no orphan in
``$TMPDIR``, ``status: failed`` in metrics.json (the other faults: tests/unit/*/test_faults.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT, TINY, clean_env, read_metrics

# train.py with torch.save failing half-way through the second checkpoint it writes (ENOSPC)
FULL_DISK = """
import errno, runpy, sys, torch
real, saves = torch.save, []
def save(obj, f, *args, **kwargs):
    if str(getattr(f, "name", "")).endswith(".ckpt.tmp"):
        saves.append(f.name)
        if len(saves) == 2:
            f.write(b"x" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
    return real(obj, f, *args, **kwargs)
torch.save = save
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.fixture(scope="module")
def full_disk(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full_disk")
    (tmp / "tmpdir").mkdir()
    wrapper = tmp / "train_full_disk.py"
    wrapper.write_text(FULL_DISK.format(script=str(ROOT / "train.py")))
    run_dir = tmp / "run"
    env = {**clean_env(tmp), "TMPDIR": str(tmp / "tmpdir")}
    args = [*TINY, "logger=none", f"data.root={image_folder}", "trainer.max_epochs=2", "test=false"]
    args += ["~callbacks.model_checkpoint", "~callbacks.run_report", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        [sys.executable, str(wrapper), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=300
    )
    return tmp, run_dir, proc


def test_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint(full_disk):
    tmp, run_dir, proc = full_disk
    last = run_dir / "checkpoints" / "last.ckpt"
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot write checkpoint {last}: the disk is full (No space left on device")
    assert err.endswith("the previous checkpoint is kept")
    assert torch.load(last, weights_only=True, mmap=True)["epoch"] == 0  # epoch 0's, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    assert list((tmp / "tmpdir").iterdir()) == []
    m = read_metrics(run_dir)
    assert m["status"] == "failed" and m["error"] == err[len("error: ") :] and m["global_step"] > 0
