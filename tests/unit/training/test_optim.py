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


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_layer_decay_scales_each_block_at_every_step_of_warmup_and_decay(decay):
    """timm's layer-wise decay: in a depth-d ViT, layer 0 is the embeddings, layer i the i-th block
    (the final norm goes with block d), layer d+1 the head; layer i trains at layer_decay ** (d + 1 - i)
    times the head's rate, at every step, while the head follows the warmup + decay schedule."""
    depth, ld, lr, warmup, total = 3, 0.65, 0.1, 4, 12
    m = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=depth, num_classes=5)
    opt = build_optimizer(m, name="adamw", lr=lr, weight_decay=0.05, layer_decay=ld)
    sched = build_scheduler(opt, total_steps=total, warmup_steps=warmup, decay=decay)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}

    def layer(name: str) -> int:
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return depth if name.startswith("norm.") else depth + 1  # timm: the final norm with the last block

    named = list(m.named_parameters())
    assert {layer(n) for n, _ in named} == set(range(depth + 2))
    for step in range(total):
        head_lr = group_of[id(m.head.weight)]["lr"]
        assert head_lr == pytest.approx(lr * warmup_decay_factor(step, total, warmup, decay), abs=1e-12)
        if head_lr == 0:
            continue
        for name, p in named:
            expected = ld ** (depth + 1 - layer(name))
            assert group_of[id(p)]["lr"] / head_lr == pytest.approx(expected, rel=1e-9), (step, name)
        opt.step()
        sched.step()
