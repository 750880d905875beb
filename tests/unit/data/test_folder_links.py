"""Folder links are followed once per real folder: a loop or a second link finds no image twice, in
the training data, ``python -m vit_ft.data.scan`` and predict.py's inputs; a link leaving the data
root is followed with one warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image

from vit_ft.data.folder import find_images, index_image_folder
from vit_ft.data.scan import iter_images


def make_linked_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "far.png")
    for split in ("train", "val"):
        for cls in ("blue", "red"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(d / f"{i}.png")
    red = root / "train" / "red"
    os.symlink(".", red / "self")  # a loop onto itself
    (red / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(red / "sub" / "s.png")
    os.symlink("..", red / "sub" / "up")  # a loop through the parent
    os.symlink("sub", red / "again")  # a second way into sub
    os.symlink(outside, root / "train" / "blue" / "far")  # leaves the data root
    os.symlink("../blue", red / "blue")  # into another class folder: its images stay blue's
    return root


def test_training_data_scan_and_predict_inputs_count_every_image_once(tmp_path, caplog):
    root = make_linked_root(tmp_path)
    with caplog.at_level(logging.WARNING):
        names, splits = index_image_folder(str(root))
        paths = find_images(str(root / "train"))
        scanned = list(iter_images(str(root / "train")))
    assert names == ["blue", "red"]
    train = [splits["train"].path(i) for i in range(len(splits["train"]))]
    assert len(train) == 3 + 1 + 3 + 1  # blue + far (outside, once) + red + sub (once)
    assert len(splits["val"]) == 6
    for found in (train, paths, scanned):
        reals = [os.path.realpath(p) for p in found]
        assert len(found) == 8 and len(set(reals)) == 8, found
    outside_warnings = [r for r in caplog.records if "outside" in r.getMessage()]
    assert len(outside_warnings) == 3  # once per walk (training data, predict, scan), naming the link
    assert all("blue/far links to" in r.getMessage() for r in outside_warnings)
