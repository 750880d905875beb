"""One run folder is one wandb run: the id in ``<run folder>/wandb_run_id`` is kept by every later run
there (a resume, or a restart after a run killed before its first checkpoint); rank 0 alone writes it."""

from __future__ import annotations

from vit_ft.training.loggers import WANDB_ID_FILE, build_wandb_logger, folder_wandb_id


def test_a_restart_keeps_the_folders_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    first = folder_wandb_id(str(run_dir))  # a new folder: a new id, saved there
    assert len(first) == 8 and (run_dir / WANDB_ID_FILE).read_text() == first + "\n"
    assert folder_wandb_id(str(run_dir)) == first  # the same command again, no checkpoint yet
    assert folder_wandb_id(str(run_dir), resuming=True) == first
    logger = build_wandb_logger(save_dir=str(run_dir), id=folder_wandb_id(str(run_dir)))
    assert logger._wandb_init["id"] == first and logger._wandb_init["resume"] == "allow"
    assert folder_wandb_id(str(tmp_path / "other")) != first


def test_other_ranks_read_the_id_and_never_write_one(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert folder_wandb_id(str(tmp_path)) == "" and not (tmp_path / WANDB_ID_FILE).exists()
    (tmp_path / WANDB_ID_FILE).write_text("abcd1234\n")
    assert folder_wandb_id(str(tmp_path)) == "abcd1234"
