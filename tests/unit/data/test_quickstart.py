"""The quickstart data set: made once, deterministically, of real image files."""

from __future__ import annotations

import hashlib

from vit_ft.data.quickstart import CLASSES, make_quickstart_dataset


def digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_quickstart_data_is_deterministic_real_files(tmp_path):
    a = make_quickstart_dataset(str(tmp_path / "a"), n_train=3, n_val=2, size=24)
    b = make_quickstart_dataset(str(tmp_path / "b"), n_train=3, n_val=2, size=24)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    files = sorted((tmp_path / "a" / "train" / CLASSES[0]).iterdir())
    assert {f.suffix for f in files} == {".jpg"} or {f.suffix for f in files} == {".jpg", ".png"}
    assert make_quickstart_dataset(a) == a  # second call reuses it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".quickstart-")]  # no leftovers
    del b
