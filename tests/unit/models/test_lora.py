"""Gradient checkpointing and LoRA (peft) on the classifier: same loss, only adapters + head train,
small checkpoints that load, resume and export to a plain ViT with the same logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import quiet_trainer, tiny_classifier, uint8_loader
from vit_ft.errors import ConfigError
from vit_ft.models.classifier import ViTClassifier
from vit_ft.models.load_checkpoint import load_classifier
from vit_ft.weights import create_from_arch, load_weights, save_hf_pretrained, save_timm_safetensors

DEPTH, WIDTH, K, RANK = 2, 192, 3, 4


def loader(n: int = 16, seed: int = 0) -> DataLoader:
    return uint8_loader(n, K, seed)


def tiny(**kw) -> ViTClassifier:
    args = dict(
        num_classes=K,
        class_names=list("abc"),
        timm_kwargs={"depth": DEPTH, "patch_size": 8},
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
    )
    return tiny_classifier(**{**args, **kw})


LORA = {"rank": RANK, "alpha": 8, "dropout": 0.0, "targets": ["qkv", "mlp.fc1"]}


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    """Pretrained-like base weights in a local timm safetensors file (what model.weights names)."""
    torch.manual_seed(0)
    net = tiny().model
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_timm_safetensors(net, tmp_path_factory.mktemp("base") / "base.safetensors")


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def test_grad_checkpointing_same_loss_and_grads():
    x, y = next(iter(loader()))
    losses, grads = [], []
    for ckpt in (False, True):
        torch.manual_seed(1)
        m = tiny(grad_checkpointing=ckpt, lora=LORA).train()
        assert m.model.grad_checkpointing is ckpt
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in m.named_parameters() if p.requires_grad})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    assert grads[0].keys() == grads[1].keys() and any("lora_A" in n for n in grads[0])
    for n in grads[0]:
        assert grads[1][n] is not None, n  # adapters get gradients through checkpointed blocks
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_lora_trains_adapters_and_head_only():
    m = tiny(lora=LORA)
    trainable = {n: p.numel() for n, p in m.named_parameters() if p.requires_grad}
    per_block = RANK * (WIDTH + 3 * WIDTH) + RANK * (WIDTH + 4 * WIDTH)  # qkv: 192->576, fc1: 192->768
    assert sum(trainable.values()) == DEPTH * per_block + WIDTH * K + K
    assert all(".lora_" in n or n.startswith("model.head.") for n in trainable)
    assert sum(p.numel() for p in m.parameters()) > 50 * sum(trainable.values())


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"lora": {"rank": 8}, "freeze_backbone": True}, "model.lora.rank=8 with model.freeze_backbone=true"),
        (
            {"lora": {"rank": 8, "targets": ["q_proj"]}},
            "model.lora.targets has 'q_proj', not a ViT block layer",
        ),
        ({"lora": {"rank": -2}}, "model.lora.rank=-2 must be a positive integer"),
        ({"lora": {"rank": 4, "alpha": 0}}, "model.lora.alpha=0 must be a positive number"),
    ],
)
def test_lora_bad_settings_one_line(kw, needle):
    with pytest.raises(ConfigError) as e:
        tiny(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_lora_off_is_plain():
    from vit_ft.weights.lora import LoraSpec

    assert LoraSpec.from_config({"rank": None, "targets": ["nonsense"]}) is None
    m = tiny(lora={"rank": 0})
    assert m.lora_spec is None and not any(".lora_" in k for k in m.state_dict())


@pytest.fixture(scope="module")
def lora_run(base_file, tmp_path_factory):
    """2 steps of LoRA training from the base file, a checkpoint, then a resume to step 4."""
    d = tmp_path_factory.mktemp("lora_run")
    torch.manual_seed(0)
    model = tiny(weights=str(base_file), reset_head=True, lora=LORA, grad_checkpointing=True)
    trainer = quiet_trainer(max_steps=2, default_root_dir=str(d))
    trainer.fit(model, train_dataloaders=loader())
    ckpt = d / "lora.ckpt"
    trainer.save_checkpoint(ckpt)
    return model, ckpt, d


def test_lora_checkpoint_is_small_and_loads_with_the_base(lora_run, base_file):
    model, ckpt, _ = lora_run
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    keys = [k for k in raw["state_dict"] if k.startswith("model.")]
    assert keys and all(".lora_" in k or k.startswith("model.head.") for k in keys), keys
    assert raw["vit_ft"]["lora"]["base"]["source"] == str(base_file)
    x = next(iter(loader(seed=3)))[0]
    loaded = load_classifier(str(ckpt))
    assert loaded.lora_spec == model.lora_spec
    torch.testing.assert_close(logits(loaded, x), logits(model, x), rtol=0, atol=1e-6)
    # the trained head and adapters are not the base's: the checkpoint carried them
    assert not torch.equal(logits(loaded, x), logits(tiny(weights=str(base_file), reset_head=True), x))


def test_lora_checkpoint_resumes(lora_run, base_file):
    model, ckpt, d = lora_run
    torch.manual_seed(0)
    fresh = tiny(weights=str(base_file), reset_head=True, lora=LORA, grad_checkpointing=True)
    trainer = quiet_trainer(max_steps=4, default_root_dir=str(d))
    trainer.fit(fresh, train_dataloaders=loader(), ckpt_path=str(ckpt))
    assert trainer.global_step == 4
    # the optimizer state (adapters + head only) came back: Adam's step count went on from 2
    steps = {int(s["step"]) for s in trainer.optimizers[0].state.values()}
    assert steps == {4}


def test_lora_checkpoint_refuses_other_adapters(lora_run, base_file):
    _, ckpt, _ = lora_run
    other = tiny(weights=str(base_file), reset_head=True, lora={**LORA, "targets": ["qkv"]})
    assert other.strict_loading is False  # under FSDP Lightning loads before the hook: the hook checks
    with pytest.raises(
        ConfigError, match=r"LoRA adapters \(10 tensors\) do not fit this model's model.lora="
    ):
        other.on_load_checkpoint(torch.load(ckpt, weights_only=True, map_location="cpu"))


def test_lora_merges_into_a_plain_vit_for_export(lora_run, tmp_path):
    model, ckpt, _ = lora_run
    x = next(iter(loader(seed=4)))[0]
    want = logits(model, x)
    bb = load_weights(str(ckpt))  # what export.py and predict.py read: adapters merged
    assert not any(".lora_" in k or "base_layer" in k for k in bb.model.state_dict())
    plain = bb.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(model.normalize(x)), want, rtol=0, atol=1e-5)
    # timm safetensors and a transformers directory, reloaded: the same logits
    timm_file = save_timm_safetensors(
        plain, tmp_path / "m.safetensors", arch=bb.arch, preprocessing=bb.preprocessing
    )
    again = load_weights(str(timm_file)).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(model.normalize(x)), want, rtol=0, atol=1e-5)
    import transformers

    hf_dir = save_hf_pretrained(plain, bb.arch, bb.preprocessing, bb.class_names, tmp_path / "hf")
    hf = transformers.ViTForImageClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=model.normalize(x)).logits, want, rtol=0, atol=1e-5)


def test_lora_checkpoint_refuses_a_changed_base(lora_run, base_file, tmp_path):
    _, ckpt, _ = lora_run
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    changed = tiny(weights=str(base_file)).model
    with torch.no_grad():
        changed.blocks[0].attn.proj.weight.add_(0.1)
    other = save_timm_safetensors(changed, tmp_path / "other.safetensors")
    raw["hyper_parameters"]["weights"] = str(other)
    raw["hyper_parameters"]["backbone"] = "vit_tiny_patch16_224"
    raw["vit_ft"]["lora"]["base"]["source"] = str(other)
    torch.save(raw, tmp_path / "moved.ckpt")
    for load in (load_classifier, load_weights):
        with pytest.raises(ConfigError, match="are not those its LoRA adapters were trained on"):
            load(str(tmp_path / "moved.ckpt"))


def test_lora_on_random_init_keeps_the_base(tmp_path):
    """weights=null cannot rebuild the base: the checkpoint keeps it, and still merges on read."""
    model = tiny(lora={"rank": 2})
    trainer = quiet_trainer(max_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(model, train_dataloaders=loader())
    trainer.save_checkpoint(tmp_path / "r.ckpt")
    x = next(iter(loader(seed=5)))[0]
    torch.testing.assert_close(logits(load_classifier(str(tmp_path / "r.ckpt")), x), logits(model, x))
    plain = load_weights(str(tmp_path / "r.ckpt")).model.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(model.normalize(x)), logits(model, x), rtol=0, atol=1e-5)
    assert isinstance(create_from_arch(model.hparams["arch"]).blocks[0].attn.qkv, torch.nn.Linear)


def test_lora_with_a_linear_probe_is_one_line():
    from vit_ft.probe.linear import prepare_linear_probe
    from vit_ft.probe.settings import LinearProbeSettings

    with pytest.raises(
        ConfigError, match=r"^model.lora.rank=2 with a linear probe: .*model.weights=<its .ckpt>\)$"
    ):
        prepare_linear_probe(LinearProbeSettings(), tiny(lora={"rank": 2}), None, None)


def test_lora_with_ema_keeps_checkpoints_small_loads_the_ema_and_resumes(base_file, tmp_path):
    """model.lora + model.ema: the frozen base is left out of both the raw and the EMA entries; the
    checkpoint evaluates with the EMA's adapters and head (use_for=eval) and resumes."""
    ema = {"decay": 0.5, "warmup": False, "device": None, "use_for": "eval"}
    torch.manual_seed(0)
    model = tiny(weights=str(base_file), reset_head=True, lora=LORA, ema=ema)
    trainer = quiet_trainer(max_steps=2, default_root_dir=str(tmp_path))
    trainer.fit(model, train_dataloaders=loader())
    ckpt = tmp_path / "lora_ema.ckpt"
    trainer.save_checkpoint(ckpt)
    sd = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    ema_keys = [k for k in sd if k.startswith("model_ema.")]
    assert ema_keys and all(".lora_" in k or k.startswith("model_ema.head.") for k in ema_keys), ema_keys
    x = next(iter(loader(seed=3)))[0]
    with torch.no_grad():
        expected = model.ema.module.eval()(model.normalize(x))  # the EMA network's logits
    loaded = load_classifier(str(ckpt))
    torch.testing.assert_close(logits(loaded, x), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(expected, logits(model, x), atol=1e-4)  # not the raw weights
    torch.manual_seed(0)
    fresh = tiny(weights=str(base_file), reset_head=True, lora=LORA, ema=ema)
    trainer = quiet_trainer(max_steps=3, default_root_dir=str(tmp_path))
    trainer.fit(fresh, train_dataloaders=loader(), ckpt_path=str(ckpt))
    assert trainer.global_step == 3 and fresh.ema is not None and not fresh.ema.missing


def test_lora_checkpoint_entries_leave_out_only_a_base_that_weights_rebuild():
    from vit_ft.weights.lora import restore_lora_entries, save_lora_entries

    m = tiny(lora={"rank": 2})
    sd = {f"model.{k}": v for k, v in m.model.state_dict().items()}
    kept = dict(sd)
    save_lora_entries(kept, None)  # no LoRA
    save_lora_entries(kept, m.lora_info)  # random init: the base stays in the file
    assert kept.keys() == sd.keys() and m.lora_info["base_omitted"] is False
    save_lora_entries(kept, {**m.lora_info, "base_omitted": True})
    assert kept and all(".lora_" in k or k.startswith("model.head.") for k in kept)
    record = {"vit_ft": {"lora": {**m.lora_info, "base_omitted": True}}, "state_dict": dict(kept)}
    restore_lora_entries(record, m.model, m.lora_info)  # the base back from the model, checked
    assert record["state_dict"].keys() == sd.keys()
    without = {"state_dict": dict(kept)}
    restore_lora_entries(without, m.model, m.lora_info)  # no record: nothing to fill
    assert without["state_dict"].keys() == kept.keys()
