"""trainer=fsdp: composes, builds Lightning's FSDP strategy around the ViT blocks, and refuses CPU in one line
(torch's FSDP needs CUDA devices, so sharded training itself cannot run in these CPU tests)."""

from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf

from tests.helpers import ROOT
from vit_ft.errors import user_message
from vit_ft.report.markdown import strategy_name
from vit_ft.training.sharding import vit_block_classes, vit_fsdp_strategy


def _trainer_cfg(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["trainer=fsdp", "data.root=/x", *overrides])
    t = OmegaConf.to_container(cfg.trainer, resolve=False)
    t["strategy"]["accelerator"] = t["accelerator"]  # ${trainer.accelerator}, without Hydra's run dir
    return t


def test_fsdp_wraps_and_checkpoints_every_block(monkeypatch):
    t = _trainer_cfg()
    assert t["accelerator"] == "gpu" and t["strategy"]["state_dict_type"] == "full"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # building the strategy touches no GPU
    strategy = instantiate(t["strategy"])
    assert isinstance(strategy, FSDPStrategy)
    from timm.models.vision_transformer import Block

    assert Block in vit_block_classes()
    policy = strategy.kwargs["auto_wrap_policy"]
    assert Block in policy._module_classes
    assert strategy._activation_checkpointing_kwargs  # blocks are checkpointed
    assert strategy.kwargs["use_orig_params"] is True and strategy._state_dict_type == "full"
    assert strategy_name(t["strategy"]) == "vit_fsdp_strategy"  # the run report's "strategy"
    no_ckpt = vit_fsdp_strategy(activation_checkpointing=False)
    assert not no_ckpt._activation_checkpointing_kwargs


def test_fsdp_on_cpu_is_one_line():
    t = _trainer_cfg("trainer.accelerator=cpu")
    with pytest.raises(Exception) as e:  # noqa: PT011 - Hydra wraps it; the CLI prints the ConfigError's line
        instantiate(t["strategy"])
    assert re.match(r"^trainer=fsdp needs CUDA GPUs .* on CPU use trainer=ddp$", user_message(e.value))
