"""Hugging Face data sets: save_to_disk, parquet, streaming, string labels, bad images in a data set."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.helpers import HF_NAMES, hf_dataset, hf_rows
from vit_ft.data import HFDataModule
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    import datasets

    path = str(tmp_path_factory.mktemp("hf") / "saved")
    datasets.DatasetDict(train=hf_dataset(12), validation=hf_dataset(6, seed=50)).save_to_disk(path)
    return path


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hf") / "pq"
    os.makedirs(folder / "data")
    hf_dataset(15).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return str(folder)


def _dm(tmp_path, name, **kw) -> HFDataModule:
    args = dict(batch_size=4, num_workers=0, persistent_workers=False, hf_cache_dir=str(tmp_path / "hfc"))
    args.update(kw)
    dm = HFDataModule(name=name, **args)
    dm.configure_preprocessing(Preprocessing(32))
    dm.setup()
    return dm


def _check_batch(batch, n: int = 4) -> None:
    x, y = batch
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64


def test_save_to_disk(tmp_path, saved):
    dm = _dm(tmp_path, saved)
    assert dm.class_names == HF_NAMES
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 6
    _check_batch(next(iter(dm.train_dataloader())))
    _check_batch(next(iter(dm.val_dataloader())))
    assert dm.splits["val"].labels.tolist() == [i % 3 for i in range(6)]


def test_parquet_folder_splits_val_off_train(tmp_path, parquet):
    dm = _dm(tmp_path, parquet, val_fraction=0.2, num_workers=1)
    assert dm.class_names == HF_NAMES
    assert len(dm.splits["train"]) == 12 and len(dm.splits["val"]) == 3
    assert sorted(dm.splits["val"].labels.tolist()) == [0, 1, 2]  # stratified
    _check_batch(next(iter(dm.train_dataloader())))


def test_streaming(tmp_path, saved, parquet):
    dm = _dm(tmp_path, saved, streaming=True, shuffle_buffer=8)
    assert dm.class_names == HF_NAMES
    batches = list(dm.train_dataloader())
    assert sum(len(b[1]) for b in batches) == 12
    dm = _dm(tmp_path, parquet, streaming=True, val_fraction=0.2)
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 3
    assert sum(len(b[1]) for b in dm.train_dataloader()) == 12


def test_bad_images_in_a_data_set(tmp_path):
    import datasets

    path = str(tmp_path / "bad")
    datasets.DatasetDict(train=hf_dataset(10, bad=2), validation=hf_dataset(4)).save_to_disk(path)
    dm = _dm(tmp_path, path, on_bad_image="skip", batch_size=5)
    assert sum(len(b[1]) for b in dm.train_dataloader() if b is not None) == 8
    report = dm.bad_image_report()
    assert report["count"] == 2 and "bad0.jpg" in report["files"][0]
    dm = _dm(tmp_path, path, on_bad_image="skip", streaming=True, shuffle_buffer=0)
    assert sum(len(b[1]) for b in dm.train_dataloader() if b is not None) == 8
    assert dm.bad_image_report()["count"] == 2
    dm = _dm(tmp_path, path)
    with pytest.raises(
        ConfigError,
        match=r"^unusable image train\[\d\] \(bad\d\.jpg\): .*truncated.*data\.on_bad_image=skip$",
    ):
        list(dm.train_dataloader())


def test_string_labels_and_column_errors(tmp_path):
    import datasets

    rows = hf_rows(9)
    rows["label"] = [HF_NAMES[i % 3] for i in range(9)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(rows, features=features)
    path = str(tmp_path / "s")
    ds.save_to_disk(path)
    dm = _dm(tmp_path, path, val_fraction=0.34)
    assert dm.class_names == HF_NAMES
    assert np.array_equal(np.sort(dm.splits["val"].labels), [0, 1, 2])
    with pytest.raises(ConfigError, match=r"data.image_column='img' is not a column.*\['image', 'label'\]"):
        _dm(tmp_path, path, image_column="img")
    with pytest.raises(ConfigError, match="data.train_split='training'"):
        _dm(tmp_path, path, train_split="training")
    with pytest.raises(ConfigError, match="does not exist"):
        _dm(tmp_path, str(tmp_path / "nowhere"))
