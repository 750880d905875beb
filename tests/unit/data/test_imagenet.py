"""ImageNet layout: the standard ILSVRC-2012 class index, a flat val folder, the cached index."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.helpers import IMAGENET_WNIDS, class_folder, make_imagenet, photo
from vit_ft.data import ImageNetDataModule
from vit_ft.data import imagenet as inet
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing


def _labels_by_wnid(index) -> dict[str, int]:
    out = {}
    for i in range(len(index)):
        path = index.path(i)
        wnid = os.path.basename(os.path.dirname(path)) if "train" in path else None
        if wnid:
            out[wnid] = int(index.labels[i])
    return out


def test_partial_imagenet_uses_the_standard_index(tmp_path):
    root = make_imagenet(str(tmp_path / "imagenet"))
    names, splits = inet.index_imagenet(root, cache_dir=str(tmp_path / "cache"))
    assert len(names) == 1000 and names[0].startswith("tench") and names[999].startswith("toilet tissue")
    assert _labels_by_wnid(splits["train"]) == IMAGENET_WNIDS
    assert len(splits["train"]) == 12 and len(splits["val"]) == 8
    # flat val: labels from LOC_val_solution.csv, the same index
    val = splits["val"]
    got = {os.path.basename(val.path(i)): int(val.labels[i]) for i in range(len(val))}
    assert got["ILSVRC2012_val_00000001.JPEG"] == 999 and got["ILSVRC2012_val_00000004.JPEG"] == 0
    assert sorted(set(got.values())) == sorted(IMAGENET_WNIDS.values())
    assert all(os.path.isfile(val.path(i)) for i in range(len(val)))
    assert splits["train"].paths.dtype.kind == "S"  # compact bytes paths, relative to the root


def test_present_class_index_and_class_folder_val(tmp_path):
    root = make_imagenet(str(tmp_path / "imagenet"), flat_val=False)
    names, splits = inet.index_imagenet(root, class_index="present", cache_dir=None)
    assert len(names) == 4 and names[0].startswith("tench")
    assert sorted(set(splits["train"].labels.tolist())) == [0, 1, 2, 3]
    assert sorted(set(splits["val"].labels.tolist())) == [0, 1, 2, 3]


def test_index_is_cached_and_refreshed_when_a_folder_changes(tmp_path, monkeypatch):
    root = make_imagenet(str(tmp_path / "imagenet"))
    cache = str(tmp_path / "cache")
    inet.index_imagenet(root, cache_dir=cache)
    assert len(os.listdir(cache)) == 1
    build = inet._build
    monkeypatch.setattr(inet, "_build", lambda *a: pytest.fail("walked the tree although the cache is valid"))
    _, splits = inet.index_imagenet(root, cache_dir=cache)
    assert len(splits["train"]) == 12
    # a new file in a class folder changes that folder's mtime: the index is rebuilt
    d = os.path.join(root, "train", "n01440764")
    photo(40, 30).save(os.path.join(d, "new.JPEG"))
    st = os.stat(d)
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    monkeypatch.setattr(inet, "_build", lambda *a: calls.append(1) or build(*a))
    _, splits = inet.index_imagenet(root, cache_dir=cache)
    assert calls and len(splits["train"]) == 13


def test_errors(tmp_path):
    root = make_imagenet(str(tmp_path / "a"))
    os.remove(os.path.join(root, "LOC_val_solution.csv"))
    with pytest.raises(ConfigError, match="data.val_labels"):
        inet.index_imagenet(root, cache_dir=None)
    root = make_imagenet(str(tmp_path / "b"), flat_val=False)
    class_folder(os.path.join(root, "train"), {"n99999999": 1, "cats": 1})
    with pytest.raises(ConfigError, match=r"not ILSVRC-2012 classes: \['cats', 'n99999999'\]"):
        inet.index_imagenet(root, cache_dir=None)


def test_datamodule_batches(tmp_path):
    root = make_imagenet(str(tmp_path / "imagenet"))
    dm = ImageNetDataModule(
        root=root, cache_dir=str(tmp_path / "c"), batch_size=4, num_workers=0, persistent_workers=False
    )
    dm.configure_preprocessing(Preprocessing(32, interpolation="bicubic"))
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    assert set(y.tolist()) <= set(IMAGENET_WNIDS.values())
    assert np.isin(dm.splits["train"].labels, list(IMAGENET_WNIDS.values())).all()
