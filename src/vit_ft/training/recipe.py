"""The learning rate that follows the batch, and the recipe that fits the data: pure decisions.

**LR rule** (timm's ``--lr-base``): ``lr = lr_base x scale(global_batch / lr_base_size)``, ``scale`` the
identity (``linear``: SGD-family) or the square root (``sqrt``: adaptive optimisers, whose name holds
``ada`` or ``lamb`` as in timm's train.py). An explicit ``optimizer.lr`` wins over ``lr_base``.

**Small-data recipe** (``recipe=auto``): the paper recipe (global batch 512, 500 warmup steps) assumes
ImageNet; on a small folder it makes a handful of optimizer steps that never leave warmup. Three rules,
each only ever *lowering* a value the user did not set, so ImageNet-sized data keeps the paper recipe:

- the batch is at most 1/:data:`BATCH_FRACTION` of the training set (at least that many steps an epoch);
- the batch is lowered (powers of two, down to :data:`MIN_BATCH`) until the run makes at least
  :data:`MIN_STEPS` optimizer steps, the epochs staying as asked: the images seen (the compute) are
  what the user asked for, only cut into more, smaller steps; a zero-initialised head needs updates,
  not epochs;
- warmup is at most :data:`WARMUP_FRACTION` of the run's steps;
- when it lowered the batch, the lr follows it by the square root (:func:`short_run_rule`), whatever the
  optimizer, unless ``optimizer.lr_base_scale`` says otherwise.

Why the square root there: with the linear rule, the same epochs at a smaller batch give the same sum of
learning rates (the lr per image is unchanged), and a short run gains only by leaving warmup; the paper's
own small transfer sets were trained for hundreds of epochs (500 steps of 512 images on a few thousand),
a 10-epoch run on a folder for a few. The square root (Krizhevsky 2014; Hoffer et al. 2017) keeps more of
the step size, close to what the well-known small-batch SGD recipes use (PyTorch's transfer-learning
tutorial: lr 0.001 at batch 4; 0.01 x sqrt(4/512) = 0.00088, the linear rule gives 0.000078). Measured with SGD fine-tuning a pre-trained ViT on 100 images, 7 seeds
(benchmarks/bench_recipe.py): val/acc1 0.683 with the square root, 0.616 with the linear rule, 0.586
with the paper recipe as is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from vit_ft.errors import ConfigError

LR_SCALE_RULES = ("linear", "sqrt")
RECIPES = ("auto", "paper")
BATCH_FRACTION = 8  # batch <= train images / 8: at least 8 optimizer steps per epoch
MIN_STEPS = 100  # optimizer steps a run should make (by lowering the batch, never raising epochs)
MIN_BATCH = 8  # the batch is never lowered below this (the examples' fine-tuning batch)
WARMUP_FRACTION = 0.1  # warmup <= 10% of the run's steps (the usual warmup_ratio of fine-tuning scripts)


# -- the learning rate ------------------------------------------------------------------------------
def lr_scale_rule(optimizer_name: str, asked: str | None = None) -> str:
    """``asked`` (``optimizer.lr_base_scale``) or the optimizer's own: ``sqrt`` for adaptive
    optimisers (timm's test: the name holds ``ada`` or ``lamb``), else ``linear``."""
    if asked is not None:
        if asked not in LR_SCALE_RULES:
            raise ConfigError(
                f"optimizer.lr_base_scale={asked!r} must be linear, sqrt or null (by optimizer)"
            )
        return asked
    name = str(optimizer_name).lower()
    return "sqrt" if any(s in name for s in ("ada", "lamb")) else "linear"


def short_run_rule(
    asked: str | None, batch_lowered: bool, optimizer_name: str
) -> tuple[str | None, str | None]:
    """The lr rule of a run whose batch ``recipe=auto`` lowered: ``sqrt`` unless ``asked`` (the module's
    doc says why); ``(rule, why)``; ``(asked, None)`` when the batch was not lowered, a rule was asked or
    the optimizer's own rule is ``sqrt`` already."""
    if asked is not None or not batch_lowered or lr_scale_rule(optimizer_name) == "sqrt":
        return asked, None
    return "sqrt", "recipe=auto lowered the batch"


def scaled_lr(lr_base: float, global_batch: int, base_size: int, rule: str) -> float:
    """``lr_base`` (per ``base_size`` images) at ``global_batch`` images per optimizer step."""
    ratio = int(global_batch) / int(base_size)
    return float(lr_base) * (math.sqrt(ratio) if rule == "sqrt" else ratio)


@dataclass(frozen=True)
class LrChoice:
    lr: float
    derived: bool  # from lr_base (False: optimizer.lr as given)
    line: str  # how it was decided, for the start of the run


def resolve_lr(
    *,
    lr: float | None,
    lr_base: float | None,
    lr_base_size: int,
    lr_base_scale: str | None,
    optimizer_name: str,
    global_batch: int,
    rule_reason: str | None = None,
) -> LrChoice:
    """The run's learning rate and the one line that says how it was derived (``rule_reason``: why
    ``lr_base_scale`` was chosen for the optimizer, e.g. :func:`short_run_rule`'s)."""
    if lr is not None:
        also = f" (it wins over optimizer.lr_base={lr_base:g}, not applied)" if lr_base is not None else ""
        return LrChoice(float(lr), False, f"lr {float(lr):.4g}: optimizer.lr as given{also}")
    if lr_base is None:
        raise ConfigError(
            "optimizer.lr and optimizer.lr_base are both null; set optimizer.lr_base=<lr per "
            "optimizer.lr_base_size images> (e.g. 0.01) or optimizer.lr=<value>"
        )
    rule = lr_scale_rule(optimizer_name, lr_base_scale)
    value = scaled_lr(lr_base, global_batch, lr_base_size, rule)
    ratio = f"{int(global_batch)}/{int(lr_base_size)}"
    factor = f"sqrt({ratio})" if rule == "sqrt" else f"({ratio})"
    return LrChoice(
        value,
        True,
        f"lr {value:.4g} = optimizer.lr_base {lr_base:g} x {factor} ({rule} rule "
        + (
            f"for {optimizer_name}: {rule_reason}, optimizer.lr_base_scale=linear|sqrt to choose"
            if rule_reason
            else f"for {optimizer_name}"
        )
        + f"; global batch {int(global_batch)} = data.batch_size); optimizer.lr=<value> sets it as is",
    )


# -- the recipe that fits the data ------------------------------------------------------------------
@dataclass(frozen=True)
class RecipeDecision:
    """What ``recipe=auto`` settled: the values to run with, what changed and the line saying so."""

    batch_size: int
    warmup_steps: int
    steps: int  # optimizer steps of the run with these values
    changed: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (from, to)
    line: str | None = None  # None: nothing to adapt (the recipe stays as configured)


def _batch_candidates(batch: int, multiple_of: int) -> list[int]:
    """``batch``, then the powers of two below it down to :data:`MIN_BATCH`, each rounded down to a
    multiple of ``multiple_of`` (the ranks x accumulation steps it must divide over)."""
    out = [batch]
    p = 2 ** int(math.floor(math.log2(batch)))
    while p >= MIN_BATCH:
        c = p - p % multiple_of
        if MIN_BATCH <= c < out[-1]:
            out.append(c)
        p //= 2
    return out


def adapt_recipe(
    train_size: int,
    *,
    batch_size: int,
    warmup_steps: int,
    max_epochs: int | None,
    max_steps: int | None,
    steps_per_epoch: Callable[[int, int], int],
    fixed: frozenset[str] | set[str] = frozenset(),
    multiple_of: int = 1,
) -> RecipeDecision:
    """``recipe=auto`` on ``train_size`` training images: the batch and warmup to use (see the module's
    rules). ``fixed``: the keys the user set (``data.batch_size``, ``scheduler.warmup_steps``), never
    changed. ``steps_per_epoch(train_size, batch)``: optimizer steps per epoch (the loader's count)."""
    epoch_bound = max_steps in (None, -1) or int(max_steps) < 1

    def steps(b: int) -> int:
        return int(max_epochs) * steps_per_epoch(train_size, b) if epoch_bound else int(max_steps)

    before = steps(batch_size)
    batch = batch_size
    if "data.batch_size" not in fixed:
        candidates = _batch_candidates(batch_size, max(1, int(multiple_of)))

        def fits(b: int) -> bool:
            return b * BATCH_FRACTION <= train_size and (not epoch_bound or steps(b) >= MIN_STEPS)

        batch = next((b for b in candidates if fits(b)), candidates[-1])
    total = steps(batch)
    warmup = warmup_steps
    if "scheduler.warmup_steps" not in fixed and warmup_steps > WARMUP_FRACTION * total:
        warmup = int(WARMUP_FRACTION * total)
    changed = {
        k: (old, new)
        for k, old, new in (
            ("data.batch_size", batch_size, batch),
            ("scheduler.warmup_steps", warmup_steps, warmup),
        )
        if old != new
    }
    if not changed:
        return RecipeDecision(batch, warmup, total)
    parts = [f"{k} {a} -> {b}" for k, (a, b) in changed.items()]
    kept = sorted(fixed)
    line = (
        f"recipe=auto: {train_size} training images make a short run ({before} optimizer steps as "
        f"configured): {', '.join(parts)}, {total} steps"
        + (f"; kept as given: {', '.join(kept)}" if kept else "")
        + (
            f"; still under {MIN_STEPS} steps: raise trainer.max_epochs"
            if epoch_bound and total < MIN_STEPS
            else ""
        )
        + "; recipe=paper runs the configured recipe as is"
    )
    return RecipeDecision(batch, warmup, total, changed, line)
