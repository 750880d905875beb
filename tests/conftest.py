"""Fixtures only (helpers are in tests/helpers.py), and the ``cli`` marker for every test under tests/cli/.

Nothing here downloads: images are generated, models are random-init tiny ViTs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import SHAPE_CLASSES, make_image_folder, save_hf_dir, tiny_hf_vit

CLI_DIR = Path(__file__).resolve().parent / "cli"


def pytest_collection_modifyitems(config, items):
    """Tests under tests/cli/ run a real vit-ft command in a subprocess: ``-m "not cli"`` leaves them out."""
    for item in items:
        if item.path.is_relative_to(CLI_DIR):
            item.add_marker(pytest.mark.cli)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch, tmp_path):
    """No test reaches a hub: Hugging Face offline, with an empty cache of its own."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="module")
def hf_model():
    """A tiny transformers ViT whose id2label names the image_folder classes."""
    return tiny_hf_vit(dict(enumerate(SHAPE_CLASSES)), seed=0, scale=0.3)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    """``hf_model`` saved as a transformers directory."""
    return save_hf_dir(hf_model, tmp_path_factory.mktemp("weights") / "tiny-vit")
