"""The module's part of an exact resume (vit_ft.training.rng.RngResume): every rank's generators
into each checkpoint, set back once, at the first training batch, or a warning when ranks differ."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import numpy as np
import torch

from vit_ft.checkpoint_format import RNG_KEY
from vit_ft.training.rng import RngResume, rng_state


def draws() -> tuple:
    return float(torch.rand(1)), float(np.random.rand()), random.random()


def test_saved_states_come_back_once_at_the_first_batch():
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    ckpt: dict = {}
    rng = RngResume()
    rng.save(ckpt, trainer)
    expected = draws()
    rng.load(ckpt)
    draws()  # the data loaders and the sanity check draw in between
    rng.restore(trainer)
    assert draws() == expected
    rng.restore(trainer)  # once only: a second batch goes on
    assert draws() != expected
    rng.save({}, None)  # no trainer (load_from_checkpoint): nothing to gather


def test_another_rank_count_warns_and_keeps_the_generators(caplog):
    rng = RngResume()
    rng.load({RNG_KEY: [rng_state(), rng_state()]})
    before = torch.get_rng_state()
    with caplog.at_level(logging.WARNING):
        rng.restore(SimpleNamespace(world_size=1, global_rank=0))
    assert "random state of 2 rank(s), this run has 1" in caplog.text
    assert torch.equal(torch.get_rng_state(), before) and rng.pending is None
    rng.load({})  # a checkpoint without states (an older one): nothing to set
    rng.restore(SimpleNamespace(world_size=1, global_rank=0))
