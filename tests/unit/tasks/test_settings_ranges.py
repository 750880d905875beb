"""The range table (vit_ft/settings_ranges.py), driven by itself: for every ranged key, values just
inside and just outside each bound go through the checker on a real composed config; every key of
conf/*.yaml and of predict.py / export.py is ranged or listed as not ranged; the enums agree with the
code that consumes them; a value out of range ends train/eval with one line before any data is read."""

from __future__ import annotations

import copy
import dataclasses
import math
from functools import cache
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import ValidationError

from tests.helpers import ROOT, TINY
from tests.unit.tasks.test_config_and_errors import bad_input
from vit_ft.errors import ConfigError
from vit_ft.settings_ranges import _ABSENT, NOT_RANGED, RANGES, check_ranges, lookup
from vit_ft.tasks.export import ExportConfig
from vit_ft.tasks.predict import PredictConfig

CONF = ROOT / "conf"
ConfigStore.instance().store(name="predict_cli", node=PredictConfig)
ConfigStore.instance().store(name="export_cli", node=ExportConfig)

# Compositions that between them hold every ranged key: (config name, overrides, with the hydra node).
COMPOSITIONS = {
    "train": ("config", ["data.root=/x"], False),
    "adamw": ("config", ["optimizer=adamw", "data.root=/x"], False),
    "hf": ("config", ["data=hf", "data.name=x"], False),
    "imagenet": ("config", ["data=imagenet", "data.root=/x"], False),
    "fsdp": ("config", ["trainer=fsdp", "data.root=/x"], False),
    "linear_probe": ("config", ["experiment=linear_probe", "data.root=/x"], False),
    "fewshot": ("config", ["experiment=fewshot", "data.root=/x"], False),
    "knn": ("config", ["experiment=knn", "data.root=/x"], False),
    "sweep": (
        "config",
        ["hparams_search=optuna", "hydra/launcher=slurm", "trainer.devices=1", "data.root=/x"],
        True,
    ),
    "eval": ("eval", ["data.root=/x"], False),
    "predict": ("predict_cli", [], False),
    "export": ("export_cli", [], False),
}


def composed(name: str):
    """A fresh copy of composition ``name`` (composed once per session)."""
    return copy.deepcopy(_composed(name))


@cache
def _composed(name: str):
    config_name, overrides, with_hydra = COMPOSITIONS[name]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)


@cache
def home_of(key: str) -> str:
    """The first composition that holds ``key``."""
    for name in COMPOSITIONS:
        if lookup(_composed(name), key) is not _ABSENT:
            return name
    raise AssertionError(f"{key} is in RANGES but in no composed config: a stale entry, or add a composition")


def range_cases():
    for key, rng in RANGES.items():
        for i, (value, ok) in enumerate(rng.samples()):
            yield pytest.param(key, value, ok, id=f"{key}-{i}-{'in' if ok else 'out'}")


@pytest.mark.parametrize("key, value, ok", list(range_cases()))
def test_each_bound_of_each_ranged_key(key, value, ok):
    cfg = composed(home_of(key))
    try:
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    except ValidationError:  # a typed node (predict/export, Hydra's plugins) refuses it itself
        assert not ok, f"{key}={value!r} is in range but its typed node refuses it"
        return
    stored = lookup(cfg, key)
    if type(stored) is not type(value) and not (value is None or stored is None):
        return  # a typed node converted it (e.g. 1.5 -> "1.5" for a str option): nothing to probe
    if ok:
        check_ranges(cfg)
        return
    with pytest.raises(ConfigError) as e:
        check_ranges(cfg)
    line = str(e.value)
    assert line == f"{key}={stored!r} is out of range: must be {RANGES[key].describe()}"
    assert "\n" not in line


def yaml_keys() -> set[str]:
    """Every leaf key of every YAML under conf/, with its package (``# @package _global_``, or the
    group's folder), and every option of predict.py / export.py."""
    keys: set[str] = set()

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            if k in ("defaults", "_target_", "_partial_"):
                continue
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v and key not in NOT_RANGED:
                walk(v, key)
            else:
                keys.add(key)

    for path in sorted(CONF.rglob("*.yaml")):
        text = path.read_text()
        parts = path.relative_to(CONF).parts[:-1]
        # A sub-group merged into its parent (``- loader@_here_: default``) lands in the parent's package.
        if len(parts) > 1 and any(
            f"- {parts[-1]}@_here_:" in p.read_text() for p in CONF.joinpath(*parts[:-1]).glob("*.yaml")
        ):
            parts = parts[:-1]
        package = "" if "# @package _global_" in text else ".".join(parts)
        walk(yaml.safe_load(text) or {}, package)
    for cls in (PredictConfig, ExportConfig):
        keys |= {f.name for f in dataclasses.fields(cls) if f.name not in ("defaults", "hydra")}
    return keys


def test_every_key_is_ranged_or_listed_as_not_ranged():
    keys = yaml_keys()
    assert len(keys) > 150  # the walk found the config tree
    unaudited = sorted(k for k in keys if k not in RANGES and k not in NOT_RANGED)
    assert not unaudited, f"give these keys a range in RANGES or a reason in NOT_RANGED: {unaudited}"
    assert not set(RANGES) & set(NOT_RANGED)
    stale = sorted(k for k in [*RANGES, *NOT_RANGED] if k not in keys)
    assert not stale, f"no config has these keys any more: {stale}"
    assert all(reason.strip() for reason in NOT_RANGED.values())


def test_the_enums_are_the_code_s():
    from vit_ft.checkpoint_format import EMA_USES
    from vit_ft.data.resumable import SAMPLERS
    from vit_ft.probe.settings import FEATURE_TYPES, MODES
    from vit_ft.training.nonfinite import NONFINITE_ACTIONS
    from vit_ft.training.precision import PRECISIONS
    from vit_ft.training.sharding import SHARDING
    from vit_ft.weights.lora import TARGETS

    assert set(RANGES["probe.features"].values) == set(FEATURE_TYPES)
    assert set(RANGES["probe.mode"].values) == set(MODES)
    assert set(RANGES["data.sampler"].values) == set(SAMPLERS)
    assert set(RANGES["model.ema.use_for"].values) == set(EMA_USES)
    assert set(RANGES["trainer.on_nonfinite"].values) == set(NONFINITE_ACTIONS)
    assert set(PRECISIONS) <= set(RANGES["trainer.precision"].values)
    assert set(RANGES["trainer.strategy.sharding_strategy"].values) == set(SHARDING)
    assert set(RANGES["model.lora.targets"].each.values) == set(TARGETS) | set(TARGETS.values())
    assert RANGES["optimizer.name"].accepts("adamw") and RANGES["optimizer.name"].accepts("lamb")
    assert RANGES["trainer.strategy"].accepts("ddp") and RANGES["trainer.accelerator"].accepts("cuda")


def test_the_line_names_the_key_the_value_and_the_range():
    cfg = composed("train")
    cfg.optimizer.layer_decay = 2.0
    with pytest.raises(ConfigError) as e:
        check_ranges(cfg)
    assert str(e.value) == "optimizer.layer_decay=2.0 is out of range: must be a number in (0, 1] or null"
    cfg.optimizer.layer_decay = 0.75
    cfg.optimizer.lr = math.inf
    with pytest.raises(
        ConfigError, match=r"^optimizer.lr=inf is out of range: must be a number in \(0, 10\] or null$"
    ):
        check_ranges(cfg)


def test_a_sweep_leaves_its_swept_keys_to_each_job():
    cfg = composed("train")
    cfg.optimizer.lr, cfg.optimizer.momentum = -1, 7
    check_ranges(cfg, skip=["optimizer.lr", "+optimizer.momentum"])
    check_ranges(cfg, skip=["optimizer"])  # a swept group: every key of it
    with pytest.raises(ConfigError, match="optimizer.momentum=7"):
        check_ranges(cfg, skip=["optimizer.lr"])


def test_a_plain_dict_and_absent_keys():
    check_ranges({"data": {"hflip": 0.5}})  # keys this entry point lacks are not checked
    with pytest.raises(ConfigError, match=r"^data.hflip=2 is out of range: must be a number in \[0, 1\]$"):
        check_ranges({"data": {"hflip": 2}})


@pytest.mark.parametrize(
    "override, line",
    [
        ("optimizer.lr=1e300", "optimizer.lr=1e+300 is out of range: must be a number in (0, 10] or null"),
        ("data.hflip=2", "data.hflip=2 is out of range: must be a number in [0, 1]"),
        (
            "optimizer.layer_decay=0",
            "optimizer.layer_decay=0 is out of range: must be a number in (0, 1] or null",
        ),
        ("model.mixup.prob=1.5", "model.mixup.prob=1.5 is out of range: must be a number in [0, 1]"),
    ],
)
def test_train_stops_before_reading_any_data(override, line, tmp_path, capsys):
    got = bad_input([f"data.root={tmp_path / 'no_such_folder'}", override], tmp_path, capsys)
    assert got == f"error: {line}"


def test_eval_stops_before_reading_any_data(tmp_path, capsys):
    from tests.unit.tasks.test_config_and_errors import compose_cfg
    from vit_ft.tasks.cli import run_cli as run_in_process
    from vit_ft.tasks.evaluate import evaluate

    cfg = compose_cfg([*TINY, f"data.root={tmp_path / 'nope'}", "data.eval_crop=1.5"], tmp_path, "eval")
    with pytest.raises(SystemExit) as e:
        run_in_process(evaluate, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: data.eval_crop=1.5 is out of range: must be one of auto, none, or a number")


def test_lora_rank_above_the_layer_width(tmp_path):
    import timm

    from vit_ft.weights.lora import LoraSpec, inject_lora

    def net():
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1)

    for targets, width, layer in ((["qkv"], 192, "attn.qkv"), (["fc1", "fc2"], 192, "mlp.fc1")):
        spec = LoraSpec.from_config({"rank": 1000, "targets": targets})
        with pytest.raises(ConfigError) as e:
            inject_lora(net(), spec)
        assert str(e.value) == (
            f"model.lora.rank=1000 is out of range: must be an integer in [1, {width}] (the width of {layer})"
        )
    inject_lora(net(), LoraSpec.from_config({"rank": 192, "targets": ["qkv"]}))  # the width itself is fine


def test_every_composed_config_is_in_range_as_shipped():
    for name in COMPOSITIONS:
        check_ranges(composed(name))
    for exp in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose("config", [f"experiment={exp}"])
        check_ranges(cfg)
    assert Path(CONF / "eval.yaml").is_file()
