"""DINO's weighted k-NN (issue 13): against a brute-force reference, hand-checked votes, ties, chunks
and rank shards."""

from __future__ import annotations

import math

import pytest
import torch

from vit_ft.errors import ConfigError
from vit_ft.probe.knn import effective_ks, knn_evaluate, knn_metrics, knn_predict, normalize
from vit_ft.probe.settings import KnnSettings


def brute_force(bank, bank_y, queries, num_classes, k, t):
    """One query at a time, in plain Python: sort by cosine, sum exp(sim/t) per class, rank classes
    by vote (ties: lower class index first)."""
    out = []
    b = [v / v.norm() for v in bank.double()]
    for q in queries.double():
        q = q / q.norm()
        sims = sorted(((float(q @ v), int(y)) for v, y in zip(b, bank_y)), key=lambda s: -s[0])[:k]
        votes = [0.0] * num_classes
        for s, y in sims:
            votes[y] += math.exp(s / t)
        out.append(sorted(range(num_classes), key=lambda c: (-votes[c], c)))
    return out


def test_matches_brute_force_for_several_k_in_one_pass_chunked_and_sharded():
    g = torch.Generator().manual_seed(0)
    bank, bank_y = torch.randn(50, 8, generator=g), torch.randint(0, 7, (50,), generator=g)
    queries, qy = torch.randn(23, 8, generator=g), torch.randint(0, 7, (23,), generator=g)
    ks = [1, 5, 20, 50]
    pred = knn_predict(normalize(bank), bank_y, normalize(queries), 7, ks, 0.07)
    counts = {k: [0, 0] for k in ks}
    for k in ks:
        ref = brute_force(bank, bank_y, queries, 7, k, 0.07)
        assert pred[k].tolist() == [r[:5] for r in ref], k
        counts[k] = [sum(r[0] == y for r, y in zip(ref, qy)), sum(y in r[:5] for r, y in zip(ref, qy))]
    whole = knn_evaluate(bank, bank_y, queries, qy, 7, ks, chunk=4)
    assert {k: v.tolist() for k, v in whole.items()} == counts
    # two ranks, each every other chunk of 4 queries: their counts add up to the whole
    shards = [knn_evaluate(bank, bank_y, queries, qy, 7, ks, chunk=4, rank=r, world=2) for r in (0, 1)]
    assert {k: (shards[0][k] + shards[1][k]).tolist() for k in ks} == counts
    m = knn_metrics(whole, 23, 7)
    assert m["knn/k20/acc1"] == counts[20][0] / 23 and m["knn/k20/acc5"] == counts[20][1] / 23


def test_weights_decide_over_counts_and_ties_go_to_the_lower_class():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    y = torch.tensor([0, 1, 1])
    q = torch.tensor([[1.0, 0.0]])
    # T=0.07: exp(1/0.07) = 1.6e6 for the class-0 twin beats 2 x exp(0.6/0.07) = 1.1e4 for class 1
    assert knn_predict(bank, y, q, 2, [3], 0.07)[3].tolist() == [[0, 1]]
    # T=10: exp(0.1) = 1.105 < 2 x exp(0.06) = 2.124: the two class-1 neighbours win
    assert knn_predict(bank, y, q, 2, [3], 10.0)[3].tolist() == [[1, 0]]
    assert knn_predict(bank, y, q, 2, [1, 3], 10.0)[1].tolist() == [[0, 1]]  # k=1: the nearest only
    # equal votes (two neighbours at the same angle, one per class): the lower class index ranks first
    tie_bank, tie_y = torch.tensor([[0.0, 1.0], [0.0, -1.0]]), torch.tensor([1, 0])
    assert knn_predict(tie_bank, tie_y, q, 3, [2], 0.07)[2].tolist() == [[0, 1, 2]]


def test_k_capped_at_the_bank_and_settings_checked():
    assert effective_ks([10, 20, 100, 200], 64) == [10, 20, 64]
    assert effective_ks([10, 20], 5) == [5]
    counts = knn_evaluate(
        torch.randn(5, 3), torch.arange(5), torch.randn(2, 3), torch.zeros(2).long(), 5, [10, 20]
    )
    assert list(counts) == [5] and set(knn_metrics(counts, 2, 5)) == {"knn/k5/acc1"}  # <= 5 classes: no acc5
    s = KnnSettings.from_dict({"mode": "knn", "k": [20, 10, 20]})
    assert s.k == [10, 20] and s.temperature == 0.07 and s.features == "cls"
    for bad, msg in (
        ({"k": [0]}, "probe.k=[0] must be a list of positive integers"),
        ({"temperature": 0}, "probe.temperature=0 must be a positive number"),
        ({"query_chunk": 0}, "probe.query_chunk=0 must be a positive integer"),
        ({"mode": "fewshot"}, "probe.mode=fewshot is not the k-NN evaluation"),
    ):
        with pytest.raises(ConfigError) as e:
            KnnSettings.from_dict({"mode": "knn", **bad} if "mode" not in bad else bad)
        assert str(e.value).startswith(msg) and "\n" not in str(e.value)
