"""Weighted k-nearest-neighbour classification on frozen features (DINO's k-NN evaluation).

The recipe of Caron et al. (2021), ``eval_knn.py``: features L2-normalised, cosine similarity
between each query and every train feature (the bank), the ``k`` most similar train images vote for
their class with weight ``exp(similarity / T)`` (``T = 0.07``), and the class with the largest
summed vote is the prediction (top-5: the five largest). Several ``k`` come from one similarity
pass: the neighbours are ranked once for the largest ``k`` and the votes accumulated in order.

Queries are processed in chunks so that a ``[chunk, N_train]`` similarity block stays within a
memory budget; under DDP each rank takes every ``world``-th chunk and the per-rank counts are summed
by the caller. Ties are settled deterministically: equal class votes rank by class index (a
stable sort); equally similar neighbours at the ``k``-th place are taken in ``torch.topk``'s order.

Pure tensors in, tensors out: no Lightning, no config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_K = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
CHUNK_BYTES = 256 * 2**20  # similarity block budget when no chunk size is given


def effective_ks(ks: list[int] | tuple[int, ...], n_train: int) -> list[int]:
    """The asked ``ks`` capped at the train size, sorted and without repeats."""
    return sorted({min(int(k), int(n_train)) for k in ks if int(n_train) > 0})


def chunk_size(n_train: int, budget: int = CHUNK_BYTES) -> int:
    """Queries per chunk so that a float32 ``[chunk, n_train]`` block stays within ``budget`` bytes."""
    return max(1, min(4096, budget // (4 * max(1, int(n_train)))))


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    ks: list[int],
    temperature: float = DEFAULT_TEMPERATURE,
    top: int = 5,
) -> dict[int, torch.Tensor]:
    """Predicted classes of ``queries`` for every ``k`` in ``ks``: ``{k: int64 [Q, min(top, C)]}``,
    best first.

    ``bank`` ``[N, D]`` and ``queries`` ``[Q, D]`` must already be L2-normalised (see
    :func:`normalize`); ``ks`` must be sorted and at most ``N``. One ``[Q, N]`` similarity block:
    callers chunk the queries (:func:`knn_evaluate`).
    """
    sim = queries @ bank.T
    kmax = ks[-1]
    top_sim, top_idx = sim.topk(kmax, dim=1, largest=True, sorted=True)
    neighbours = bank_labels[top_idx]  # [Q, kmax]
    weights = (top_sim / temperature).exp()
    votes = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    m = min(int(top), int(num_classes))
    out, done = {}, 0
    for k in ks:
        votes.scatter_add_(1, neighbours[:, done:k], weights[:, done:k])
        done = k
        order = torch.sort(votes, dim=1, descending=True, stable=True).indices
        out[k] = order[:, :m]
    return out


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32)."""
    return F.normalize(x.float(), dim=1)


def knn_evaluate(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    ks: list[int],
    temperature: float = DEFAULT_TEMPERATURE,
    *,
    chunk: int | None = None,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str | None = None,
) -> dict[int, torch.Tensor]:
    """Correct top-1 and top-5 counts per ``k``: ``{k: int64 [2]}`` over this rank's query chunks.

    Features are normalised here (on ``device``, default the bank's); ``ks`` are capped at the bank
    size (:func:`effective_ks`). With ``world > 1`` rank ``r`` evaluates chunks ``r, r + world, ...``:
    sum the counts over ranks for the whole split.
    """
    device = torch.device(device) if device is not None else bank.device
    ks = effective_ks(ks, len(bank))
    counts = {k: torch.zeros(2, dtype=torch.int64, device=device) for k in ks}
    if not ks or len(queries) == 0:
        return counts
    b = normalize(bank.to(device))
    bl = bank_labels.to(device)
    step = int(chunk or chunk_size(len(bank)))
    starts = list(range(0, len(queries), step))[rank::world]
    for s in starts:
        q = normalize(queries[s : s + step].to(device))
        y = query_labels[s : s + step].to(device).view(-1, 1)
        for k, pred in knn_predict(b, bl, q, num_classes, ks, temperature).items():
            hit = pred.eq(y)
            counts[k][0] += hit[:, 0].sum()
            counts[k][1] += hit[:, :5].any(dim=1).sum()
    return counts


def knn_metrics(counts: dict[int, torch.Tensor], n_queries: int, num_classes: int) -> dict[str, float]:
    """``knn/k{k}/acc1`` (and ``acc5`` when there are more than 5 classes) from summed counts."""
    out: dict[str, float] = {}
    n = max(1, int(n_queries))
    for k, c in counts.items():
        out[f"knn/k{k}/acc1"] = float(c[0]) / n
        if num_classes > 5:
            out[f"knn/k{k}/acc5"] = float(c[1]) / n
    return out
