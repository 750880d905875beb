"""push_to_hub in process, through the real huggingface_hub client against a local fake of the Hub's
HTTP API (tests/unit/publish/fake_hub.py): what is created and uploaded, and one line (the export kept)
when offline, not logged in, or refused."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi, constants

from tests.unit.publish.fake_hub import FakeHub
from vit_ft.errors import ConfigError, RunFault
from vit_ft.publish import check_repo_id, push_folder


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "exported"
    (d / "images").mkdir(parents=True)
    (d / "README.md").write_text("---\nlibrary_name: timm\n---\n# card\n")
    (d / "images" / "curves.png").write_bytes(b"png")
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "notes.txt").write_text("not mine")
    return d


def test_push_creates_the_repo_and_branch_and_uploads_only_what_is_allowed(folder, online):
    with FakeHub() as hub:
        url = push_folder(
            folder,
            "me/tiny-vit",
            allow_patterns=["model.safetensors", "README.md", "images/*"],
            private=True,
            revision="v1",
            api=HfApi(endpoint=hub.url, token="hf_fake"),
        )
    paths = [(r["method"], r["path"].split("?")[0]) for r in hub.requests]
    assert paths[0] == ("POST", "/api/repos/create") and hub.requests[0]["json"]["visibility"] == "private"
    assert ("POST", "/api/models/me/tiny-vit/branch/v1") in paths
    assert paths[-1] == ("POST", "/api/models/me/tiny-vit/commit/v1")
    assert all(r["auth"] == "Bearer hf_fake" for r in hub.requests)
    assert hub.files == {
        "README.md": (folder / "README.md").read_bytes(),
        "images/curves.png": b"png",
        "model.safetensors": b"weights",
    }
    assert url.endswith("/me/tiny-vit/commit/" + "0" * 40)


def test_a_public_push_to_main_creates_no_branch(folder, online):
    with FakeHub() as hub:
        push_folder(folder, "me/tiny-vit", api=HfApi(endpoint=hub.url, token="hf_fake"))
    assert "visibility" not in hub.requests[0]["json"]  # the account's default (public)
    assert not any("/branch/" in r["path"] for r in hub.requests)
    assert hub.requests[-1]["path"].startswith("/api/models/me/tiny-vit/commit/main")
    assert "notes.txt" in hub.files  # no allow-list: the whole folder


def _one_line(e: pytest.ExceptionInfo) -> str:
    line = str(e.value)
    assert "\n" not in line and "the export is kept in" in line and "hf upload me/tiny-vit" in line
    return line


def test_offline_not_logged_in_or_refused_is_one_line_and_the_export_is_kept(
    folder, online, monkeypatch, tmp_path
):
    before = sorted(p.name for p in folder.rglob("*"))
    with FakeHub(status=401) as hub, pytest.raises(RunFault) as e:
        push_folder(folder, "me/tiny-vit", api=HfApi(endpoint=hub.url, token="hf_bad"))
    assert "not authorised" in _one_line(e)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_tokens"))
    with pytest.raises(RunFault) as e:
        push_folder(folder, "me/tiny-vit")
    assert "not logged in" in _one_line(e) and "HF_TOKEN" in str(e.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RunFault) as e:
        push_folder(folder, "me/tiny-vit", api=HfApi(endpoint="http://127.0.0.1:9", token="x"))
    assert "offline" in _one_line(e)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(RunFault) as e:  # nothing listens on port 9
        push_folder(folder, "me/tiny-vit", api=HfApi(endpoint="http://127.0.0.1:9", token="x"))
    _one_line(e)
    assert sorted(p.name for p in folder.rglob("*")) == before


@pytest.mark.parametrize("bad", ["tiny-vit", "me/tiny/vit", "me/tiny vit", "me/--x"])
def test_a_bad_repo_id_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError) as e:
        check_repo_id(bad)
    assert str(e.value).startswith(f"push_to_hub={bad!r} is not a Hub repository id") and "\n" not in str(
        e.value
    )
    check_repo_id("me/tiny-vit")


def test_private_to_an_existing_public_repo_is_refused_before_any_upload(folder, online):
    """hub.private=true must never put the model into a repository anyone can read."""
    with FakeHub(existing={"me/tiny-vit": False}) as hub, pytest.raises(RunFault) as e:
        push_folder(folder, "me/tiny-vit", private=True, api=HfApi(endpoint=hub.url, token="hf_fake"))
    assert "exists and is public: nothing uploaded" in _one_line(e)
    assert hub.files == {} and not any("/commit/" in r["path"] for r in hub.requests)
    with FakeHub(existing={"me/tiny-vit": True}) as hub:  # already private: uploaded
        push_folder(folder, "me/tiny-vit", private=True, api=HfApi(endpoint=hub.url, token="hf_fake"))
    assert "model.safetensors" in hub.files
    with FakeHub(existing={"me/tiny-vit": False}) as hub:  # public, as asked: no check, uploaded
        push_folder(folder, "me/tiny-vit", api=HfApi(endpoint=hub.url, token="hf_fake"))
    assert "model.safetensors" in hub.files and not any(r["method"] == "GET" for r in hub.requests)


def test_an_onnx_export_over_2gb_lists_and_pushes_its_external_data_file(
    hf_dir, tmp_path, monkeypatch, online
):
    """format=onnx out=.../model.onnx over MAX_BYTES (lowered so a tiny ViT is over it): the card names
    model.onnx.data and the push uploads it with model.onnx (the allow-list of a single-file export)."""
    from omegaconf import OmegaConf

    from vit_ft.tasks import publish
    from vit_ft.tasks.export import ExportConfig, export
    from vit_ft.weights import onnx as vonnx

    monkeypatch.setattr(vonnx, "MAX_BYTES", 1000)
    out = tmp_path / "big" / "model.onnx"
    (out.parent).mkdir()
    (out.parent / "notes.txt").write_text("not this export's")
    cfg = OmegaConf.merge(
        OmegaConf.structured(ExportConfig),
        {"weights": str(hf_dir), "out": str(out), "format": "onnx", "push_to_hub": "me/big-vit"},
    )
    with FakeHub() as hub:
        real = publish.push_folder
        api = HfApi(endpoint=hub.url, token="hf_fake")
        monkeypatch.setattr(publish, "push_folder", lambda *a, **kw: real(*a, **kw, api=api))
        paths = export(cfg)
    assert paths == [out, out.parent / "model.onnx.data"]
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "README.md",
        "model.onnx",
        "model.onnx.data",
        "notes.txt",
    ]
    assert sorted(hub.files) == ["README.md", "model.onnx", "model.onnx.data"]
    assert hub.files["model.onnx.data"] == (out.parent / "model.onnx.data").read_bytes()
    card = (out.parent / "README.md").read_text()
    assert "its weights are in `model.onnx.data` beside `model.onnx`" in card
