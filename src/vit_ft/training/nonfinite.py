"""The non-finite guard: a NaN/inf training loss or gradient stops the run (or skips the optimizer
step) before the weights change, and non-finite weights are never checkpointed.

:class:`NonFiniteLossGuard` is the callback (``trainer.on_nonfinite``, ``trainer.max_nonfinite_skips``;
the run plan builds it), :func:`nonfinite_summary` its ``nonfinite`` entry of ``metrics.json``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from vit_ft.compat import lightning_logs_now
from vit_ft.errors import ConfigError, RunFault

log = logging.getLogger("vit_ft")

NONFINITE_ACTIONS = ("stop", "skip")


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of ``tensors`` (foreach, a device tensor: nothing is read), the norm that
    ``clip_grad_norm_`` computes."""
    return torch.nn.utils.get_total_norm(tensors, 2.0, foreach=True)


def skips_on_device(optimizer: Any) -> bool:
    """Whether ``optimizer`` skips a step by a device flag: torch's fused optimizers take ``found_inf``
    (the update, the momentum or moments and the step count are left as they were when it is 1)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups
    )


class _Flags:
    """The guard's device-side record between two reads (every value a 0-dim tensor on the device)."""

    def __init__(self, device: torch.device, step: int, consecutive: int) -> None:
        def z(v: float = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.tensor(v, dtype=dtype, device=device)

        self.step = z(step, torch.int64)  # optimizer steps taken (1-based id of the next one after +1)
        self.halt = z(0, torch.bool)  # stop reached: every later step is skipped until the read raises
        self.halt_step, self.halt_value, self.halt_loss = z(0, torch.int64), z(), z(0, torch.bool)
        self.consecutive = z(consecutive, torch.int64)
        self.skipped = z(0, torch.int64)  # bad steps since the last read
        self.first_step, self.first_value, self.first_loss = z(0, torch.int64), z(), z(0, torch.bool)
        self.loss_bad, self.loss_value = z(0, torch.bool), z()  # this step's micro-batches

    def read(self) -> dict[str, float]:
        names = ("step", "halt", "halt_step", "halt_value", "halt_loss", "consecutive", "skipped")
        names += ("first_step", "first_value", "first_loss")
        values = torch.stack([getattr(self, n).to(torch.float64) for n in names]).tolist()  # the one sync
        return dict(zip(names, values))


class NonFiniteLossGuard(Callback):
    """A NaN/inf training loss or gradient norm never reaches the weights.

    Checked after the backward pass, before the optimizer step; the guard also clips the gradients
    (``trainer.gradient_clip_val``/``gradient_clip_algorithm``, taken over from Lightning) with the
    global norm it computed, so the norm is computed once per step:

    * ``action="stop"`` (``trainer.on_nonfinite=stop``, the default): raise :class:`RunFault` with one
      line (the step, which value); that step and every later one never reach the weights, the
      checkpoints already written stay;
    * ``action="skip"``: drop that optimizer step (the optimizer leaves the weights and its state, SGD
      momentum or AdamW moments and step count, untouched), count it (``skipped``, in ``metrics.json``),
      and stop as above after ``max_skips`` skipped steps in a row.

    **Sync-free.** With torch's fused optimizers (SGD, Adam, AdamW: vit-ft builds them fused where it
    can) the decision stays on the device: the loss and the norm are checked there, the step is skipped
    by the fused kernel's ``found_inf`` flag (exact: no copy of the weights or the optimizer state),
    and the flags are read only at Lightning's logging steps (``trainer.log_every_n_steps``), at the
    end of an epoch, before a validation or any checkpoint, and at the end of the fit: the run then
    stops with the same line naming the first bad step. Any other optimizer, or fp16 with a gradient
    scaler, is decided on the host every step (one read per step), as before.

    Under fp16 with a gradient scaler, an inf gradient is the scaler's business (it skips the step and
    lowers the scale); only a non-finite loss counts. Under DDP the gradients are already reduced, so
    a NaN on one rank is a NaN on every rank and all of them decide alike (no extra collective).

    Every checkpoint save is checked as well: weights that are not finite are never written (the
    save stops the run instead). ``every_n_steps`` > 1 checks only every n-th step in stop mode (host).
    """

    FREE_ON_RESUME = ("",)  # a config entry of its own (older sweep configs): how often it checks

    def __init__(self, every_n_steps: int = 1, action: str = "stop", max_skips: int = 10) -> None:
        if action not in NONFINITE_ACTIONS:
            raise ConfigError(f"trainer.on_nonfinite={action!r} must be one of {list(NONFINITE_ACTIONS)}")
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 1:
            raise ConfigError(f"trainer.max_nonfinite_skips={max_skips!r} must be a positive integer")
        self.every_n_steps = max(1, int(every_n_steps))
        self.action = action
        self.max_skips = max_skips
        self.skipped = 0  # optimizer steps skipped in the whole run (travels in checkpoints)
        self.consecutive = 0
        self.bad_loss: float | None = None  # a non-finite loss of a micro-batch of this step (host mode)
        self.flags: _Flags | None = None  # device mode: set in on_train_start
        self.clip: tuple[float, str] | None = None  # (value, algorithm) taken over from Lightning
        self.sharded = False  # FSDP: the norm comes from the root module, over every rank's shards
        self._lightning_clip: Any = None
        self._epochs: list[tuple[int, int]] = []  # (first optimizer step, epoch): names a step's epoch
        self._halt: tuple[str, int] | None = None  # (what, step) read from the device: the run stops
        self._rank_zero = True

    def state_dict(self) -> dict[str, Any]:
        self.read_flags()  # Lightning asks before on_save_checkpoint (which raises on a stop)
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    def checking(self, trainer: Any) -> bool:
        return self.action == "skip" or trainer.global_step % self.every_n_steps == 0

    # -- the fit ------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._take_over_clipping(trainer, pl_module)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.sharded = "fsdp" in type(trainer.strategy).__name__.lower()  # each rank holds its shard only
        device_side = (
            scaler is None and not self.sharded and all(map(skips_on_device, trainer.optimizers or [None]))
        )
        self.flags, self._halt, self._rank_zero = None, None, trainer.is_global_zero
        if device_side:
            for opt in trainer.optimizers:
                prepare_first_step(opt)
            self.flags = _Flags(pl_module.device, trainer.global_step, self.consecutive)

    def _take_over_clipping(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch import LightningModule

        clip = trainer.gradient_clip_val
        own = type(pl_module).configure_gradient_clipping is LightningModule.configure_gradient_clipping
        if not clip or not own or not pl_module.automatic_optimization:
            return
        algorithm = getattr(trainer.gradient_clip_algorithm, "value", trainer.gradient_clip_algorithm)
        self.clip = (float(clip), str(algorithm or "norm"))  # Lightning's default (None) is by norm
        self._lightning_clip, trainer.gradient_clip_val = clip, None  # back in teardown

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.clip is not None:
            trainer.gradient_clip_val, self.clip = self._lightning_clip, None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._epochs.append((trainer.global_step + 1, trainer.current_epoch))

    def epoch_of(self, step: int, default: int) -> int:
        return next((e for first, e in reversed(self._epochs) if first <= step), default)

    # -- each step ----------------------------------------------------------------------------------
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        f = self.flags
        if f is not None:
            value = loss.detach().float().sum()
            new = ~torch.isfinite(value) & ~f.loss_bad
            f.loss_value = torch.where(new, value, f.loss_value)
            f.loss_bad = f.loss_bad | new
        elif self.bad_loss is None and self.checking(trainer):
            value = loss.detach().float()
            if not bool(torch.isfinite(value).all()):
                self.bad_loss = float(value.sum())

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad.detach() for p in params]
        norm = self._sharded_norm(trainer) if self.sharded else None  # clipped by it already
        by_root = norm is not None
        if self.flags is not None:
            norm = total_norm(grads) if grads else None
            self._decide_on_device(optimizer, norm)
        else:
            norm = self._decide_on_host(trainer, optimizer, params, norm)
        clipped = by_root and self.clip is not None and self.clip[1] == "norm"
        if self.clip is not None and grads and params[0].grad is not None and not clipped:  # None: skipped
            value, algorithm = self.clip
            if algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, value, foreach=True)
            else:
                norm = total_norm(grads) if norm is None else norm
                torch.nn.utils.clip_grads_with_norm_(params, value, norm, foreach=True)

    def _sharded_norm(self, trainer: Any) -> torch.Tensor | None:
        """FSDP: the gradient norm over every rank's shards (a collective: every rank calls it), clipping
        by it when clipping is by norm; a rank's own ``total_norm`` would see its shard only (and
        Lightning's FSDP precision refuses clipping by norm). None: the root offers no ``clip_grad_norm_``."""
        clip = getattr(getattr(trainer.strategy, "model", None), "clip_grad_norm_", None)
        if not callable(clip):
            return None
        by_norm = self.clip is not None and self.clip[1] == "norm"
        return clip(self.clip[0] if by_norm else math.inf)

    def _decide_on_device(self, optimizer: Any, norm: torch.Tensor | None) -> None:
        f = self.flags
        f.step = f.step + 1
        loss_bad, f.loss_bad = f.loss_bad, torch.zeros_like(f.loss_bad)
        norm_bad = ~torch.isfinite(norm) if norm is not None else torch.zeros_like(loss_bad)
        bad = (loss_bad | norm_bad) & ~f.halt
        value = torch.where(loss_bad, f.loss_value, norm if norm is not None else f.loss_value)
        first = bad & (f.skipped == 0)
        f.first_step = torch.where(first, f.step, f.first_step)
        f.first_value = torch.where(first, value, f.first_value)
        f.first_loss = torch.where(first, loss_bad, f.first_loss)
        f.skipped = f.skipped + bad.long()
        f.consecutive = torch.where(bad, f.consecutive + 1, torch.where(f.halt, f.consecutive, 0))
        halt = bad & (f.consecutive >= self.max_skips if self.action == "skip" else True) & ~f.halt
        f.halt_step = torch.where(halt, f.step, f.halt_step)
        f.halt_value = torch.where(halt, value, f.halt_value)
        f.halt_loss = torch.where(halt, loss_bad, f.halt_loss)
        f.halt = f.halt | halt
        skip = (bad | f.halt).float()  # a halted run takes no step until the read raises
        optimizer.found_inf = skip.to(next(p for g in optimizer.param_groups for p in g["params"]).device)

    def _decide_on_host(
        self, trainer: Any, optimizer: Any, params: list, norm: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """``norm``: the gradient norm when already known (FSDP's, over all shards)."""
        bad_loss, self.bad_loss = self.bad_loss, None
        if not self.checking(trainer):
            return norm
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if norm is None and params:
            norm = total_norm([p.grad.detach() for p in params])
        grad_norm = None if scaler is not None or norm is None else float(norm)
        grad_norm = None if grad_norm is None or math.isfinite(grad_norm) else grad_norm
        if bad_loss is None and grad_norm is None:
            self.consecutive = 0
            return norm
        step = trainer.global_step + 1  # the optimizer step being taken (1-based, as in the logs)
        what = f"training loss {bad_loss}" if bad_loss is not None else f"gradient norm {grad_norm}"
        if self.action == "stop":
            raise RunFault(self.stop_line(what, step, trainer.current_epoch))
        self.skipped += 1
        self.consecutive += 1
        for p in params:
            p.grad = None  # the optimizer leaves parameters without a gradient (and their state) alone
        if trainer.is_global_zero:
            log.warning(
                "non-finite %s at optimizer step %d: step skipped (%d in a row)", what, step, self.consecutive
            )
        if self.consecutive >= self.max_skips:
            raise RunFault(self.skips_line(what, step))
        return None

    def stop_line(self, what: str, step: int, epoch: int) -> str:
        return (
            f"non-finite {what} at optimizer step {step} (epoch {epoch}): stopped "
            "before that step, the checkpoints already written are kept - lower optimizer.lr, "
            "check the data, or set trainer.on_nonfinite=skip"
        )

    def skips_line(self, what: str, step: int) -> str:
        return (
            f"non-finite {what} at optimizer step {step}: {self.consecutive} optimizer steps in a row "
            f"skipped (trainer.max_nonfinite_skips={self.max_skips}; {self.skipped} in the run); the "
            "checkpoints already written are kept - lower optimizer.lr or check the data"
        )

    # -- reading the device flags: at logging steps, epoch ends, validations, checkpoints, the end -----
    def read_flags(self) -> None:
        """Read the device flags (one sync): count and log the skipped steps, note a stop to raise."""
        f = self.flags
        if f is None:
            return
        v = f.read()
        f.skipped = torch.zeros_like(f.skipped)
        self.consecutive = int(v["consecutive"])
        n = int(v["skipped"]) if self.action == "skip" else 0  # a stop skips nothing: it ends the run
        self.skipped += n
        if n and self.action == "skip" and self._rank_zero:
            what = "training loss" if v["first_loss"] else "gradient norm"
            log.warning(
                "non-finite %s %s at optimizer step %d: %d optimizer step(s) skipped since the last check "
                "(%d in a row)",
                what,
                v["first_value"],
                int(v["first_step"]),
                n,
                self.consecutive,
            )
        if v["halt"] and self._halt is None:
            what = f"{'training loss' if v['halt_loss'] else 'gradient norm'} {v['halt_value']}"
            self._halt = (what, int(v["halt_step"]))

    def settle(self, trainer: Any) -> None:
        """Read the device flags; raise when the run must stop (the first bad step named)."""
        self.read_flags()
        if self._halt is None:
            return
        what, step = self._halt
        if self.action == "stop":
            raise RunFault(self.stop_line(what, step, self.epoch_of(step, trainer.current_epoch)))
        raise RunFault(self.skips_line(what, step))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.flags is not None and lightning_logs_now(trainer):
            self.settle(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.settle(trainer)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.settle(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.settle(trainer)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self.settle(trainer)
        floats = [(k, t) for k, t in (checkpoint.get("state_dict") or {}).items() if torch.is_tensor(t)]
        finite: dict[torch.device, list[torch.Tensor]] = {}
        for _, t in floats:
            if t.is_floating_point():
                finite.setdefault(t.device, []).append(torch.isfinite(t).all())
        if all(bool(torch.stack(v).all()) for v in finite.values()):  # one read per device
            return
        for name, t in floats:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise RunFault(
                    f"the weights are not finite ({name} holds NaN/inf) at optimizer step "
                    f"{trainer.global_step}: no checkpoint written, the earlier ones are as they were - "
                    "lower optimizer.lr or check the data"
                )


def prepare_first_step(optimizer: Any) -> None:
    """Fused SGD fills a missing momentum buffer with ``empty_like`` before its first step; a first step
    skipped by ``found_inf`` would leave garbage there. With ``dampening=0`` a zero buffer gives the
    same first step exactly (``0 * momentum + g == g``), so missing buffers start at zero."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for g in optimizer.param_groups:
        if not g.get("momentum") or g.get("dampening"):
            continue
        for p in g["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def nonfinite_summary(trainer: Any) -> dict[str, Any] | None:
    """``{"on_nonfinite", "skipped_steps"}`` of the run's :class:`NonFiniteLossGuard` (None without one)."""
    guard = next((c for c in trainer.callbacks if isinstance(c, NonFiniteLossGuard)), None)
    if guard is None:
        return None
    return {"on_nonfinite": guard.action, "skipped_steps": guard.skipped}
