"""The lr that follows the batch and the small-data recipe (training/recipe.py), and the plan's use of
them (tasks/plan.py settle_recipe): in-process, on composed configs."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.helpers import ROOT
from vit_ft.data.loader_policy import batches_per_epoch
from vit_ft.errors import ConfigError
from vit_ft.settings_ranges import RANGES
from vit_ft.tasks.plan import check_config, recipe_free_keys, settle_recipe
from vit_ft.training.optim import build_optimizer
from vit_ft.training.recipe import (
    LR_SCALE_RULES,
    MIN_STEPS,
    RECIPES,
    adapt_recipe,
    lr_scale_rule,
    resolve_lr,
    scaled_lr,
    short_run_rule,
)


def spe(n: int, b: int) -> int:
    return batches_per_epoch(n, 1, b)


def paper(n: int, **kw):
    """recipe=auto on ``n`` images from the paper recipe's defaults (batch 512, warmup 500, 10 epochs)."""
    args = dict(batch_size=512, warmup_steps=500, max_epochs=10, max_steps=-1, steps_per_epoch=spe)
    return adapt_recipe(n, **{**args, **kw})


# -- the lr rule --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, rule",
    [("sgd", "linear"), ("nesterov", "linear"), ("lars", "linear"), ("adamw", "sqrt"), ("lamb", "sqrt")],
)
def test_sqrt_for_adaptive_optimizers_linear_for_sgd(name, rule):
    assert lr_scale_rule(name) == rule
    assert lr_scale_rule(name, "linear") == "linear" and lr_scale_rule(name, "sqrt") == "sqrt"


def test_scaled_lr_is_lr_base_at_its_size_and_follows_the_batch():
    assert scaled_lr(0.01, 512, 512, "linear") == pytest.approx(0.01)
    assert scaled_lr(0.01, 128, 512, "linear") == pytest.approx(0.0025)
    assert scaled_lr(0.001, 128, 512, "sqrt") == pytest.approx(0.0005)
    assert scaled_lr(0.1, 1024, 256, "sqrt") == pytest.approx(0.2)


def test_resolve_lr_says_how_and_an_explicit_lr_wins():
    common = dict(lr_base_size=512, lr_base_scale=None, global_batch=128)
    derived = resolve_lr(lr=None, lr_base=0.01, optimizer_name="sgd", **common)
    assert derived.derived and derived.lr == pytest.approx(0.0025)
    assert derived.line.startswith("lr 0.0025 = optimizer.lr_base 0.01 x (128/512) (linear rule for sgd")
    sq = resolve_lr(lr=None, lr_base=0.001, optimizer_name="adamw", **common)
    assert sq.lr == pytest.approx(0.0005) and "sqrt(128/512) (sqrt rule for adamw" in sq.line
    given = resolve_lr(lr=0.03, lr_base=0.01, optimizer_name="sgd", **common)
    assert not given.derived and given.lr == 0.03
    assert given.line == "lr 0.03: optimizer.lr as given (it wins over optimizer.lr_base=0.01, not applied)"
    assert resolve_lr(lr=0.03, lr_base=None, optimizer_name="sgd", **common).line.endswith("as given")
    with pytest.raises(ConfigError, match=r"optimizer.lr and optimizer.lr_base are both null; set"):
        resolve_lr(lr=None, lr_base=None, optimizer_name="sgd", **common)
    with pytest.raises(ConfigError, match=r"optimizer.lr_base_scale='cube' must be linear, sqrt or null"):
        resolve_lr(lr=None, lr_base=0.01, optimizer_name="sgd", **{**common, "lr_base_scale": "cube"})


def test_build_optimizer_takes_the_lr_base_keys_and_uses_lr():
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model, "sgd", lr=0.02, lr_base=0.01, lr_base_size=512, lr_base_scale=None)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02)


def test_the_enums_are_the_code_s():
    assert set(RANGES["recipe"].values) == set(RECIPES)
    assert set(RANGES["optimizer.lr_base_scale"].values) == set(LR_SCALE_RULES)


# -- the small-data recipe ----------------------------------------------------------------------------
def test_imagenet_sized_data_keeps_the_paper_recipe_exactly():
    d = paper(1_281_167)
    assert (d.batch_size, d.warmup_steps, d.changed, d.line) == (512, 500, {}, None)
    assert d.steps == 10 * (1_281_167 // 512)


def test_a_small_folder_gets_a_smaller_batch_and_warmup_a_tenth_of_the_run():
    d = paper(245)  # the 245 photos: 1 step an epoch, warmup 500 of 10 steps as configured
    assert d.batch_size == 16 and d.batch_size * 8 <= 245  # a power of two, at most 1/8 of the data
    assert d.steps == 10 * (245 // 16) >= MIN_STEPS
    assert d.warmup_steps == d.steps // 10
    assert d.changed == {"data.batch_size": (512, 16), "scheduler.warmup_steps": (500, 15)}
    assert d.line == (
        "recipe=auto: 245 training images make a short run (10 optimizer steps as configured): "
        "data.batch_size 512 -> 16, scheduler.warmup_steps 500 -> 15, 150 steps; recipe=paper runs the "
        "configured recipe as is"
    )


def test_the_batch_is_lowered_until_the_run_has_enough_steps_never_below_8():
    assert paper(2000, max_epochs=1).batch_size == 16  # 2000 // 16 = 125 steps (32 would give 62)
    tiny = paper(40)
    assert tiny.batch_size == 8 and tiny.steps == 50
    assert "still under 100 steps: raise trainer.max_epochs" in tiny.line
    assert paper(20_000, max_epochs=1, multiple_of=3).batch_size % 3 == 0  # divides over accumulation


def test_mid_sized_data_keeps_its_batch_only_warmup_shrinks():
    d = paper(50_000)  # CIFAR-10 with the paper's defaults: 970 steps, 500 of them warmup
    assert (d.batch_size, d.warmup_steps, d.steps) == (512, 97, 970)


def test_values_given_are_kept_and_the_line_says_so():
    d = paper(245, fixed={"data.batch_size"})
    assert d.batch_size == 512 and d.warmup_steps == 1 and "kept as given: data.batch_size" in d.line
    d = paper(245, fixed={"scheduler.warmup_steps"})
    assert d.batch_size == 16 and d.warmup_steps == 500
    both = paper(245, fixed={"data.batch_size", "scheduler.warmup_steps"})
    assert (both.batch_size, both.warmup_steps, both.line) == (512, 500, None)


def test_a_step_count_run_keeps_its_steps():
    d = paper(245, max_steps=300, warmup_steps=500)
    assert (d.batch_size, d.steps, d.warmup_steps) == (16, 300, 30)


def test_a_recipe_that_fits_already_is_left_alone():
    d = adapt_recipe(480, batch_size=32, warmup_steps=30, max_epochs=20, max_steps=-1, steps_per_epoch=spe)
    assert d.line is None and (d.batch_size, d.warmup_steps) == (32, 30)  # the quickstart's


# -- the plan: once, before the model and the Trainer; command-line values stay ----------------------
def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name="config", overrides=["data.root=/x", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what overridden() reads: the command line
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_settle_recipe_adapts_the_defaults_and_resolves_lr(caplog):
    cfg = composed("scheduler.warmup_steps=7")
    check_config(cfg)  # optimizer.lr: null is fine while lr_base is set
    assert cfg.optimizer.lr is None and cfg.optimizer.lr_base == 0.01 and cfg.optimizer.lr_base_size == 512
    assert recipe_free_keys(cfg) == ("data.batch_size", "optimizer.lr")  # warmup was given: compared
    plan = SimpleNamespace(cfg=cfg, recipe=None)
    with caplog.at_level(logging.INFO, logger="vit_ft"):
        decision = settle_recipe(plan, 245)
    assert plan.recipe is decision and decision.changed == {"data.batch_size": (512, 16)}
    assert (cfg.data.batch_size, cfg.scheduler.warmup_steps) == (16, 7)
    assert math.isclose(cfg.optimizer.lr, 0.01 * math.sqrt(16 / 512))  # a lowered batch: the sqrt rule
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        ln.startswith("recipe=auto: 245 training images") and "kept as given: scheduler.warmup_steps" in ln
        for ln in lines
    )
    assert any(
        ln.startswith(
            "lr 0.001768 = optimizer.lr_base 0.01 x sqrt(16/512) (sqrt rule for sgd: recipe=auto lowered the "
            "batch, optimizer.lr_base_scale=linear|sqrt to choose; global batch 16"
        )
        for ln in lines
    )


@pytest.mark.parametrize(
    ("overrides", "lr"),
    [
        (("optimizer.lr_base_scale=linear",), 0.01 * 16 / 512),  # a rule asked for: kept
        (("data.batch_size=16",), 0.01 * 16 / 512),  # the user's batch: the optimizer's own rule
        (("optimizer=adamw",), 0.001 * math.sqrt(16 / 512)),  # adaptive: sqrt either way
    ],
)
def test_the_sqrt_rule_only_where_recipe_auto_lowered_the_batch(overrides, lr):
    cfg = composed(*overrides)
    settle_recipe(SimpleNamespace(cfg=cfg, recipe=None), 245)
    assert cfg.data.batch_size == 16 and math.isclose(cfg.optimizer.lr, lr)


def test_short_run_rule():
    assert short_run_rule(None, True, "sgd") == ("sqrt", "recipe=auto lowered the batch")
    assert short_run_rule("linear", True, "sgd") == ("linear", None)
    assert short_run_rule(None, False, "sgd") == (None, None) == short_run_rule(None, True, "adamw")


def test_recipe_paper_and_a_streamed_set_keep_the_recipe():
    cfg = composed("recipe=paper", "optimizer=adamw", "optimizer.lr_base_size=256")
    assert recipe_free_keys(cfg) == ("optimizer.lr",)
    assert settle_recipe(SimpleNamespace(cfg=cfg, recipe=None), 245) is None
    assert (cfg.data.batch_size, cfg.scheduler.warmup_steps) == (512, 500)
    assert math.isclose(cfg.optimizer.lr, 0.001 * math.sqrt(2))  # sqrt rule: 512 over 256
    cfg = composed()
    assert settle_recipe(SimpleNamespace(cfg=cfg, recipe=None), None) is None  # size unknown
    assert (cfg.data.batch_size, cfg.optimizer.lr) == (512, 0.01)


def test_an_explicit_lr_wins_and_a_missing_one_is_refused():
    cfg = composed("optimizer.lr=0.05", "data.batch_size=64")
    assert recipe_free_keys(cfg) == ("scheduler.warmup_steps",)
    settle_recipe(SimpleNamespace(cfg=cfg, recipe=None), 245)
    assert (cfg.optimizer.lr, cfg.data.batch_size) == (0.05, 64)
    with pytest.raises(ConfigError, match=r"^optimizer.lr=None must be a positive number"):
        check_config(composed("optimizer.lr_base=null"))


@pytest.mark.parametrize(
    ("trainer", "world", "batch"),
    [
        (("trainer.devices=16", "trainer.accelerator=cpu"), 16, 16),  # 8 would not divide over 16 ranks
        (("trainer.devices=3", "trainer.accelerator=cpu"), 3, 15),  # the smallest multiple of 3 from 16
        (("trainer.devices=2", "trainer.num_nodes=2", "trainer.accelerator=cpu"), 4, 8),
        (("trainer.devices=[0,1]", "trainer.accelerator=cpu"), 2, 8),
        (("trainer.devices=auto", "trainer.accelerator=cpu"), 1, 8),
    ],
)
def test_a_lowered_batch_divides_over_every_rank(trainer, world, batch):
    from vit_ft.tasks.plan import configured_world_size

    cfg = composed(*trainer)
    assert configured_world_size(cfg.trainer) == world
    settle_recipe(SimpleNamespace(cfg=cfg, recipe=None), 100)  # one device: batch 8, 130 steps
    assert cfg.data.batch_size == batch and batch % world == 0
