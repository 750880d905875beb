"""One list of head names per family: LoRA, freezing, head replacement and export read the same
names, so a distilled DeiT's second head (``head_dist``) is trained and kept like ``head``."""

from __future__ import annotations

import pytest
import timm
import torch

from vit_ft.checkpoint_format import MODEL_PREFIX
from vit_ft.weights import assemble, save_timm_safetensors
from vit_ft.weights.families import (
    FAMILIES,
    HEAD_PREFIXES,
    by_model_type,
    by_timm_name,
    for_network,
    head_modules,
    head_names,
)
from vit_ft.weights.load import load_weights
from vit_ft.weights.lora import (
    LoraSpec,
    drop_base,
    fill_base,
    inject_lora,
    is_base_key,
    lora_checkpoint_info,
    merged_state_dict,
)

DEIT = "deit_tiny_distilled_patch16_224"
TINY = {"img_size": 32, "depth": 2, "embed_dim": 32, "num_heads": 2}
# one timm model per family: its pretrained_cfg["classifier"] must be the family's head names
EXAMPLES = {
    "vit": "vit_tiny_patch16_224",
    "deit": DEIT,
    "dinov2": "vit_small_patch14_dinov2",
    "clip": "vit_base_patch16_clip_224",
    "siglip": "vit_base_patch16_siglip_224",
}


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_family_head_names_are_timms(fam):
    name = EXAMPLES[fam.name]
    classifier = timm.models.get_pretrained_cfg(name).classifier
    assert tuple([classifier] if isinstance(classifier, str) else classifier) == fam.head_names
    assert by_timm_name(f"timm/{name}.some_tag") is fam
    assert all(by_model_type(t) is fam for t in fam.model_types)
    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False, **{**TINY, "img_size": 28})
    assert for_network(net) is fam and head_names(net) == fam.head_names


def test_timm_only_families_and_the_old_names():
    with torch.device("meta"):
        eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, **{**TINY, "img_size": 28})
    assert by_timm_name("eva02_tiny_patch14_224") is None and head_names(eva) == ("head",)
    assert by_model_type("swin") is None
    assert assemble.HEAD_PREFIXES == HEAD_PREFIXES == ("head.", "head_dist.")
    assert assemble.head_modules is head_modules


def test_distilled_deit_with_lora_trains_and_keeps_head_dist(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model(DEIT, pretrained=False, num_classes=3, **TINY)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = save_timm_safetensors(base, tmp_path / "base.safetensors")
    source = {"source": str(path), "backbone": DEIT, "timm_kwargs": dict(TINY)}
    net = load_weights(**source).model
    spec = LoraSpec.from_config({"rank": 2, "targets": ["qkv"]})
    info = lora_checkpoint_info(spec, dict(source), net)  # the base is rebuilt from the file
    net = inject_lora(net, spec).train()
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"blocks", "head", "head_dist"}  # adapters and both heads
    before = net.head_dist.weight.detach().clone()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert not torch.equal(net.head_dist.weight, before)  # trained

    state = {MODEL_PREFIX + k: v for k, v in net.state_dict().items()}
    drop_base(state)  # what a LoRA checkpoint keeps when model.weights rebuilds the base
    kept = {k[len(MODEL_PREFIX) :] for k in state}
    assert {"head_dist.weight", "head_dist.bias", "head.weight"} <= kept
    assert not is_base_key("head_dist.weight") and all(".lora_" in k or k.startswith("head") for k in kept)

    merged = merged_state_dict(
        {k[len(MODEL_PREFIX) :]: v for k, v in state.items()},
        load_weights(**source).arch,
        info,
        "t",
        load_weights,
    )
    assert torch.equal(merged["head_dist.weight"], net.head_dist.weight.detach())


def _old_fingerprint(sd: dict[str, torch.Tensor]) -> list[float]:
    """The fingerprint as vit-ft wrote it before head names per family: everything but adapters and ``head.``."""
    kept = [v.double() for k, v in sd.items() if ".lora_" not in k and not k.startswith("head.")]
    return [float(sum(v.sum() for v in kept)), float(sum(v.abs().sum() for v in kept))]


def test_an_old_distilled_deit_lora_checkpoint_still_loads(tmp_path):
    """Written when ``head_dist`` counted as base: frozen, dropped, and in the fingerprint. It loads
    (export / eval: merged; resume: filled in) with ``head_dist`` from the rebuilt base."""
    torch.manual_seed(1)
    base = timm.create_model(DEIT, pretrained=False, num_classes=3, **TINY)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a kept (non-zero) head_dist: it is in the old fingerprint
    path = save_timm_safetensors(base, tmp_path / "base.safetensors")
    source = {"source": str(path), "backbone": DEIT, "timm_kwargs": dict(TINY)}
    spec = LoraSpec.from_config({"rank": 2, "targets": ["qkv"]})
    net = inject_lora(load_weights(**source).model, spec)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if ".lora_" in n or n.startswith("head."):
                p.add_(0.1)  # "trained"
    old = {k: v for k, v in net.state_dict().items() if ".lora_" in k or k.startswith("head.")}
    info = {
        **lora_checkpoint_info(spec, dict(source), net),
        "fingerprint": _old_fingerprint(net.state_dict()),
    }

    merged = merged_state_dict(dict(old), load_weights(**source).arch, info, "old", load_weights)
    assert torch.equal(merged["head_dist.weight"], base.head_dist.weight) and "head.weight" in merged

    fresh = inject_lora(load_weights(**source).model, spec)
    state = {MODEL_PREFIX + k: v for k, v in old.items()}
    fill_base(state, fresh, info, lora_checkpoint_info(spec, dict(source), fresh), "old")
    assert torch.equal(state[MODEL_PREFIX + "head_dist.weight"], base.head_dist.weight)
    fresh.load_state_dict({k[len(MODEL_PREFIX) :]: v for k, v in state.items()}, strict=True)
