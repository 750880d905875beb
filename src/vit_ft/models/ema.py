"""Exponential moving average of the weights (``model.ema.*``), with timm's ``ModelEmaV3``.

The average is kept beside the trained network, out of the LightningModule's registered modules (so
Lightning's moves, dtype casts, DDP/FSDP wrapping and model summary leave it alone), and travels in
checkpoints as ``state_dict['model_ema.<timm key>']`` next to the raw ``model.<timm key>`` weights.
Each rank updates its copy after every optimizer step from the (identical) synchronised weights, so
DDP ranks stay equal without communication; the warmup counts optimizer steps, which the checkpoint
restores, so a resumed run goes on exactly.

:class:`EmaWeights` owns its part of the module's life: the device it lives on (:meth:`~EmaWeights.start`,
:meth:`~EmaWeights.visit`), its checkpoint entries (:meth:`~EmaWeights.save_entries`, :func:`restore_ema`)
and swapping into the network (:meth:`~EmaWeights.swapped_into`); the module only calls it.

``use_for`` says which weights are *the* model's: ``eval`` (the EMA for validation-based checkpoint
choice, ``eval.py``, ``predict.py``, ``export.py``), ``export`` (the raw weights everywhere, except
that ``export.py`` writes the EMA) or ``none`` (EMA only reported, as ``val_ema/*``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from vit_ft.checkpoint_format import EMA_PREFIX, EMA_USES, add_prefix
from vit_ft.errors import ConfigError
from vit_ft.weights.lora import drop_base

__all__ = ["EMA_PREFIX", "EmaWeights", "build_ema", "check_ema_config", "restore_ema"]

log = logging.getLogger(__name__)


def check_ema_config(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """``model.ema`` checked: ``None`` when EMA is off (``decay: null``), else the complete settings."""
    cfg = dict(cfg or {})
    decay = cfg.get("decay")
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < float(decay) < 1.0:
        raise ConfigError(
            f"model.ema.decay={decay!r} must be a number in (0, 1), e.g. 0.9999, or null (no EMA)"
        )
    warmup = cfg.get("warmup", False)
    if not isinstance(warmup, bool):
        raise ConfigError(f"model.ema.warmup={warmup!r} must be true or false")
    use_for = cfg.get("use_for", "eval")
    if use_for not in EMA_USES:
        raise ConfigError(f"model.ema.use_for={use_for!r} must be one of {', '.join(EMA_USES)}")
    device = cfg.get("device")
    if device is not None:
        try:
            torch.device(str(device))
        except (RuntimeError, ValueError):
            raise ConfigError(
                f"model.ema.device={device!r} is not a device; use null (the model's) or cpu"
            ) from None
    return {"decay": float(decay), "warmup": warmup, "device": device, "use_for": use_for}


class EmaWeights:
    """timm's ``ModelEmaV3`` of ``module`` (a plain object, not an ``nn.Module``: see the module doc).

    ``device=None`` follows the trained network (:meth:`follow`); ``device='cpu'`` keeps the average
    in host memory (it visits the network's device only while validating: :meth:`visit`)."""

    def __init__(
        self,
        module: nn.Module,
        decay: float,
        warmup: bool = False,
        device: str | None = None,
        use_for: str = "eval",
    ) -> None:
        self.decay, self.warmup, self.use_for = float(decay), bool(warmup), use_for
        self.device = None if device is None else torch.device(str(device))
        self.missing = False  # restored from a checkpoint without EMA weights
        self.ema = self._wrap(module, self.device)

    def _wrap(self, module: nn.Module, device: torch.device | None) -> ModelEmaV3:
        ema = ModelEmaV3(module, decay=self.decay, use_warmup=self.warmup, device=device, dtype=torch.float32)
        ema.module.requires_grad_(False)
        return ema

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    @property
    def current_device(self) -> torch.device:
        return next(self.module.parameters()).device

    def follow(self, device: torch.device) -> None:
        """Keep the average on ``device`` (the network's), unless it was pinned elsewhere."""
        if self.device is None and self.current_device != device:
            # A fresh ModelEmaV3 on the device: its stochastic-rounding generator lives on it too.
            self.ema = self._wrap(self.module.to(device), None)

    def visit(self, device: torch.device | None) -> None:
        """Move the average to ``device`` for a validation, or back to its own device with ``None``."""
        target = self.device if device is None else device
        if target is not None and self.current_device != target:
            self.module.to(target)

    def start(self, device: torch.device, target: nn.Module) -> None:
        """At the start of a fit: follow the network to ``device``; a run resumed from a checkpoint
        without EMA weights restarts the average from ``target``'s weights."""
        self.follow(device)
        if self.missing:
            self.load_state_dict(target.state_dict())
            self.missing = False

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """One update after optimizer step ``step`` (1-based: timm's warmup counts from it)."""
        self.ema.update(module, step=int(step))

    def logits(self, x: torch.Tensor, fn: Any = None) -> torch.Tensor:
        """``fn(average, x)`` (default ``average(x)``) on the average's device and dtype."""
        p = next(self.module.parameters())
        x = x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)
        with torch.no_grad():
            return self.module(x) if fn is None else fn(self.module, x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.module.state_dict())

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd)

    def save_entries(
        self,
        state_dict: dict[str, Any],
        weights: dict[str, torch.Tensor] | None = None,
        under: str = "",
        lora: dict[str, Any] | None = None,
    ) -> None:
        """Add the average (or ``weights`` standing for it) to a checkpoint's ``state_dict`` as
        ``model_ema.<under><key>``. ``lora``: the run's LoRA record; when the checkpoint omits the
        frozen base, the average omits it too (the same weights, rebuilt at load)."""
        sd = self.state_dict() if weights is None else dict(weights)
        if lora is not None and lora["base_omitted"]:
            drop_base(sd, prefix="")
        state_dict.update(add_prefix(sd, EMA_PREFIX + under))

    @contextmanager
    def swapped_into(self, target: nn.Module) -> Iterator[None]:
        """Inside the block ``target`` holds the average's weights; its own are back after it."""
        raw = {k: v.detach().clone() for k, v in target.state_dict().items()}
        target.load_state_dict(self.state_dict())
        try:
            yield
        finally:
            target.load_state_dict(raw)


def build_ema(module: nn.Module, cfg: dict[str, Any] | None) -> EmaWeights | None:
    """The EMA of ``module`` that ``model.ema`` asks for, or ``None``."""
    settings = check_ema_config(cfg)
    return None if settings is None else EmaWeights(module, **settings)


def pop_ema_state(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Remove the ``model_ema.*`` entries from a checkpoint's ``state_dict``; return them (prefix dropped)."""
    keys = [k for k in state_dict if k.startswith(EMA_PREFIX)]
    return {k[len(EMA_PREFIX) :]: state_dict.pop(k) for k in keys}


def restore_ema(
    ema: EmaWeights | None,
    checkpoint: dict[str, Any],
    full_state: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Take the ``model_ema.*`` entries out of a checkpoint's ``state_dict`` (a module without EMA
    drops them) and load them into ``ema``; ``full_state`` turns them (prefix dropped) into the
    average's whole state dict. Without entries the EMA is marked missing (:meth:`EmaWeights.start`)."""
    ema_state = pop_ema_state(checkpoint.get("state_dict") or {})
    if ema is None:
        return
    if ema_state:
        ema.load_state_dict(full_state(ema_state) if full_state is not None else ema_state)
    else:
        log.warning("the checkpoint holds no EMA weights; the EMA restarts from its weights")
        ema.missing = True
