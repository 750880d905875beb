"""What a checkpoint carries reaches timm and the classifier only through allow-lists."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vit_ft.errors import ConfigError
from vit_ft.weights.allowlist import check_arch, check_checkpoint_hparams
from vit_ft.weights.arch import create_from_arch

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "old_format" / "ema.ckpt"


@pytest.fixture(scope="module")
def hparams():
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)["hyper_parameters"]


def test_what_vit_ft_writes_passes(hparams):
    check_checkpoint_hparams(hparams, "ckpt")
    # model.timm_kwargs as users set them (timm's local-weights overlay) and keys of older versions pass
    hp = {
        **copy.deepcopy(hparams),
        "lr": 0.01,
        "timm_kwargs": {"pretrained_cfg_overlay": {"file": "/w.safetensors", "num_classes": 0}},
    }
    check_checkpoint_hparams(hp, "ckpt")
    create_from_arch(hparams["arch"], "ckpt")


EDITS = {
    "target in arch kwargs": (lambda hp: hp["arch"]["kwargs"].update(_target_="os.system"), "'_target_'"),
    "checkpoint_path in arch kwargs": (
        lambda hp: hp["arch"]["kwargs"].update(checkpoint_path="/etc/passwd"),
        "'checkpoint_path'",
    ),
    "pretrained_cfg_overlay": (
        lambda hp: hp["arch"]["kwargs"].update(pretrained_cfg_overlay={"file": "/x"}),
        "'pretrained_cfg_overlay'",
    ),
    "a callable's dotted path": (lambda hp: hp["arch"]["kwargs"].update(block_fn="os.system"), "'block_fn'"),
    "norm layer as a mapping": (lambda hp: hp["arch"]["kwargs"].update(norm_layer={"a": 1}), "norm_layer"),
    "hub name": (lambda hp: hp["arch"].update(name="hf-hub:evil/model"), "not a registered timm model"),
    "extra arch key": (lambda hp: hp["arch"].update(loader="pickle"), "'loader'"),
    "instantiator": (
        lambda hp: hp.update(_instantiator="lightning.pytorch.cli.instantiate_module"),
        "'_instantiator'",
    ),
    "class path": (lambda hp: hp.update(_class_path="os.system"), "'_class_path'"),
    "timm_kwargs file": (lambda hp: hp.update(timm_kwargs={"checkpoint_path": "/x"}), "'checkpoint_path'"),
    "preprocessing key": (lambda hp: hp["preprocessing"].update(_target_="x"), "'_target_'"),
    "preprocessing type": (lambda hp: hp["preprocessing"].update(mean=["a", "b", "c"]), "preprocessing"),
    "class names": (lambda hp: hp.update(class_names=[1, 2, 3, 4]), "class_names"),
    "overlay field": (
        lambda hp: hp.update(timm_kwargs={"pretrained_cfg_overlay": {"loader": "pickle"}}),
        "pretrained-config field",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_checkpoint_is_refused_naming_the_key(hparams, edit):
    change, expected = EDITS[edit]
    hp = copy.deepcopy(hparams)
    change(hp)
    with pytest.raises(ConfigError, match="^ckpt: .*") as e:
        check_checkpoint_hparams(hp, "ckpt")
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_create_from_arch_refuses_what_timm_would_load():
    arch = {"name": "vit_tiny_patch16_224", "kwargs": {"checkpoint_path": "/x"}, "layer_norm_eps": None}
    with pytest.raises(ConfigError, match="model.timm_kwargs: timm argument 'checkpoint_path'"):
        create_from_arch(arch)
    with pytest.raises(ConfigError, match="is not a vit-ft arch"):
        check_arch({"kwargs": {}}, "x")
