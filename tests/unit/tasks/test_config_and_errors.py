"""The configs compose, and each bad input ends the run before training with one clear line (in process;
the same through the real CLI: tests/cli/test_config_and_errors_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.helpers import ROOT, TINY, make_image_folder
from vit_ft.tasks.cli import run_cli as run_in_process
from vit_ft.tasks.train import train


def compose_cfg(overrides: list[str], out: Path, config_name: str = "config"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        del cfg["hydra"]
    return cfg


GROUPS = {
    "data": ["imagefolder", "quickstart"],
    "model": ["vit_b32_384", "vit_tiny"],
    "optimizer": ["sgd", "adamw"],
    "trainer": ["default", "cpu", "gpu", "ddp"],
    "logger": ["wandb", "csv", "none"],
    "scheduler": ["cosine", "linear", "constant"],
}


@pytest.mark.parametrize("group, choice", [(g, c) for g, cs in GROUPS.items() for c in cs])
def test_every_choice_composes(group, choice, tmp_path):
    cfg = compose_cfg([f"{group}={choice}", "data.root=/x"], tmp_path)
    assert cfg[group] is not None or choice == "none"


def test_defaults_are_the_papers_recipe(tmp_path):
    cfg = compose_cfg(["data.root=/x"], tmp_path)
    assert cfg.model.backbone == "vit_base_patch32_384" and cfg.model.img_size == 384
    assert cfg.model.weights == "google/vit-base-patch32-384"
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == 0.0
    assert cfg.scheduler.warmup_steps == 500 and cfg.scheduler.decay == "cosine"
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.gradient_clip_algorithm == "norm"
    assert cfg.data.batch_size == 512 and cfg.optimized_metric == "val/acc1"
    assert "wandb" in cfg.logger


def bad_input(overrides: list[str], tmp_path: Path, capsys) -> str:
    cfg = compose_cfg([*TINY, "logger=none", *overrides], tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        run_in_process(train, cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: ")
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained, nothing written
    return err[-1]


def test_root_not_given(tmp_path, capsys):
    line = bad_input([], tmp_path, capsys)
    assert line.startswith("error: data.root is not set; pass data.root=")


def test_missing_root(tmp_path, capsys):
    line = bad_input([f"data.root={tmp_path / 'nope'}"], tmp_path, capsys)
    assert "data.root=" in line and "does not exist" in line


def test_empty_root(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = bad_input([f"data.root={tmp_path / 'empty'}"], tmp_path, capsys)
    assert "is empty" in line


def test_root_without_class_folders(tmp_path, capsys):
    root = tmp_path / "flat"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"x")
    line = bad_input([f"data.root={root}"], tmp_path, capsys)
    assert "has no class folders" in line


def test_class_folders_without_images(tmp_path, capsys):
    root = tmp_path / "noimg"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        (root / c / "notes.txt").write_text("not an image")
    line = bad_input([f"data.root={root}"], tmp_path, capsys)
    assert "none of its 2 class folders holds an image" in line


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.batch_size=0", "data.batch_size=0 must be a positive integer"),
        ("model.img_size=36", "model.img_size=36 is not a positive multiple of the patch size 8"),
        ("optimizer.lr=0", "optimizer.lr=0 must be a positive number"),
        ("optimizer.lr=-0.1", "optimizer.lr=-0.1 must be a positive number"),
        ("trainer.max_epochs=0", "trainer.max_epochs=0 must be a positive integer"),
    ],
)
def test_invalid_values(override, needle, image_folder, tmp_path, capsys):
    line = bad_input([f"data.root={image_folder}", override], tmp_path, capsys)
    assert needle in line


def test_batch_that_does_not_divide_over_devices(image_folder, tmp_path, capsys):
    line = bad_input(
        [
            f"data.root={image_folder}",
            "data.batch_size=7",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
        ],
        tmp_path,
        capsys,
    )
    assert "data.batch_size=7 does not divide over 2 device(s)" in line and "multiple of 2" in line


def test_train_val_class_mismatch(tmp_path, capsys):
    root = make_image_folder(tmp_path / "mismatch", n_train=2, n_val=2, size=16)
    (root / "val" / "circle").rename(root / "val" / "oval")
    line = bad_input([f"data.root={root}"], tmp_path, capsys)
    assert "different classes" in line and "circle" in line and "oval" in line


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_a_gpu(image_folder, tmp_path, capsys):
    line = bad_input([f"data.root={image_folder}", "trainer=gpu"], tmp_path, capsys)
    assert "gpu" in line.lower() and "trainer.* settings" in line
