"""export.py's job in process: each bad input is one line and exit status 2."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.helpers import ROOT


def _load_export_cli():
    spec = importlib.util.spec_from_file_location("export_cli_entry", ROOT / "export.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_export_cli_bad_input(tmp_path, capsys):
    from omegaconf import OmegaConf

    from vit_ft.tasks.cli import run_cli

    entry = _load_export_cli()

    def error(**kw) -> str:
        cfg = OmegaConf.merge(OmegaConf.structured(entry.ExportConfig), kw)
        with pytest.raises(SystemExit) as e:
            run_cli(entry.export, cfg)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")
        return err[0]

    assert error(weights="./missing.ckpt", out="x").startswith(
        "error: weights file './missing.ckpt' does not exist"
    )
    assert error(ckpt_path="./missing.ckpt", out="x").startswith(
        "error: weights file './missing.ckpt' does not"
    )
    assert "are both required" in error(out="x")
    assert "name different sources" in error(ckpt_path="a.ckpt", weights="b.ckpt", out="x")
    assert "format='tflite'" in error(ckpt_path="a.ckpt", out="x", format="tflite")
