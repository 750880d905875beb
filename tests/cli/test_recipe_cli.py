"""The lr that follows the batch and the small-data recipe, through the real CLI (three runs): the lines
at the start, the values the run used (config_resolved.yaml), a command-line value kept, a rerun that
finds its finished run, and recipe=paper as configured."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers import TINY, make_image_folder, run_cli

pytestmark = pytest.mark.cli

# TINY less the three values recipe=auto and the lr rule decide; warmup given back on the command line
ARGS = [
    *[o for o in TINY if not o.startswith(("data.batch_size=", "optimizer.lr=", "scheduler.warmup_steps="))],
    "scheduler.warmup_steps=2",
    "trainer.max_epochs=1",
    "logger=none",
    "test=false",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("recipe") / "data", n_train=16, n_val=4, size=32)


def resolved(run_dir):
    return yaml.safe_load((run_dir / "config_resolved.yaml").read_text())


def test_auto_fits_the_batch_to_64_images_keeps_the_given_warmup_and_the_lr_follows(folder, tmp_path):
    run_dir = tmp_path / "run"
    args = [*ARGS, f"data.root={folder}", f"hydra.run.dir={run_dir}"]
    proc = run_cli("train.py", *args, tmp_path=tmp_path)
    out = proc.stdout + proc.stderr
    assert (
        "recipe=auto: 64 training images make a short run (1 optimizer steps as configured): "
        "data.batch_size 512 -> 8, 8 steps; kept as given: scheduler.warmup_steps; still under 100 steps"
    ) in out
    assert "lr 0.000125 = optimizer.lr_base 0.001 x sqrt(8/512) (sqrt rule for adamw; global batch 8" in out
    assert "batch: global 8 = 1 device(s)" in out and "never leaves warmup" not in out
    cfg = resolved(run_dir)
    assert (cfg["data"]["batch_size"], cfg["scheduler"]["warmup_steps"]) == (8, 2)
    assert cfg["optimizer"]["lr"] == pytest.approx(0.000125) and cfg["recipe"] == "auto"
    # the same command again: the settled values are the saved run's, which has finished
    again = run_cli("train.py", *args, tmp_path=tmp_path)
    assert "nothing to do" in again.stdout and "another config" not in again.stderr


def test_recipe_paper_runs_as_configured_and_a_given_lr_wins(folder, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train.py",
        *[a for a in ARGS if not a.startswith("scheduler.warmup_steps=")],
        "recipe=paper",
        "optimizer.lr=0.002",
        f"data.root={folder}",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
    )
    out = proc.stdout + proc.stderr
    assert "recipe=auto" not in out
    assert "lr 0.002: optimizer.lr as given (it wins over optimizer.lr_base=0.001, not applied)" in out
    assert "scheduler.warmup_steps=500 is not below the run's 1 optimizer steps" in out
    cfg = resolved(run_dir)
    assert (cfg["data"]["batch_size"], cfg["scheduler"]["warmup_steps"], cfg["optimizer"]["lr"]) == (
        512,
        500,
        0.002,
    )
