"""The wandb logger: offline without credentials, and no warning about a setting the user never set."""

from __future__ import annotations

from vit_ft.training.loggers import build_wandb_logger


def test_wandb_logger_passes_no_anonymous_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = build_wandb_logger(save_dir=str(tmp_path))
    init = logger._wandb_init
    assert "anonymous" not in init  # wandb warns "has no effect" for any value, None included
    assert init["mode"] == "offline" and init["project"] == "vit-ft"
