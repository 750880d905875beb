"""``python -m vit_ft.data.scan``: all bad files reported, exit status non-zero when there are any."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from tests.helpers import bad_images, class_folder, unusual_images, write
from vit_ft.data import scan


def test_scan_reports_bad_files(tmp_path):
    root = tmp_path / "d"
    class_folder(str(root), {"a": 30, "b": 20})
    write(str(root / "a"), unusual_images())
    write(str(root / "b"), bad_images())
    write(str(root / ".cache"), {"junk.jpg": b"junk"})  # hidden: not scanned
    report = tmp_path / "r.csv"
    assert scan.main([str(root), "--report", str(report), "--workers", "2"]) == 1
    rows = list(csv.DictReader(open(report)))
    assert sorted(os.path.basename(r["path"]) for r in rows) == sorted(bad_images())
    assert all(r["reason"] for r in rows)
    good = tmp_path / "good"
    class_folder(str(good), {"a": 2})
    out = subprocess.run(
        [sys.executable, "-m", "vit_ft.data.scan", str(good), "--report", str(tmp_path / "g.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "g.json").read_text())["bad"] == [] and "checked 2 images" in out.stdout
