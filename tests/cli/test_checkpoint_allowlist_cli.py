"""Edited checkpoints through all five entry points: each stops with one line naming the key, before any
of it reaches timm, Lightning's instantiator or a file open (tests/fixtures/old_format/ema.ckpt, edited)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.helpers import make_image_folder, run_cli

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "old_format" / "ema.ckpt"


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edited")
    data = make_image_folder(tmp / "data", n_train=8, n_val=4, size=24)
    bait = tmp / "bait.pth"
    bait.write_bytes(b"never opened")
    original = torch.load(FIXTURE, map_location="cpu", weights_only=True)

    def write(name, change):
        ckpt = copy.deepcopy(original)
        change(ckpt["hyper_parameters"])
        torch.save(ckpt, tmp / name)
        return tmp / name

    files = {
        "target": write("target.ckpt", lambda hp: hp["arch"]["kwargs"].update(_target_="os.system")),
        "file": write("file.ckpt", lambda hp: hp["arch"]["kwargs"].update(checkpoint_path=str(bait))),
        "instantiator": write(
            "inst.ckpt", lambda hp: hp.update(_instantiator="lightning.pytorch.cli.instantiate_module")
        ),
        "timm_kwargs": write("kw.ckpt", lambda hp: hp.update(timm_kwargs={"checkpoint_path": str(bait)})),
    }
    return tmp, data, files


def refused(proc, key):
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and key in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


# entry point -> (script, its arguments given the edited file and the data, the edit, the key the line names)
ENTRIES = {
    "train_weights": (
        "train.py",
        lambda f, d: ["model=vit_tiny", f"model.weights={f}", f"data.root={d}"],
        "file",
        "'checkpoint_path'",
    ),
    "train_resume": (
        "train.py",
        lambda f, d: ["model=vit_tiny", f"ckpt_path={f}", f"data.root={d}"],
        "timm_kwargs",
        "'checkpoint_path'",
    ),
    "eval": ("eval.py", lambda f, d: [f"ckpt_path={f}", f"data.root={d}"], "instantiator", "'_instantiator'"),
    "predict": ("predict.py", lambda f, d: [f"weights={f}", f"images={d / 'val'}"], "target", "'_target_'"),
    "export": ("export.py", lambda f, d: [f"ckpt_path={f}"], "target", "'_target_'"),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_each_entry_point_refuses_an_edited_checkpoint(edited, entry, tmp_path):
    tmp, data, files = edited
    script, args, edit, key = ENTRIES[entry]
    extra = {"train.py": ["logger=none", "trainer=cpu"], "eval.py": [], "predict.py": [], "export.py": []}[
        script
    ]
    if script in ("train.py", "eval.py"):
        extra.append(f"hydra.run.dir={tmp_path / 'r'}")
    if script == "export.py":
        extra.append(f"out={tmp_path / 'out'}")
    proc = run_cli(script, *args(files[edit], data), *extra, tmp_path=tmp_path, check=False)
    refused(proc, key)
    assert not (tmp_path / "out").exists() and not (tmp_path / "r" / "checkpoints").exists()
