"""Folders with clutter and bad files: skip mode counts, error mode says one clear line, workers survive."""

from __future__ import annotations

import gc
import logging
import os

import pytest
import torch

from tests.helpers import bad_images, class_folder, unusual_images, write
from vit_ft.data import ImageFolderDataModule
from vit_ft.data.bad_images import UnusableImageError
from vit_ft.errors import ConfigError
from vit_ft.preprocessing import Preprocessing


def _messy(root: str) -> int:
    """train/ and val/ with 2 classes, every unusual image, clutter, an empty class folder, bad files."""
    for split, n in (("train", 6), ("val", 3)):
        class_folder(os.path.join(root, split), {"cat": n, "dog": n}, seed=len(split))
        write(os.path.join(root, split, "cat"), unusual_images())
        write(os.path.join(root, split, "dog", ".ipynb_checkpoints"), {"x.jpg": b"junk"})
        write(
            os.path.join(root, split, "dog"), {".DS_Store": b"\0\1", "notes.txt": b"hi", "._x.jpg": b"junk"}
        )
        os.makedirs(os.path.join(root, split, "zebra"))  # empty class folder
    write(os.path.join(root, ".hidden_class"), {"a.jpg": b"junk"})
    write(os.path.join(root, "train", "dog"), bad_images())
    return len(bad_images())


def _dm(root, **kw) -> ImageFolderDataModule:
    args = dict(batch_size=4, num_workers=0, persistent_workers=False, pin_memory=False)
    args.update(kw)
    dm = ImageFolderDataModule(root=str(root), **args)
    dm.configure_preprocessing(Preprocessing(32))
    return dm


def _all_batches(loader) -> int:
    n = 0
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32) and y.dtype == torch.int64
        n += len(y)
    return n


def test_skip_mode_counts_each_bad_file_once_across_workers(tmp_path, caplog):
    n_bad = _messy(str(tmp_path))
    dm = _dm(tmp_path, on_bad_image="skip", num_workers=2, persistent_workers=True)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.class_names == ["cat", "dog"]  # zebra (empty) left out, with a warning
    assert any("zebra" in r.getMessage() and "no images" in r.getMessage() for r in caplog.records)
    n_train = len(dm.splits["train"])
    assert n_train == 2 * 6 + len(unusual_images()) + n_bad  # clutter and hidden files not indexed
    loader = dm.train_dataloader()
    # Shuffled with drop_last: a bad file can sit in the dropped tail of an epoch and go unread (so
    # uncounted) there; over 6 epochs each is read at least once (a miss is ~(3/25)^6), and counted once.
    for _epoch in range(6):
        seen = _all_batches(loader)
        assert n_train - n_bad - 4 < seen <= n_train - n_bad  # bad files left out; drop_last may drop < 4
    report = dm.bad_image_report()
    assert report["count"] == n_bad and report["by_split"]["train"] == n_bad
    assert sorted(os.path.basename(p) for p in report["files"]) == sorted(bad_images())
    assert _all_batches(dm.val_dataloader()) == 2 * 3 + len(unusual_images())


def test_skip_mode_logs_each_file_once(tmp_path, caplog):
    _messy(str(tmp_path))
    dm = _dm(tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="vit_ft.data.datamodule"):
        for _ in range(2):
            _all_batches(dm.train_dataloader())
    skipped = [r.getMessage() for r in caplog.records if "skipping unusable image" in r.getMessage()]
    assert len(skipped) == len(bad_images()) == len(set(skipped))


@pytest.mark.parametrize("workers", [0, 1])
def test_error_mode_is_one_line_naming_file_and_option(tmp_path, workers):
    root = tmp_path / "d"
    class_folder(str(root), {"a": 3, "b": 3})
    write(str(root / "a"), {"broken.jpg": bad_images()["truncated.jpg"]})
    dm = _dm(root, num_workers=workers, val_fraction=0.0001, batch_size=16)
    with pytest.raises(ConfigError) as e:
        _all_batches(dm.train_dataloader())
    assert isinstance(e.value, UnusableImageError)
    msg = str(e.value)
    assert "\n" not in msg and "broken.jpg" in msg and "data.on_bad_image=skip" in msg and "truncated" in msg


def test_train_and_val_with_different_classes(tmp_path):
    class_folder(str(tmp_path / "train"), {"cat": 2, "dog": 2, "owl": 2})
    class_folder(str(tmp_path / "val"), {"cat": 1, "dog": 1, "emu": 1})
    with pytest.raises(ConfigError, match=r"only in train: \['owl'\].*only in val: \['emu'\]"):
        _dm(tmp_path).setup()


def test_index_is_numpy_backed(tmp_path):
    class_folder(str(tmp_path), {"a": 4, "b": 4})
    dm = _dm(tmp_path)
    dm.setup()
    index = dm.splits["train"].index
    # one byte a character, relative to the root: ~56 MiB for ImageNet's 1.28M paths, not ~270
    assert index.paths.dtype.kind == "S" and index.labels.dtype == "int64"
    assert not os.path.isabs(os.fsdecode(index.paths[0])) and index.root == str(tmp_path)
    assert all(os.path.isfile(index.path(i)) for i in range(len(index)))


def test_public_transform_dataset_and_training_on_the_eval_transform(tmp_path):
    class_folder(str(tmp_path / "train"), {"a": 3, "b": 3})
    class_folder(str(tmp_path / "val"), {"a": 1, "b": 1})
    dm = _dm(tmp_path, auto_augment=None)
    dm.setup()
    train_tf, eval_tf = dm.transform(True), dm.transform(False)
    assert repr(train_tf) != repr(eval_tf)
    ds = dm.dataset("train", eval_tf, train=False)
    x, y = ds[0]
    assert len(ds) == 6 and x.shape == (3, 32, 32) and y == int(dm.splits["train"].labels[0])
    assert torch.equal(x, eval_tf(dm.splits["train"].source(0)))
    dm.train_with_eval_transform()
    assert repr(dm.transform(True)) == repr(eval_tf)
    x_loader, _ = next(iter(dm.train_dataloader()))
    rows = [eval_tf(dm.splits["train"].source(i)) for i in range(6)]
    assert all(any(torch.equal(r, row) for row in rows) for r in x_loader)  # no random crop or flip


class _FreezeCount(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return gc.get_freeze_count()


def test_workers_freeze_inherited_objects(tmp_path):
    """Loader workers gc.freeze() what they inherit, so their GC never copies the parent's pages."""
    class_folder(str(tmp_path), {"a": 4, "b": 4})
    dm = _dm(tmp_path, num_workers=1, persistent_workers=False)
    loader = dm.train_dataloader()
    loader = torch.utils.data.DataLoader(_FreezeCount(), num_workers=1, worker_init_fn=loader.worker_init_fn)
    assert all(n > 1000 for n in torch.cat(list(loader)).tolist())
