"""model.ema: timm's ModelEmaV3 beside the network, val_ema/* metrics, checkpoints holding both weight
sets, exact resume, which weights each consumer reads (use_for), the linear probe's head EMA."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from tests.helpers import tiny_classifier, uint8_loader
from tests.unit.models.test_classifier import fit
from vit_ft.checkpoint_format import ema_chosen
from vit_ft.errors import ConfigError
from vit_ft.models.ema import EmaWeights, check_ema_config, restore_ema
from vit_ft.models.load_checkpoint import load_classifier
from vit_ft.probe.linear import LinearProbe
from vit_ft.tasks.plan import follow_ema
from vit_ft.weights import load_weights

KEY = "blocks.0.attn.qkv.weight"


def ema_cfg(**kw):
    return {"decay": 0.5, "warmup": False, "device": None, "use_for": "eval", **kw}


class Weights(L.Callback):
    """The network's weights after each optimizer step."""

    def __init__(self) -> None:
        self.after: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(pl_module.model.state_dict()[KEY].clone())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """4 steps (2 epochs of 2, a validation after each) with decay 0.5; a checkpoint after steps 2 and 4."""
    d = tmp_path_factory.mktemp("ema")
    torch.manual_seed(0)
    m = tiny_classifier(ema=ema_cfg())
    w = Weights()
    ck = ModelCheckpoint(
        dirpath=d,
        filename="s{step}",
        every_n_train_steps=2,
        save_top_k=-1,
        auto_insert_metric_name=False,
    )
    trainer = fit(m, steps=4, callbacks=[w, ck], enable_checkpointing=True, limit_train_batches=2)
    return m, trainer, w, d


def test_ema_is_timms_update_after_each_step_and_validation_reports_both(run):
    m, trainer, w, _ = run
    expected = w.after[0]  # timm: the first update copies (decay 0 at step 1)
    for after in w.after[1:]:
        expected = 0.5 * expected + 0.5 * after
    assert torch.allclose(m.ema.state_dict()[KEY], expected, atol=1e-6)
    assert not torch.equal(m.ema.state_dict()[KEY], m.model.state_dict()[KEY])
    metrics = trainer.callback_metrics
    for k in ("val/acc1", "val/loss", "val_ema/acc1", "val_ema/loss", "val_ema/acc5"):
        assert k in metrics, k
    assert float(metrics["val_ema/loss"]) != float(metrics["val/loss"])
    # Not a registered module: no double parameters in the summary, no DDP/FSDP wrapping, no device moves.
    assert not any(n.startswith("ema") for n, _ in m.named_parameters())


def test_checkpoint_holds_raw_and_ema_and_eval_predict_export_pick_by_use_for(run, tmp_path):
    m, _, _, d = run
    path = d / "s4.ckpt"
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["state_dict"]
    assert torch.equal(sd[f"model.{KEY}"], m.model.state_dict()[KEY])
    assert torch.equal(sd[f"model_ema.{KEY}"], m.ema.state_dict()[KEY])
    raw, ema = m.model.state_dict()[KEY], m.ema.state_dict()[KEY]
    for use_for, evaluated, exported in (("eval", ema, ema), ("export", raw, ema), ("none", raw, raw)):
        ckpt["hyper_parameters"]["ema"]["use_for"] = use_for
        p = tmp_path / f"{use_for}.ckpt"
        torch.save(ckpt, p)
        assert torch.equal(load_classifier(str(p)).model.state_dict()[KEY], evaluated), use_for  # eval.py
        assert torch.equal(load_weights(str(p)).model.state_dict()[KEY], evaluated), use_for  # predict.py
        got = load_weights(str(p), purpose="export").model.state_dict()[KEY]  # export.py
        assert torch.equal(got, exported), use_for
    loaded = load_classifier(str(tmp_path / "none.ckpt"))  # raw weights, EMA still evaluated beside them
    assert loaded.ema is not None and torch.equal(loaded.ema.state_dict()[KEY], ema)


def test_resume_is_exact(run):
    m, _, _, d = run
    torch.manual_seed(0)
    resumed = tiny_classifier(ema=ema_cfg())
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, limit_train_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(
        resumed,
        train_dataloaders=uint8_loader(),
        val_dataloaders=uint8_loader(seed=1),
        ckpt_path=d / "s2.ckpt",
    )
    assert torch.equal(resumed.model.state_dict()[KEY], m.model.state_dict()[KEY])
    assert torch.equal(resumed.ema.state_dict()[KEY], m.ema.state_dict()[KEY])


def test_warmup_and_cpu_device():
    torch.manual_seed(0)
    m = tiny_classifier(ema=ema_cfg(decay=0.9999, warmup=True, device="cpu"))
    assert m.ema.ema.get_decay(2) == pytest.approx(1 - 2 ** (-2 / 3))  # timm's warmup, not 0.9999
    assert m.ema.device == torch.device("cpu") and m.ema.current_device.type == "cpu"
    assert not m.ema.ema.foreach or m.ema.current_device == next(m.model.parameters()).device


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"decay": 1.5}, "model.ema.decay=1.5"),
        ({"decay": True}, "model.ema.decay=True"),
        ({"decay": 0.9, "use_for": "train"}, "model.ema.use_for='train'"),
        ({"decay": 0.9, "warmup": "yes"}, "model.ema.warmup='yes'"),
        ({"decay": 0.9, "device": "gpu0"}, "model.ema.device='gpu0'"),
    ],
)
def test_bad_settings_one_line(cfg, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        check_ema_config(cfg)
    assert check_ema_config({"decay": None}) is None and not ema_chosen({"decay": None}, "export")


def test_best_checkpoint_and_optimized_metric_follow_the_ema_when_used_for_eval():
    cfg = OmegaConf.create(
        {
            "optimized_metric": "val/acc1",
            "model": {"ema": ema_cfg()},
            "callbacks": {"best": {"monitor": "val/acc1"}, "last": {"monitor": None}},
        }
    )
    follow_ema(cfg)
    assert cfg.optimized_metric == "val_ema/acc1" and cfg.callbacks.best.monitor == "val_ema/acc1"
    assert cfg.callbacks.last.monitor is None
    cfg.model.ema.use_for = "export"
    cfg.optimized_metric = "val/acc1"
    follow_ema(cfg)
    assert cfg.optimized_metric == "val/acc1"
    cfg.trainer = {"strategy": "fsdp"}
    with pytest.raises(ConfigError, match="does not work with a sharded model"):
        follow_ema(cfg)


def test_linear_probe_keeps_an_ema_of_its_head_and_its_checkpoint_loads_as_ema(tmp_path):
    torch.manual_seed(0)
    classifier = tiny_classifier(ema=ema_cfg(), freeze_backbone=True, reset_head=True)
    probe = LinearProbe(classifier, batchnorm=True, in_loop=False)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(32, 192, generator=g)
    labels = torch.randint(0, 5, (32,), generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(feats, labels), batch_size=8)
    ck = ModelCheckpoint(dirpath=tmp_path, filename="probe")
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, logger=False, callbacks=[ck], enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(probe, train_dataloaders=data, val_dataloaders=data)
    assert "val_ema/acc1" in trainer.callback_metrics
    probe.eval()
    with torch.no_grad():
        expected = probe.ema.module(probe.bn(feats))  # the EMA head after the BatchNorm
        assert not torch.allclose(expected, probe(feats), atol=1e-4)
    loaded = load_classifier(str(tmp_path / "probe.ckpt"))  # as eval.py reads it: EMA head, BN folded
    got = loaded.model.get_classifier()(feats)
    assert torch.allclose(got, expected, atol=1e-4)
    # resuming the probe restores the unfolded EMA head exactly
    again = LinearProbe(tiny_classifier(ema=ema_cfg(), freeze_backbone=True, reset_head=True), batchnorm=True)
    again.on_load_checkpoint(torch.load(tmp_path / "probe.ckpt", weights_only=True))
    assert torch.equal(again.ema.state_dict()["weight"], probe.ema.state_dict()["weight"])


def test_the_ema_owns_its_checkpoint_entries(caplog):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = EmaWeights(net, decay=0.5)
    sd: dict = {}
    ema.save_entries(sd, under="head.")
    assert set(sd) == {"model_ema.head.weight", "model_ema.head.bias"}
    # LoRA with the base left out of the checkpoint: the EMA leaves out the same (frozen) weights
    lora_sd: dict = {}
    weights = {
        "blocks.0.attn.qkv.base_layer.weight": torch.zeros(1),
        "blocks.0.attn.qkv.lora_A.default.weight": torch.ones(1),
    }
    ema.save_entries(lora_sd, weights=weights, lora={"base_omitted": True})
    assert list(lora_sd) == ["model_ema.blocks.0.attn.qkv.lora_A.default.weight"]
    ema.save_entries(lora_sd, weights=weights, lora={"base_omitted": False})
    assert len(lora_sd) == 2

    ckpt = {
        "state_dict": {
            "model.w": torch.zeros(1),
            "model_ema.weight": torch.ones(2, 3),
            "model_ema.bias": torch.ones(2),
        }
    }
    restore_ema(None, ckpt)  # a module without EMA drops the entries (strict loading would refuse them)
    assert list(ckpt["state_dict"]) == ["model.w"]
    restore_ema(ema, {"state_dict": {"model_ema.weight": torch.ones(2, 3), "model_ema.bias": torch.ones(2)}})
    assert torch.equal(ema.module.weight, torch.ones(2, 3)) and not ema.missing
    with caplog.at_level("WARNING"):
        restore_ema(ema, {"state_dict": {"model.w": torch.zeros(1)}})
    assert ema.missing and "holds no EMA weights" in caplog.text
    ema.start(torch.device("cpu"), net)  # a resumed fit restarts the average from the network
    assert not ema.missing and torch.equal(ema.module.weight, net.weight)
    with torch.no_grad(), ema.swapped_into(net):
        net.weight.zero_()  # swapped: the raw weights come back after the block
    assert torch.equal(net.weight, ema.module.weight)
