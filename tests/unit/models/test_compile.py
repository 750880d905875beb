"""model.compile: the compiled forward trains like the eager one, checkpoints keep the eager keys, and
a compiler failure or a graph break falls back to eager with one warning line."""

from __future__ import annotations

import logging

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.helpers import tiny_classifier
from tests.unit.models.test_classifier import fit
from vit_ft.errors import ConfigError
from vit_ft.models.compile import CompiledForward
from vit_ft.models.load_checkpoint import load_classifier


def no_c_compiler(gm, example_inputs):
    raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")


class Branchy(torch.nn.Module):
    """Data-dependent control flow: a graph break, which fullgraph compilation refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y if y.sum() > 0 else -y


@pytest.mark.parametrize(
    ("make", "backend", "needle"),
    [
        (lambda: torch.nn.Linear(4, 3), no_c_compiler, "No working C++ compiler"),
        (Branchy, "eager", "Unsupported: Data-dependent branching"),
    ],
)
def test_compile_failure_or_graph_break_falls_back_to_eager_with_one_warning(make, backend, needle, caplog):
    torch.manual_seed(0)
    module = make()
    x = torch.randn(5, 4)
    first = next(module.parameters())
    first.grad = torch.ones_like(first)  # a gradient being accumulated: the probe must keep it
    grads = [None if p.grad is None else p.grad.clone() for p in module.parameters()]
    rng = torch.get_rng_state()
    compiled = CompiledForward(module, backend=backend)
    with caplog.at_level(logging.WARNING, logger="vit_ft"):
        compiled.probe(x)
        out = compiled(x)
        compiled(x)
    assert not compiled.active
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running eager" in warnings[0].getMessage()
    assert needle in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert torch.equal(out, module(x))
    for p, g in zip(module.parameters(), grads):  # the probe leaves gradients and the RNG as they were
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert torch.equal(torch.get_rng_state(), rng)


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="model.compile_mode='fastest'"):
        CompiledForward(torch.nn.Linear(2, 2), mode="fastest")
    with pytest.raises(ConfigError, match="model.compile='yes'"):
        tiny_classifier(compile="yes")


class Losses(ModelCheckpoint):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def test_compiled_training_matches_eager_and_its_checkpoint_loads_in_eval(tmp_path):
    m = tiny_classifier(compile=True, compile_mode="default")
    m.setup("fit")
    assert m.compiled is not None and m.compiled.active and m.compiled.mode == "default"  # inductor, lazily
    runs = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        m = tiny_classifier(compile=name == "compiled")
        if name == "compiled":  # dynamo's graph capture with the eager backend: no C++ build in a unit test
            m.compiled = CompiledForward(m.model, backend="eager")
        cb = Losses(dirpath=tmp_path / name, filename="last")
        trainer = fit(m, steps=2, callbacks=[cb], enable_checkpointing=True, limit_val_batches=1)
        runs[name] = (cb.losses, float(trainer.callback_metrics["train/loss"]), m)
    assert runs["compiled"][2].compiled.active and runs["compiled"][2].compiled.probed
    assert runs["compiled"][0] == pytest.approx(runs["eager"][0], rel=1e-5)
    sd = torch.load(tmp_path / "compiled" / "last.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in sd) and "model.head.weight" in sd
    loaded = load_classifier(str(tmp_path / "compiled" / "last.ckpt"))  # as eval.py reads it: eager
    assert loaded.compiled is None
    assert torch.equal(loaded.model.head.weight, runs["compiled"][2].model.head.weight)
