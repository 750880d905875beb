"""Every weight format loads exactly (tiny random checkpoints; nothing is downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed

from vit_ft.errors import ConfigError
from vit_ft.weights import create_from_arch, hf_to_timm, load_weights, timm_to_hf

transformers = pytest.importorskip("transformers")

HF_KW = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
TIMM_KW = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
NAMES = ["cat", "dog", "bird"]


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (LayerNorm and biases too), so any key mix-up changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _x(size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(b.abs().max())), (a - b).abs().max()


@pytest.fixture(scope="module")
def hf_model():
    cfg = transformers.ViTConfig(
        **HF_KW, num_labels=3, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)}
    )
    return _perturb(transformers.ViTForImageClassification(cfg))


def _write_preprocessor(path: Path, size: int = 32) -> None:
    # the seed's (google/vit-base-patch32-384) layout: int size, PIL resample code, mean/std 0.5
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "ViTFeatureExtractor",
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "resample": 2,
                "size": size,
            }
        )
    )


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "vit-tiny"
    hf_model.save_pretrained(path)
    _write_preprocessor(path)
    return path


@pytest.fixture(scope="module")
def hf_logits(hf_model):
    with torch.no_grad():
        return hf_model(pixel_values=_x()).logits


def _logits(bb, size: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return bb.model.eval()(_x(size))


def _timm_model(num_classes: int = 5, **kw) -> torch.nn.Module:
    return _perturb(timm.create_model("vit_base_patch32_384", num_classes=num_classes, **{**TIMM_KW, **kw}))


# ---------------------------------------------------------------------------------------- transformers


def test_hf_dir_is_exact(hf_dir, hf_logits):
    bb = load_weights(str(hf_dir), backbone="vit_base_patch32_384")
    _close(_logits(bb), hf_logits)
    assert bb.arch["layer_norm_eps"] == 1e-12
    kw = bb.arch["kwargs"]
    assert (kw["embed_dim"], kw["depth"], kw["num_heads"], kw["patch_size"], kw["img_size"]) == (
        32,
        2,
        2,
        8,
        32,
    )
    assert bb.head_kept and bb.class_names == NAMES and bb.num_classes == 3
    p = bb.preprocessing
    assert (p.img_size, p.mean, p.std, p.interpolation) == (32, (0.5,) * 3, (0.5,) * 3, "bilinear")
    assert any("differs from the checkpoint" in n for n in bb.notes)  # named vit-b/32 vs the tiny checkpoint
    # arch is JSON-able and rebuilds the identical network
    rebuilt = create_from_arch(json.loads(json.dumps(bb.arch)))
    rebuilt.load_state_dict(bb.model.state_dict())
    _close(_logits(type(bb)(rebuilt, bb.arch, bb.preprocessing)), hf_logits, rtol=1e-6)


def test_hf_bin_with_v5_names_and_vitmodel_pooler(hf_model, tmp_path):
    # pytorch_model.bin holding a transformers-5 in-memory state_dict (q_proj/o_proj names)
    d = tmp_path / "bin"
    d.mkdir()
    hf_model.config.to_json_file(str(d / "config.json"))
    torch.save(hf_model.state_dict(), d / "pytorch_model.bin")
    bb = load_weights(str(d))
    with torch.no_grad():
        _close(_logits(bb), hf_model(pixel_values=_x()).logits)
    assert any("no preprocessor_config.json" in n for n in bb.notes)
    # a ViTModel (no head, a pooler timm lacks): features match, no head
    base = _perturb(transformers.ViTModel(transformers.ViTConfig(**HF_KW)))
    m = tmp_path / "vitmodel"
    base.save_pretrained(m)
    bb = load_weights(str(m))
    assert bb.num_classes == 0 and not bb.head_kept
    assert any("pooler" in n for n in bb.notes)
    with torch.no_grad():
        _close(bb.model(_x()), base(pixel_values=_x()).last_hidden_state[:, 0])


def test_key_table_round_trip(hf_model):
    legacy = {k: v for k, v in hf_model.state_dict().items()}
    timm_sd, unused = hf_to_timm(legacy)
    assert not unused and "blocks.1.attn.qkv.weight" in timm_sd
    assert timm_sd["blocks.1.attn.qkv.weight"].shape == (96, 32)
    back = timm_to_hf(timm_sd)
    again, _ = hf_to_timm(back)
    assert set(again) == set(timm_sd) and all(torch.equal(again[k], timm_sd[k]) for k in timm_sd)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in back


def _fake_hub_cache(hf_home: Path, repo: str, files: Path) -> None:
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<sha>/...}."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in files.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())


def test_hub_id_from_cache_offline(hf_dir, hf_logits):
    _fake_hub_cache(Path(os.environ["HF_HOME"]), "tiny-org/vit-tiny", hf_dir)
    bb = load_weights("tiny-org/vit-tiny", num_classes=3)
    _close(_logits(bb), hf_logits)
    assert bb.source == "tiny-org/vit-tiny" and bb.class_names == NAMES


def test_hub_id_offline_not_cached():
    with pytest.raises(ConfigError) as e:
        load_weights("google/vit-base-patch32-384")
    msg = str(e.value)
    assert "google/vit-base-patch32-384" in msg and "HF_HUB_OFFLINE" in msg and "local path" in msg
    assert "\n" not in msg


def test_hub_id_unknown(monkeypatch):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def boom(**_):
        response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))
        raise RepositoryNotFoundError("404 Repository Not Found", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(ConfigError, match="no-such-org/no-such-model.*no Hugging Face hub model.*local path"):
        load_weights("no-such-org/no-such-model")


# ---------------------------------------------------------------------------------------- timm files


@pytest.fixture(scope="module")
def timm_src():
    model = _timm_model()
    with torch.no_grad():
        return model, model(_x())


@pytest.mark.parametrize(
    "fmt", ["raw.pth", "state_dict.pth", "model.bin", "ema.pth", "module.pt", "plain.safetensors"]
)
def test_timm_file_formats(fmt, timm_src, tmp_path):
    model, ref = timm_src
    sd = model.state_dict()
    path = tmp_path / fmt
    kind = fmt.split(".")[0]
    if kind == "plain":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {
            "raw": sd,
            "state_dict": {"state_dict": sd, "epoch": 3},
            "model": {"model": sd, "args": {"lr": 0.1}},
            "ema": {"state_dict": {k: torch.zeros_like(v) for k, v in sd.items()}, "state_dict_ema": sd},
            "module": {f"module.{k}": v for k, v in sd.items()},
        }[kind]
        torch.save(obj, path)
    tk = {k: v for k, v in TIMM_KW.items() if k != "img_size"}
    bb = load_weights(str(path), backbone="vit_base_patch32_384", timm_kwargs=tk)
    _close(_logits(bb), ref, rtol=1e-6)
    assert bb.head_kept and bb.num_classes == 5 and bb.arch["kwargs"]["img_size"] == 32
    assert bb.arch["name"] == "vit_base_patch32_384" and bb.arch["layer_norm_eps"] is None
    assert bb.preprocessing.mean == (0.5, 0.5, 0.5)  # timm's pretrained cfg of the named model
    if kind == "ema":
        assert any("EMA" in n for n in bb.notes)


def test_timm_file_wrong_architecture(timm_src, tmp_path):
    path = tmp_path / "b8.pth"
    torch.save(timm_src[0].state_dict(), path)
    with pytest.raises(ConfigError) as e:  # patch-8 weights, patch-16 network
        load_weights(
            str(path),
            backbone="vit_base_patch16_224",
            timm_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2},
        )
    msg = str(e.value)
    assert str(path) in msg and "patch_embed.proj.weight" in msg
    assert "(32, 3, 8, 8)" in msg and "(32, 3, 16, 16)" in msg and "patch-8" in msg
    with pytest.raises(ConfigError, match="does not fit vit_base_patch32_384.*768"):
        load_weights(str(path), backbone="vit_base_patch32_384")
    with pytest.raises(ConfigError, match="does not state its architecture.*model.backbone"):
        load_weights(str(path))


# ---------------------------------------------------------------------------------------- npz


def _to_npz(model: torch.nn.Module, path: Path) -> None:
    """The original google-research ViT .npz layout (the inverse of timm's _load_weights)."""
    d, h = model.embed_dim, model.blocks[0].attn.num_heads
    hd = d // h
    n = lambda t: t.detach().numpy()  # noqa: E731
    w = {
        "embedding/kernel": n(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),
        "embedding/bias": n(model.patch_embed.proj.bias),
        "cls": n(model.cls_token),
        "Transformer/posembed_input/pos_embedding": n(model.pos_embed),
        "Transformer/encoder_norm/scale": n(model.norm.weight),
        "Transformer/encoder_norm/bias": n(model.norm.bias),
        "head/kernel": n(model.head.weight.T),
        "head/bias": n(model.head.bias),
    }
    for i, b in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        a = p + "MultiHeadDotProductAttention_1/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = n(b.norm1.weight), n(b.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = n(b.norm2.weight), n(b.norm2.bias)
        for name, wt, bs in zip(
            ("query", "key", "value"), b.attn.qkv.weight.chunk(3), b.attn.qkv.bias.chunk(3)
        ):
            w[a + f"{name}/kernel"] = n(wt.T.reshape(d, h, hd))
            w[a + f"{name}/bias"] = n(bs.reshape(h, hd))
        w[a + "out/kernel"] = n(b.attn.proj.weight.reshape(d, h, hd).permute(1, 2, 0))
        w[a + "out/bias"] = n(b.attn.proj.bias)
        for r, fc in enumerate((b.mlp.fc1, b.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"], w[p + f"MlpBlock_3/Dense_{r}/bias"] = (
                n(fc.weight.T),
                n(fc.bias),
            )
    np.savez(path, **w)


def test_npz_is_exact_with_imagenet_names(tmp_path):
    model = _timm_model(num_classes=1000)
    path = tmp_path / "ViT-T_8.npz"
    _to_npz(model, path)
    bb = load_weights(str(path))
    with torch.no_grad():
        _close(_logits(bb), model(_x()), rtol=1e-5)
    kw = bb.arch["kwargs"]
    assert (kw["patch_size"], kw["embed_dim"], kw["depth"], kw["num_heads"], kw["num_classes"]) == (
        8,
        32,
        2,
        2,
        1000,
    )
    assert bb.head_kept and len(bb.class_names) == 1000 and bb.class_names[0].startswith("tench")
    assert bb.preprocessing.mean == (0.5, 0.5, 0.5)
    # fine-tuning at a higher resolution with a new head
    bb = load_weights(str(path), img_size=64, num_classes=10)
    assert bb.model.pos_embed.shape == (1, 65, 32) and not bb.head_kept
    assert torch.count_nonzero(bb.model.head.weight) == 0


# ---------------------------------------------------------------------------------------- vit-ft ckpt


def test_vit_ft_ckpt(timm_src, tmp_path):
    model, ref = timm_src
    arch = {"name": "vit_base_patch32_384", "kwargs": {**TIMM_KW, "num_classes": 5}, "layer_norm_eps": None}
    prep = {"img_size": 32, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bicubic"}
    names = [f"c{i}" for i in range(5)]
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"arch": arch, "class_names": names, "preprocessing": prep, "lr": 0.01},
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.6.6",
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    bb = load_weights(str(path), backbone="ignored_for_ckpt")
    _close(_logits(bb), ref, rtol=1e-6)
    assert bb.arch == arch and bb.class_names == names and bb.preprocessing.to_dict() == prep


# ---------------------------------------------------------------------------------------- resolution, head


def test_resolution_change_resamples_like_timm(hf_dir, hf_model):
    bb = load_weights(str(hf_dir), img_size=64)
    pos = hf_model.state_dict()["vit.embeddings.position_embeddings"]
    expected = resample_abs_pos_embed(pos, new_size=[8, 8], num_prefix_tokens=1)
    assert torch.allclose(bb.model.pos_embed, expected) and bb.model.pos_embed.shape == (1, 65, 32)
    assert bb.preprocessing.img_size == 64 and bb.arch["kwargs"]["img_size"] == 64
    assert any("4x4" in n and "8x8" in n for n in bb.notes)
    assert _logits(bb, 64).shape == (2, 3)
    with pytest.raises(ConfigError, match="img_size=60 is not a positive multiple of the patch size 8"):
        load_weights(str(hf_dir), img_size=60)


@pytest.mark.parametrize(
    "num_classes,reset,kept,note",
    [
        (None, False, True, "kept"),
        (3, False, True, "kept"),
        (7, True, False, "reset_head"),
        (7, False, False, "3 classes"),
    ],
)
def test_head_policy(hf_dir, num_classes, reset, kept, note):
    bb = load_weights(str(hf_dir), num_classes=num_classes, reset_head=reset)
    assert bb.head_kept is kept and any(note in n for n in bb.notes)
    if kept:
        assert bb.class_names == NAMES and torch.count_nonzero(bb.model.head.weight) > 0
    else:
        assert bb.class_names is None and bb.num_classes == 7
        assert torch.count_nonzero(bb.model.head.weight) == 0 and torch.count_nonzero(bb.model.head.bias) == 0


# ---------------------------------------------------------------------------------------- timm tags


def test_timm_tag_through_timm_loading(timm_src, tmp_path):
    model, ref = timm_src
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    tk = {**TIMM_KW, "pretrained_cfg_overlay": {"file": str(path), "num_classes": 5}}
    bb = load_weights("timm/vit_base_patch32_384.augreg_in21k_ft_in1k", timm_kwargs=tk)
    _close(_logits(bb), ref, rtol=1e-6)
    assert bb.head_kept and bb.arch["name"] == "vit_base_patch32_384.augreg_in21k_ft_in1k"
    assert "pretrained_cfg_overlay" not in bb.arch["kwargs"]
    rebuilt = create_from_arch(bb.arch)
    rebuilt.load_state_dict(bb.model.state_dict())
    bb = load_weights("vit_base_patch32_384.augreg_in21k_ft_in1k", timm_kwargs=tk, num_classes=2)
    assert not bb.head_kept and torch.count_nonzero(bb.model.head.weight) == 0


def test_timm_tag_errors():
    with pytest.raises(ConfigError, match="timm/vit_base_patch32_224.orig_in21k.*HF_HUB_OFFLINE.*local file"):
        load_weights("timm/vit_base_patch32_224.orig_in21k")
    with pytest.raises(ConfigError, match="no pretrained tag 'nope' for vit_base_patch32_384.*augreg"):
        load_weights("vit_base_patch32_384.nope")
    with pytest.raises(ConfigError, match="'vit_nonexistent_thing' is not a timm model"):
        load_weights("timm/vit_nonexistent_thing")


# ---------------------------------------------------------------------------------------- bad input


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, path)
    with pytest.raises(ConfigError) as e:
        load_weights(str(path), backbone="vit_base_patch32_384")
    msg = str(e.value)
    assert "refusing" in msg and str(path) in msg and "system" in msg and "safetensors" in msg


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_truncated_file(timm_src, tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".npz":
        _to_npz(timm_src[0], full)
    elif suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in timm_src[0].state_dict().items()}, str(full))
    else:
        torch.save(timm_src[0].state_dict(), full)
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ConfigError) as e:
        load_weights(str(bad), backbone="vit_base_patch32_384", timm_kwargs=TIMM_KW)
    msg = str(e.value)
    assert str(bad) in msg and "truncated" in msg and "\n" not in msg


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(ConfigError, match="'./no/such.pth' does not exist"):
        load_weights("./no/such.pth")
    with pytest.raises(ConfigError, match="neither an existing path"):
        load_weights("not-a-thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        load_weights(str(tmp_path / "empty"))
    d = tmp_path / "swin"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "swin"}))
    with pytest.raises(ConfigError, match="model_type='swin'"):
        load_weights(str(d))
