"""``model.compile``: the network's forward through ``torch.compile``, never at the cost of a run.

The compiled callable is kept beside the network (not registered as a submodule), so state_dict keys,
checkpoints and everything that reads them are those of the eager network (no ``_orig_mod.``).
Compilation is lazy in PyTorch: a missing C compiler, an unsupported backend or a graph break
(compiled with ``fullgraph=True``, so a break is an error rather than a silent partial graph)
surfaces at the first call, in the forward or, for training, in the first backward. So
:meth:`CompiledForward.probe` compiles both on the first training batch, leaving gradients and the
random state as they were; any failure there or in a later compiled call switches to the eager
network for the rest of the run, with one warning line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vit_ft.errors import ConfigError

log = logging.getLogger("vit_ft")


class CompiledForward:
    """``module(x)`` through ``torch.compile(module, mode=mode, fullgraph=True)``, eager after a failure.

    ``backend`` is torch.compile's (default inductor); ``mode`` is for inductor only."""

    def __init__(
        self, module: nn.Module, mode: str = "default", backend: str | Callable = "inductor"
    ) -> None:
        self.module = module
        self.mode = str(mode or "default")
        self.probed = False
        self.compile_seconds: float | None = None
        self.failure: str | None = None
        kwargs: dict[str, Any] = {"fullgraph": True, "backend": backend}
        if backend == "inductor":
            kwargs["mode"] = self.mode
        try:
            self.fn: Callable | None = torch.compile(module, **kwargs)
        except RuntimeError as e:  # torch checks the mode name here
            raise ConfigError(f"model.compile_mode={mode!r} is not usable: {e}") from None

    @property
    def active(self) -> bool:
        return self.fn is not None

    def fall_back(self, error: BaseException) -> None:
        root = error  # dynamo wraps the compiler's error (BackendCompilerFailed...): name the cause
        while (
            inner := getattr(root, "inner_exception", None) or root.__cause__
        ) is not None and inner is not root:
            root = inner
        first = (str(root).strip().splitlines() or [""])[0][:300]
        self.failure = f"{type(root).__name__}: {first}"
        log.warning("model.compile: compilation failed, running eager instead (%s)", self.failure)
        self.fn = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn is not None:
            try:
                return self.fn(x)
            except Exception as e:  # noqa: BLE001 - compile errors surface here; eager is always right
                self.fall_back(e)
        return self.module(x)

    def probe(self, x: torch.Tensor) -> None:
        """Compile the forward and backward for a batch like ``x``, once; gradients and RNG untouched."""
        if self.probed or self.fn is None:
            return
        self.probed = True
        params = [p for p in self.module.parameters() if p.requires_grad]
        saved = [p.grad for p in params]
        for p in params:
            p.grad = None
        devices = [x.device] if x.device.type not in ("cpu", "meta") else []
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=devices, device_type=x.device.type):
                out = self.fn(x)
                if params and torch.is_grad_enabled():
                    out.float().sum().backward()
            self.compile_seconds = time.perf_counter() - start
            log.info(
                "model.compile: forward and backward compiled in %.1fs (mode %s)",
                self.compile_seconds,
                self.mode,
            )
        except Exception as e:  # noqa: BLE001 - a compiler failure must never stop training
            self.fall_back(e)
        finally:
            for p, g in zip(params, saved):
                p.grad = g
