"""Closed-form few-shot evaluation (issue 5): the solve and the shot sampling (the command itself:
tests/cli/test_fewshot_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vit_ft.errors import ConfigError
from vit_ft.probe.ridge import (
    BIAS_CONSTANT,
    DEFAULT_L2,
    L2_GRID,
    fewshot_evaluation,
    ridge_accuracies,
    ridge_cache,
    ridge_weights,
    sample_shots,
    select_l2,
)


def separable(n_per_class: int, dim: int, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g, dtype=torch.float64) * 4
    y = torch.arange(k).repeat_interleave(n_per_class)
    x = centres[y] + 0.3 * torch.randn(len(y), dim, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("n_per_class,dim", [(20, 8), (3, 40)])  # N >= D and D > N branches
def test_closed_form_matches_a_direct_least_squares_solve(n_per_class, dim):
    x, y = separable(n_per_class, dim)
    l2 = 2.0**3
    w = ridge_weights(ridge_cache(x, y, 3), l2)
    # The same ridge problem, by hand: whitened features + bias column, {-1, 1} targets,
    # min |X W - T|^2 + l2 |W|^2  ==  lstsq([X; sqrt(l2) I], [T; 0]).
    xw = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5)
    xa = torch.cat([xw, torch.full((len(x), 1), BIAS_CONSTANT, dtype=x.dtype)], 1)
    t = 2.0 * torch.nn.functional.one_hot(y, 3).double() - 1.0
    d = xa.shape[1]
    a = torch.cat([xa, (l2**0.5) * torch.eye(d, dtype=x.dtype)])
    b = torch.cat([t, torch.zeros(d, 3, dtype=x.dtype)])
    ref = torch.linalg.lstsq(a, b).solution
    torch.testing.assert_close(w, ref, rtol=1e-6, atol=1e-8)
    xt, yt = separable(10, dim, seed=0)
    assert ridge_accuracies(x, y, xt, yt, 3, [l2, 2.0**10])[0] == 1.0


def test_shots_are_sampled_per_class_without_replacement():
    labels = np.array([0] * 7 + [1] * 12 + [2] * 5)
    rows = sample_shots(labels, 5, seed=0, num_classes=3)
    assert np.bincount(labels[rows], minlength=3).tolist() == [5, 5, 5] and len(set(rows)) == 15
    assert np.array_equal(rows, sample_shots(labels, 5, seed=0, num_classes=3))  # deterministic
    assert not np.array_equal(
        sample_shots(labels, 2, seed=0, num_classes=3), sample_shots(labels, 2, seed=1, num_classes=3)
    )
    with pytest.raises(ConfigError):
        sample_shots(labels, 6, seed=0, num_classes=3)


def test_evaluation_reports_mean_and_std_per_shot_and_the_chosen_l2():
    x, y = separable(12, 6)
    xt, yt = separable(5, 6, seed=0)
    names = ["a", "b", "c"]
    r = fewshot_evaluation((x, y), (xt, yt), names, [1, 3, 12], 4, DEFAULT_L2, base_seed=7)
    assert set(r.final) == {f"fewshot/{s}shot/{m}" for s in (1, 3, 12) for m in ("acc", "acc_std")}
    assert all(len(v) == 4 for v in r.per_seed.values()) and r.l2_selected is None
    assert r.final["fewshot/12shot/acc_std"] == 0.0 and r.final["fewshot/12shot/acc"] == 1.0  # one draw
    assert r.final["fewshot/3shot/acc"] == pytest.approx(np.mean(r.per_seed["3shot"]))
    again = fewshot_evaluation((x, y), (xt, yt), names, [1, 3, 12], 4, 1024, base_seed=7)
    assert again.per_seed == r.per_seed  # seeded draws; an int L2 is the same as its float

    auto = fewshot_evaluation((x, y), (xt, yt), names, [3], 2, "auto", val=(xt, yt))
    assert all(l2 in L2_GRID for l2 in auto.l2_selected["3shot"])
    assert auto.final["fewshot/3shot/log2_l2"] == pytest.approx(np.mean(np.log2(auto.l2_selected["3shot"])))
    every = np.arange(len(y))
    assert select_l2(x, y, every, 3) == DEFAULT_L2  # nothing held out: the default

    fewer = y.clone()
    fewer[0] = 2  # class a: 11 images
    with pytest.raises(ConfigError) as e:
        fewshot_evaluation((x, fewer), (xt, yt), names, [1, 12], 1, 1.0)
    assert str(e.value) == (
        "probe.shots=[1, 12] asks for 12 images per class but class 'a' has only 11 in the train split; "
        "use shot counts up to 11"
    )
