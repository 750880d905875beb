"""``monitor``: one key the best checkpoint, early stopping, optimized_metric (the summary, Optuna) follow,
its mode inferred, and an unknown metric refused in one line listing the known ones before training."""

from __future__ import annotations

import pytest

from tests.unit.tasks.test_plan import BASE, compose_cfg
from vit_ft.errors import ConfigError
from vit_ft.tasks.common import build_callbacks
from vit_ft.tasks.plan import check_monitor, make_plan

EARLY = [
    "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
    "+callbacks.early_stopping.monitor=${monitor}",
    "+callbacks.early_stopping.patience=3",
]


def test_the_default_follows_val_acc1_as_before(tmp_path):
    plan = make_plan(compose_cfg(BASE, tmp_path), resume=False)
    cfg = plan.cfg
    assert (plan.monitor, plan.monitor_mode) == ("val/acc1", "max")
    assert cfg.optimized_metric == "val/acc1" and cfg.callbacks.model_checkpoint.monitor == "val/acc1"
    assert cfg.callbacks.model_checkpoint.mode == "max"


@pytest.mark.parametrize(("metric", "mode"), [("val/acc1_macro", "max"), ("val/loss", "min")])
def test_one_key_moves_the_best_checkpoint_early_stopping_and_the_optimized_metric(tmp_path, metric, mode):
    plan = make_plan(compose_cfg([*BASE, f"monitor={metric}", *EARLY], tmp_path), resume=False)
    cfg = plan.cfg
    assert (plan.monitor, plan.monitor_mode) == (metric, mode)
    assert cfg.optimized_metric == metric
    callbacks = {type(c).__name__: c for c in build_callbacks(cfg)}
    best, early = callbacks["ModelCheckpoint"], callbacks["EarlyStopping"]
    assert (best.monitor, best.mode, early.monitor, early.mode) == (metric, mode, metric, mode)
    check_monitor(plan, num_classes=3)


def test_with_the_ema_used_for_eval_the_monitor_follows_the_ema(tmp_path):
    cfg = compose_cfg([*BASE, "model.ema.decay=0.9"], tmp_path)
    cfg.monitor = "val/acc1_macro"  # from a config file, not the command line
    plan = make_plan(cfg, resume=False)
    assert plan.monitor == "val_ema/acc1_macro" == plan.cfg.callbacks.model_checkpoint.monitor
    assert plan.cfg.optimized_metric == "val_ema/acc1_macro"
    check_monitor(plan, num_classes=4)  # the EMA stream logs acc1_macro too


def test_an_unknown_metric_is_one_line_listing_the_known_ones(tmp_path):
    plan = make_plan(compose_cfg([*BASE, "monitor=val/acc1_mcro"], tmp_path), resume=False)
    with pytest.raises(ConfigError) as e:
        check_monitor(plan, num_classes=3)
    assert str(e.value) == (
        "monitor=val/acc1_mcro is not a metric this run logs; use one of: val/loss, val/acc1, "
        "val/acc1_macro, val/ece, train/loss, train/acc1, train/lr, epoch, step"
    )
    plan = make_plan(compose_cfg([*BASE, "optimized_metric=val/acc5"], tmp_path), resume=False)
    with pytest.raises(ConfigError, match=r"^optimized_metric=val/acc5 is not a metric this run logs"):
        check_monitor(plan, num_classes=3)  # 3 classes: no top-5
    check_monitor(plan, num_classes=5)
    # Lightning's ModelCheckpoint may follow the step (keep the latest); a k-NN run names its own metrics
    check_monitor(make_plan(compose_cfg([*BASE, "monitor=step"], tmp_path), resume=False), num_classes=3)
    knn = compose_cfg([*BASE, "experiment=knn", "optimized_metric=knn/k20/acc1"], tmp_path)
    check_monitor(make_plan(knn, resume=False), num_classes=3)
