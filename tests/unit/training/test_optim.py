"""Warmup + cosine schedule values and weight-decay groups."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from vit_ft.errors import ConfigError
from vit_ft.training.optim import build_optimizer, build_scheduler, warmup_decay_factor


def lrs_over(total: int, warmup: int, lr: float = 0.1, decay: str = "cosine") -> list[float]:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=lr)
    sched = build_scheduler(opt, total_steps=total, warmup_steps=warmup, decay=decay)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])
    return out


def test_linear_warmup_then_cosine_to_zero():
    lrs = lrs_over(total=100, warmup=10)
    assert lrs[0] == pytest.approx(0.01)  # (0 + 1) / 10 of the peak at the first step
    assert lrs[4] == pytest.approx(0.05)
    assert lrs[9] == pytest.approx(0.1)  # peak at the last warmup step
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.05)  # half-way through the cosine: half the peak
    assert lrs[10 + 45 // 2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 22 / 90)))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup


def test_other_decays_and_floor():
    assert lrs_over(20, 0, decay="linear")[10] == pytest.approx(0.05)
    assert lrs_over(20, 5, decay="constant")[19] == pytest.approx(0.1)
    assert warmup_decay_factor(100, 100, 10, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)


def test_no_weight_decay_on_bias_norm_pos_embed_cls_token():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    opt = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "blocks.0.attn.qkv.bias"} <= no_decay
    assert {"head.weight", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= decay


def test_sgd_is_the_papers_classical_momentum():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, name="sgd", lr=0.01, momentum=0.9)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is False


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"lr": 0.0}, "optimizer.lr=0.0"),
        ({"lr": -1.0}, "optimizer.lr=-1.0"),
        ({"name": "nope"}, "optimizer.name='nope'"),
    ],
)
def test_bad_optimizer_settings(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        build_optimizer(torch.nn.Linear(2, 2), **{"lr": 0.01, **kwargs})
