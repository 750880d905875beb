"""The README's quickstart command, shortened, through the real CLI: offline, it makes its data and learns."""

from __future__ import annotations

from tests.helpers import read_metrics, run_cli


def test_quickstart_command_runs_offline_and_learns(tmp_path):
    proc = run_cli(
        "train.py",
        "experiment=quickstart",
        "trainer.max_epochs=4",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        tmp_path=tmp_path,
    )
    assert (tmp_path / "cache" / "quickstart-v1" / ".complete").is_file()
    m = read_metrics(tmp_path / "run")
    assert m["value"] > 0.4  # 4 classes; the full 20-epoch quickstart reaches >= 0.9
    out = proc.stdout + proc.stderr
    assert "wandb sync" in out and "no credentials found" in out and "logging offline" in out
