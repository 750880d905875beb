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


@pytest.mark.parametrize(
    "entry",
    ["train_weights", "train_resume", "eval", "predict", "export"],
)
def test_each_entry_point_refuses_an_edited_checkpoint(edited, entry, tmp_path):
    tmp, data, files = edited
    if entry == "train_weights":
        proc = run_cli(
            "train.py",
            "model=vit_tiny",
            f"model.weights={files['file']}",
            f"data.root={data}",
            "logger=none",
            "trainer=cpu",
            f"hydra.run.dir={tmp_path / 'r'}",
            tmp_path=tmp_path,
            check=False,
        )
        refused(proc, "'checkpoint_path'")
    elif entry == "train_resume":
        proc = run_cli(
            "train.py",
            "model=vit_tiny",
            f"ckpt_path={files['timm_kwargs']}",
            f"data.root={data}",
            "logger=none",
            "trainer=cpu",
            f"hydra.run.dir={tmp_path / 'r'}",
            tmp_path=tmp_path,
            check=False,
        )
        refused(proc, "'checkpoint_path'")
    elif entry == "eval":
        proc = run_cli(
            "eval.py",
            f"ckpt_path={files['instantiator']}",
            f"data.root={data}",
            f"hydra.run.dir={tmp_path / 'r'}",
            tmp_path=tmp_path,
            check=False,
        )
        refused(proc, "'_instantiator'")
    elif entry == "predict":
        proc = run_cli(
            "predict.py",
            f"weights={files['target']}",
            f"images={data / 'val'}",
            tmp_path=tmp_path,
            check=False,
        )
        refused(proc, "'_target_'")
    else:
        proc = run_cli(
            "export.py",
            f"ckpt_path={files['target']}",
            f"out={tmp_path / 'out'}",
            tmp_path=tmp_path,
            check=False,
        )
        refused(proc, "'_target_'")
        assert not (tmp_path / "out").exists()
