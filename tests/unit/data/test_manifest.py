"""Manifests (CSV, JSONL): rows to records, the task decision, bad rows, the same targets as a folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import make_image_folder, make_multilabel_manifest
from vit_ft.data import ImageFolderDataModule, ManifestDataModule
from vit_ft.data.manifest import decide_task
from vit_ft.errors import ConfigError


def _dm(**kw):
    return ManifestDataModule(batch_size=4, num_workers=0, **kw)


@pytest.fixture(scope="module")
def ml_root(tmp_path_factory):
    return make_multilabel_manifest(tmp_path_factory.mktemp("ml"), n_train=10, n_val=6)


def test_multilabel_csv_targets_and_auto_task(ml_root, caplog):
    dm = _dm(train=str(ml_root / "train.csv"), val=str(ml_root / "val.csv"))
    dm.setup()
    assert dm.class_names == ["blue", "green", "red"]
    with caplog.at_level("INFO"):
        assert dm.configure_task("auto") == "multilabel"
    assert "model.task=auto: multilabel" in caplog.text
    lines = (ml_root / "train.csv").read_text().splitlines()[1:]
    ds = dm.dataset("train", lambda p: p, train=False)
    for i, line in enumerate(lines):
        want = torch.tensor([float(c in line.split(",")[1].split()) for c in dm.class_names])
        path, y = ds[i]
        assert path.endswith(line.split(",")[0]) and torch.equal(y, want)
    assert dm.splits["train"].multi_hot_all().sum() == sum(len(ln.split(",")[1].split()) for ln in lines)
    with pytest.raises(ConfigError, match="bad row|no label"):
        _dm(train=str(ml_root / "train.csv"), val=str(ml_root / "val.csv")).configure_task("single")


def test_jsonl_lists_and_strings_absolute_paths(ml_root, tmp_path):
    rows = [
        {"image": str(ml_root / "img/train_0.png"), "labels": ["red", "green"]},
        {"image": str(ml_root / "img/train_1.png"), "labels": "blue"},
        {"image": str(ml_root / "img/train_2.png"), "labels": ""},
    ]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = _dm(train=str(tmp_path / "t.jsonl"), val=str(tmp_path / "t.jsonl"), classes=["red", "green", "blue"])
    assert dm.configure_task("auto") == "multilabel"
    assert dm.class_names == ["red", "green", "blue"]
    assert dm.splits["val"].multi_hot_all().tolist() == [[1, 1, 0], [0, 0, 1], [0, 0, 0]]


def test_bad_rows_error_one_line_or_skip_counted_named(ml_root, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text(
        "image,labels\n"
        f"{ml_root}/img/train_0.png,red\n"
        "gone.png,red\n"
        ",green\n"
        f"{ml_root}/img/train_1.png,purple\n"
        f"{ml_root}/img/train_2.png,blue\n"
    )
    with pytest.raises(
        ConfigError, match=r"bad row bad.csv:3: missing file gone.png; .*on_bad_image=skip"
    ) as e:
        _dm(train=str(csv), val=str(csv), classes=["red", "green", "blue"]).setup()
    assert "\n" not in str(e.value)
    dm = _dm(train=str(csv), val=str(csv), classes=["red", "green", "blue"], on_bad_image="skip")
    dm.setup()
    assert len(dm.splits["train"]) == 2
    rep = dm.bad_image_report()
    assert rep["count"] == 6 and rep["by_split"] == {"train": 3, "val": 3}
    assert any("bad.csv:5" in f and "purple" in f for f in rep["files"])
    assert any("empty image" in f for f in rep["files"])


def test_single_label_manifest_equals_image_folder(tmp_path):
    root = make_image_folder(tmp_path / "f", n_train=4, n_val=2)
    folder = ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0)
    folder.setup()
    lines = {}
    for split in ("train", "val"):
        rec = folder.splits[split]
        rows = [f"{rec.index.paths[i].decode()},{folder.class_names[rec.labels[i]]}" for i in range(len(rec))]
        (root / f"{split}.csv").write_text("image,labels\n" + "\n".join(rows) + "\n")
        lines[split] = rows
    dm = _dm(train=str(root / "train.csv"), val=str(root / "val.csv"))
    assert dm.configure_task("auto") == "single"
    assert dm.class_names == folder.class_names
    for split in ("train", "val"):
        a = folder.dataset(split, lambda p: p, train=False)
        b = dm.dataset(split, lambda p: p, train=False)
        assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    # the training order is the folder's too (EpochSampler over the same length and seed)
    folder.configure_batch(1), dm.configure_batch(1)
    assert list(folder.train_dataloader().sampler) == list(dm.train_dataloader().sampler)


def test_multilabel_on_folder_data_refused_and_unset_manifest(tmp_path):
    root = make_image_folder(tmp_path / "f", n_train=2, n_val=1)
    folder = ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0)
    with pytest.raises(ConfigError, match="model.task=multilabel needs label sets"):
        folder.configure_task("multilabel")
    with pytest.raises(ConfigError, match="data.train is not set"):
        _dm(train="???").setup()
    with pytest.raises(ConfigError, match="model.task='multi' must be one of auto, single, multilabel"):
        decide_task("multi", [np.array([1])])


def test_hf_sequence_classlabel_column_gives_label_sets(tmp_path):
    import datasets

    from tests.helpers import hf_rows
    from vit_ft.data import HFDataModule

    rows = hf_rows(6)
    rows["label"] = [[0, 2], [1], [], [2], [0], [1, 2]]
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"]))}
    )
    ds = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict(train=ds, validation=ds).save_to_disk(str(tmp_path / "hf"))
    dm = HFDataModule(name=str(tmp_path / "hf"), batch_size=2, num_workers=0)
    assert dm.configure_task("auto") == "multilabel" and dm.class_names == ["a", "b", "c"]
    assert dm.splits["val"].multi_hot_all().astype(int).tolist() == [
        [1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]
    ]  # fmt: skip
    _, y = dm.dataset("train", lambda src: 0, train=False)[5]
    assert y.tolist() == [0.0, 1.0, 1.0]
    single = HFDataModule(name=str(tmp_path / "hf"), batch_size=2, num_workers=0)
    assert (
        single.configure_task("single") == "single" and len(single.splits["train"]) == 5
    )  # the empty row out
    assert single.splits["train"].labels.tolist() == [0, 1, 2, 0, 1]
