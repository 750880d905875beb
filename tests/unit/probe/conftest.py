"""Fixtures of the probe tests."""

from __future__ import annotations

import pytest

from vit_ft.probe.features import clear_memory_cache
from vit_ft.probe.settings import LinearProbeSettings


@pytest.fixture
def settings(tmp_path) -> LinearProbeSettings:
    """Linear-probe settings with a feature cache of the test's own, and an empty memory cache."""
    clear_memory_cache()
    return LinearProbeSettings(cache_dir=str(tmp_path / "features"))
