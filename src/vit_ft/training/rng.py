"""The random state that makes a resumed run equal an uninterrupted one.

* :func:`rng_state` / :func:`set_rng_state`: the global generators of one process (torch CPU and
  CUDA, numpy, Python), in a form ``torch.load(weights_only=True)`` reads;
* :func:`gather_rng_states`: those of every rank, for the checkpoint rank 0 writes;
* :class:`RngResume`: the module's part: every rank's states into ``checkpoint[RNG_KEY]`` at each
  save, and back, once, at the first training batch of a resumed run (after the data loaders and the
  sanity check have drawn from the generators).
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from vit_ft.checkpoint_format import RNG_KEY

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """This process's global generators: torch (CPU, and CUDA when initialised), numpy, Python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` returned (CUDA only with the same number of devices)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def gather_rng_states(trainer: Any) -> list[dict[str, Any]]:
    """:func:`rng_state` of every rank, in rank order (every rank must call it: a collective)."""
    state = rng_state()
    if int(trainer.world_size) <= 1 or not torch.distributed.is_initialized():
        return [state]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out


class RngResume:
    """Every rank's generators in the checkpoints a module writes, set back when a run resumes."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] | None = None

    def save(self, checkpoint: dict[str, Any], trainer: Any) -> None:
        """Add every rank's states (dropout, drop-path, mixup, random erasing draw from them); a
        collective: every rank calls it. Nothing without a trainer."""
        if trainer is not None:
            checkpoint[RNG_KEY] = gather_rng_states(trainer)

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Keep the checkpoint's states for :meth:`restore` (none in a checkpoint without them)."""
        self.pending = checkpoint.get(RNG_KEY)

    def restore(self, trainer: Any) -> None:
        """At the first training batch after :meth:`load`: this rank's states, when the checkpoint has
        one per rank of this run (else a warning: the run goes on with other random numbers)."""
        states, self.pending = self.pending, None
        if not states:
            return
        rank, world = trainer.global_rank, trainer.world_size
        if len(states) == world:
            set_rng_state(states[rank])
        else:
            log.warning(
                "the checkpoint holds the random state of %d rank(s), this run has %d: dropout and mixup "
                "draw other numbers than an uninterrupted run would",
                len(states),
                world,
            )
