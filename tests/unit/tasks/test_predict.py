"""predict.py's job in process: each bad input is one line and exit status 2."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import ROOT
from vit_ft.tasks.cli import run_cli as run_in_process

transformers = pytest.importorskip("transformers")


def _predict_cli():
    spec = importlib.util.spec_from_file_location("predict_cli_entry", ROOT / "predict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _error_line(capsys, **overrides) -> str:
    entry = _predict_cli()
    cfg = OmegaConf.merge(OmegaConf.structured(entry.PredictConfig), overrides)
    with pytest.raises(SystemExit) as e:
        run_in_process(entry.predict, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ")
    return err[-1]


def test_bad_input_is_one_line(hf_dir, image_folder, tmp_path, capsys):
    val = str(image_folder / "val")
    assert "does not exist" in _error_line(capsys, weights=str(hf_dir), images=str(tmp_path / "nope.jpg"))
    (tmp_path / "empty").mkdir()
    assert "no image files" in _error_line(capsys, weights=str(hf_dir), images=str(tmp_path / "empty"))
    assert "does not exist" in _error_line(capsys, weights=str(tmp_path / "missing.pth"), images=val)
    assert "no-such-org/nope" in _error_line(
        capsys, weights="no-such-org/nope", images=val
    )  # unknown, offline
    assert "topk=0" in _error_line(capsys, weights=str(hf_dir), images=val, topk=0)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    line = _error_line(capsys, weights=str(hf_dir), images=str(tmp_path / "bad"))
    assert "broken.jpg" in line and "on_bad_image=skip" in line
