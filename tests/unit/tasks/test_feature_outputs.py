"""What k-NN and few-shot share in tasks/outputs.py: the held-out split and the metric they return."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from vit_ft.errors import ConfigError
from vit_ft.tasks.outputs import feature_metric, held_out_split


def test_the_metric_is_the_optimized_one_when_the_evaluation_has_it_else_the_default():
    final = {"knn/k10/acc1": 0.5, "knn/k20/acc1": 0.7}
    assert feature_metric(OmegaConf.create({"optimized_metric": "knn/k10/acc1"}), final, "knn/k20/acc1") == (
        "knn/k10/acc1"
    )
    for cfg in ({"optimized_metric": "val/acc1"}, {"optimized_metric": None}, {}):
        assert feature_metric(OmegaConf.create(cfg), final, "knn/k20/acc1") == "knn/k20/acc1"


def test_the_held_out_split_is_test_when_there_is_one_and_never_train():
    assert held_out_split(None, {"train": 0, "val": 0, "test": 0}) == "test"
    assert held_out_split(None, {"train": 0, "val": 0}) == "val"
    with pytest.raises(ConfigError, match=r"^probe.eval_split='train' is not a held-out split"):
        held_out_split("train", {"train": 0, "val": 0})
