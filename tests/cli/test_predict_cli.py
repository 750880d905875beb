"""predict.py through the real CLI: top-k lines on stdout, a JSONL file, unusable images skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SHAPE_CLASSES as CLASSES
from tests.helpers import run_cli
from vit_ft.data.folder import find_images

transformers = pytest.importorskip("transformers")


def test_cli_prints_and_writes_jsonl(hf_dir, image_folder, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for p in find_images(str(image_folder / "val"))[:3]:
        (images / Path(p).name).write_bytes(Path(p).read_bytes())
    (images / "zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "o" / "preds.jsonl"
    proc = run_cli(
        "predict.py",
        f"weights={hf_dir}",
        f"images={images}",
        "topk=2",
        f"out={out}",
        "batch_size=2",
        "on_bad_image=skip",
        tmp_path=tmp_path,
    )
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(lines) == 3 and all(len(r["topk"]) == 2 for r in lines)
    first = lines[0]["topk"][0]
    assert set(first) == {"index", "label", "prob"} and first["label"] == CLASSES[first["index"]]
    assert f"{lines[0]['image']}\n  {first['prob']:.4f}  {first['label']}" in proc.stdout
    assert "skipping unusable image" in proc.stderr and "zz_broken.png" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # predict writes nothing but out=
