"""Each new source end to end through the real CLI (tiny model, a few steps)."""

from __future__ import annotations

import os

import pytest

from tests.helpers import TINY, bad_images, hf_dataset, make_imagenet, read_metrics, run_cli, write

STEPS = ["trainer.max_steps=2", "trainer.max_epochs=1", "logger=csv", "data.batch_size=4"]


def _train(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    run_cli("train.py", *TINY, *STEPS, *overrides, f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    m = read_metrics(run_dir)
    assert m["status"] == "completed" and m["global_step"] == 2
    return m


def test_imagenet_flat_val_with_bad_file_skipped(tmp_path):
    root = make_imagenet(str(tmp_path / "imagenet"), per_class=2)
    write(os.path.join(root, "train", "n01440764"), {"broken.JPEG": bad_images()["truncated.jpg"]})
    m = _train(
        tmp_path, "data=imagenet", f"data.root={root}", "data.on_bad_image=skip", "data.eval_batch_size=8"
    )
    assert "val/acc1" in m["final"]
    bad = m["bad_images"]
    assert bad["count"] <= 1 and all("broken.JPEG" in f for f in bad["files"])


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet"])
def test_hf(tmp_path, kind):
    import datasets

    path = tmp_path / kind
    if kind == "save_to_disk":
        datasets.DatasetDict(train=hf_dataset(8), validation=hf_dataset(6, seed=50)).save_to_disk(str(path))
    else:
        os.makedirs(path)
        hf_dataset(10).to_parquet(str(path / "train.parquet"))  # 8 train + 2 val: one epoch = 2 steps
    m = _train(
        tmp_path,
        "data=hf",
        f"data.name={path}",
        "data.val_fraction=0.2",
        f"data.hf_cache_dir={tmp_path / 'hfc'}",
    )
    assert "val/acc1" in m["final"]
