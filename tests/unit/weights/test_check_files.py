"""Checkpoint and weight files the user names are checked before anything else runs: one line naming
the file and what is wrong (empty, truncated, foreign, code-running, weights-only for a resume)."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from vit_ft.errors import ConfigError
from vit_ft.labels import class_change
from vit_ft.weights.io import check_checkpoint_file, check_weights_source


class RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    sd = {"model.w": torch.ones(64, 64)}
    full = {
        "state_dict": sd,
        "optimizer_states": [{}],
        "loops": {},
        "hyper_parameters": {"class_names": ["a", "b"]},
        "pytorch-lightning_version": "2.6.0",
    }
    torch.save(full, d / "good.ckpt")
    data = (d / "good.ckpt").read_bytes()
    (d / "half.ckpt").write_bytes(data[: len(data) // 2])  # a save cut short
    (d / "empty.ckpt").write_bytes(b"")
    (d / "notes.ckpt").write_text("these are not weights\n")
    torch.save({k: v for k, v in full.items() if k != "optimizer_states"}, d / "weights_only.ckpt")
    torch.save(sd, d / "state_dict.pth")
    save_file({"w": torch.ones(2)}, str(d / "w.safetensors"))
    (d / "half.safetensors").write_bytes((d / "w.safetensors").read_bytes()[:-4])
    (d / "evil.pth").write_bytes(pickle.dumps({"x": RunsCode()}, protocol=2))
    (d / "folder").mkdir()
    return d


@pytest.mark.parametrize(
    "name, needle",
    [
        ("missing.ckpt", "does not exist"),
        ("folder", "is a folder; pass a .ckpt file"),
        ("empty.ckpt", "is empty (0 bytes)"),
        ("half.ckpt", "is truncated or corrupt"),
        ("notes.ckpt", "is not a Lightning checkpoint (.ckpt): it starts with b'these ar'"),
        ("w.safetensors", "is a safetensors weights file, not a Lightning checkpoint"),
        ("state_dict.pth", "is not a Lightning checkpoint (it holds ['model.w'], no 'state_dict')"),
        ("evil.pth", "it is a pickle that needs posix.system, which could run code"),
        ("weights_only.ckpt", "holds weights only (no optimizer or loop state"),
    ],
)
def test_bad_checkpoints_give_one_line_naming_the_file(files, name, needle):
    with pytest.raises(ConfigError) as e:
        check_checkpoint_file(str(files / name), "ckpt_path", lightning=True, resume=True)
    msg = str(e.value)
    assert needle in msg and msg.startswith(f"ckpt_path='{files / name}'") and "\n" not in msg


def test_good_files_pass(files):
    hp = check_checkpoint_file(files / "good.ckpt", "ckpt_path", lightning=True, resume=True)
    assert hp == {"class_names": ["a", "b"]}
    assert check_checkpoint_file(files / "weights_only.ckpt", "ckpt_path", lightning=True) is not None
    for name in ("good.ckpt", "state_dict.pth", "w.safetensors", "folder"):  # weights: any readable format
        check_weights_source(str(files / name), "weights")
    check_weights_source("google/vit-base-patch32-384", "weights")  # not a local file: left to the loader


@pytest.mark.parametrize(
    "name, needle",
    [
        ("half.safetensors", "is truncated or corrupt"),
        ("half.ckpt", "is truncated or corrupt"),
        ("notes.ckpt", "is not a weights file"),
        ("evil.pth", "which could run code"),
    ],
)
def test_bad_weight_files(files, name, needle):
    with pytest.raises(ConfigError, match="^weights=") as e:
        check_weights_source(str(files / name), "weights")
    assert needle in str(e.value)


def test_class_change_lists_the_difference():
    assert class_change(["a", "b"], ["a", "b"]) is None
    assert class_change(["a", "b", "c"], ["b", "a", "c"]) == (
        "the same 3 names in another order: 0: 'a' -> 'b', 1: 'b' -> 'a'"
    )
    assert class_change(["a", "b"], ["a", "x"]) == "2 classes then, 2 now; only then: ['b'], only now: ['x']"
