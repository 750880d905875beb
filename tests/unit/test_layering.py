"""The layering of src/vit_ft (import-linter contracts in pyproject.toml) and private names (ruff SLF001)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", LINT], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_package_keeps_its_layers_and_hydra_stays_in_tasks_and_sweeps():
    proc = _lint(ROOT, ROOT / "src")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_the_contracts_catch_an_upward_import_and_hydra_below_tasks(tmp_path):
    """The same contracts on a copy of the layout with two violations: both are reported."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    modules = set()
    for contract in config["contracts"]:
        for entry in contract.get("layers", []) + contract.get("source_modules", []):
            modules |= {m.strip() for m in entry.split("|")}
    pkg = tmp_path / "src"
    for name in sorted(modules):
        d = pkg.joinpath(*name.split("."))
        d.mkdir(parents=True, exist_ok=True)
        (d / "__init__.py").touch()
    (pkg / "vit_ft" / "__init__.py").touch()
    (pkg / "vit_ft" / "data" / "__init__.py").write_text("import vit_ft.tasks\n")
    (pkg / "vit_ft" / "models" / "__init__.py").write_text("import omegaconf\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())

    proc = _lint(tmp_path, pkg)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 kept, 2 broken" in proc.stdout
    assert "vit_ft.data -> vit_ft.tasks" in proc.stdout
    assert "vit_ft.models -> omegaconf" in proc.stdout


def test_no_private_name_is_used_outside_its_module():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "SLF001", "src"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
