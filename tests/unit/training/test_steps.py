"""The one optimizer-step-boundary test that step checkpoints and preemption share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vit_ft.training.steps import is_step_boundary


def fake_trainer(accumulate: int, last: bool) -> SimpleNamespace:
    progress = SimpleNamespace(is_last_batch=last)
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(accumulate_grad_batches=accumulate, fit_loop=loop)


@pytest.mark.parametrize(
    ("accumulate", "batch_idx", "last", "boundary"),
    [
        (1, 0, False, True),  # every batch is a step
        (3, 0, False, False),  # between micro-batches
        (3, 1, False, False),
        (3, 2, False, True),  # the third micro-batch ends the step
        (3, 4, True, True),  # a partial accumulation at the epoch's end: Lightning steps on it
        (3, 4, False, False),  # a loader without a length: only Lightning knows the last batch
    ],
)
def test_step_boundary(accumulate, batch_idx, last, boundary):
    assert is_step_boundary(fake_trainer(accumulate, last), batch_idx) is boundary
