"""The run plan: config checks, the resume decision and the checkpoint's metadata, each done once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from tests.helpers import ROOT
from vit_ft.errors import ConfigError
from vit_ft.tasks.common import build_callbacks
from vit_ft.tasks.plan import check_config, make_plan, nonfinite_guard
from vit_ft.training.nonfinite import NonFiniteLossGuard
from vit_ft.weights import io as weights_io


def compose_cfg(overrides: list[str], out: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


BASE = ["data.root=/x", "logger=none", "trainer.accelerator=cpu"]


def test_freeze_backbone_is_asked_for_by_the_linear_probe_only(tmp_path):
    with pytest.raises(ConfigError) as e:
        check_config(compose_cfg([*BASE, "model.freeze_backbone=true"], tmp_path))
    assert str(e.value) == (
        "model.freeze_backbone=true is replaced by the linear probe: use experiment=linear_probe "
        "(probe.mode=linear; probe.cache=false trains in the loop)"
    )
    probe = compose_cfg([*BASE, "experiment=linear_probe"], tmp_path)
    assert probe.model.freeze_backbone and probe.probe.mode == "linear"
    check_config(probe)  # the probe's own setting


def test_the_guard_is_built_once_from_the_trainer_keys(tmp_path):
    cfg = compose_cfg(
        [
            *BASE,
            "trainer.on_nonfinite=skip",
            "trainer.max_nonfinite_skips=3",
            "+callbacks.nonfinite_loss._target_=vit_ft.training.nonfinite.NonFiniteLossGuard",
            "+callbacks.nonfinite_loss.every_n_steps=10",  # an older sweep config's entry: how often only
        ],
        tmp_path,
    )
    plan = make_plan(cfg, resume=True)
    g = plan.guard
    assert (g.action, g.max_skips, g.every_n_steps) == ("skip", 3, 10)
    assert not any(isinstance(c, NonFiniteLossGuard) for c in build_callbacks(cfg))  # the plan's stands
    cfg.callbacks.nonfinite_loss._target_ = "vit_ft.training.callbacks.NonFiniteLossGuard"  # before the move
    assert nonfinite_guard(cfg).every_n_steps == 10
    assert not any(isinstance(c, NonFiniteLossGuard) for c in build_callbacks(cfg))
    with pytest.raises(ConfigError, match="trainer.on_nonfinite='never' must be one of"):
        check_config(compose_cfg([*BASE, "trainer.on_nonfinite=never"], tmp_path))


def fake_checkpoint(path: Path, class_names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": {}, "optimizer_states": [], "hyper_parameters": {"class_names": class_names}}, path
    )


def test_auto_resume_reads_the_checkpoint_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = make_plan(compose_cfg([*BASE, "ckpt_path=null"], run), resume=True)
    assert first.ckpt_path is None and first.last_checkpoint == str(run / "checkpoints" / "last.ckpt")
    saved = OmegaConf.to_container(first.cfg, resolve=True)
    run.mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(OmegaConf.to_yaml(saved))
    fake_checkpoint(run / "checkpoints" / "last.ckpt", ["a", "b"])

    loads, checks = [], []
    real_load, real_check = torch.load, weights_io.check_checkpoint_file
    monkeypatch.setattr(weights_io.torch, "load", lambda *a, **k: loads.append(k) or real_load(*a, **k))
    monkeypatch.setattr(
        "vit_ft.tasks.plan.check_checkpoint_file", lambda *a, **k: checks.append(a) or real_check(*a, **k)
    )
    plan = make_plan(compose_cfg(BASE, run), resume=True)  # ckpt_path=auto
    assert plan.ckpt_path == plan.cfg.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    assert plan.resuming_own_run and plan.finished is None
    assert plan.checkpoint_hparams == {"class_names": ["a", "b"]}
    assert len(checks) == 1 and len(loads) == 1 and loads[0]["weights_only"] is True

    (run / "metrics.json").write_text(json.dumps({"status": "completed", "global_step": 4, "value": 0.5}))
    assert make_plan(compose_cfg(BASE, run), resume=True).finished["global_step"] == 4  # nothing to do


def test_an_explicit_checkpoint_is_checked_before_the_resume_decision(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_plan(compose_cfg([*BASE, f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path / "run"), resume=True)
    weights_only = tmp_path / "w.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, weights_only)
    with pytest.raises(ConfigError, match="holds weights only"):
        make_plan(compose_cfg([*BASE, f"ckpt_path={weights_only}"], tmp_path / "run"), resume=True)
    plan = make_plan(compose_cfg([*BASE, f"ckpt_path={weights_only}"], tmp_path / "run"), resume=False)
    assert plan.ckpt_path == str(weights_only) and plan.checkpoint_hparams == {}  # eval.py: weights suffice
