"""The last faults, through the real ``train.py`` and ``python -m vit_ft.report`` (one run folder, three
runs of the same command on data with hostile names: a class folder ``=cmd|calc``, an image
``=HYPERLINK(x).png``):

1. killed (SIGKILL) at its first checkpoint save;
2. re-run: the disk fills up under ``torch.save`` at the second save (a ``RuntimeError`` raised while
   handling the ``OSError``): one line naming the file, the previous checkpoint kept;
3. re-run: resumes and finishes.

All three log to the folder's one wandb run (offline); no CSV cell a spreadsheet would run as a formula;
the report of a copy of the folder with a damaged history.csv and metrics.json names both and shows no
stale picture."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from tests.helpers import ROOT, TINY, clean_env, make_image_folder, read_metrics, read_wandb_records
from vit_ft.io import FORMULA_STARTS, is_number

CLASS = "=cmd|calc"
IMAGE = "=HYPERLINK(x).png"

# train.py with the checkpoint file replaced by one on a disk that fills up (FAULT=enospc: at the second
# save, the real torch.save wrapping the OSError) or a SIGKILL at the first save (FAULT=kill)
WRAPPER = """
import errno, os, runpy, signal, sys
from vit_ft.training import checkpoint_io

class FillingFile(__import__("io").FileIO):
    def write(self, b):
        if self.tell() + len(b) > 4096:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)

saves, fault = [], os.environ["FAULT"]
def open_checkpoint_file(path):
    saves.append(path)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "enospc" and len(saves) == 2:
        return FillingFile(path, "wb")
    return open(path, "wb")
checkpoint_io.open_checkpoint_file = open_checkpoint_file
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def hostile_folder(root):
    data = make_image_folder(root, n_train=8, n_val=3)
    for split in ("train", "val"):
        (data / split / "cross").rename(data / split / CLASS)
    first = sorted((data / "val" / "circle").iterdir())[0]
    Image.open(first).save(data / "val" / "circle" / IMAGE)
    first.unlink()
    return data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("last_faults")
    data = hostile_folder(tmp / "data")
    wrapper = tmp / "train_faults.py"
    wrapper.write_text(WRAPPER.format(script=str(ROOT / "train.py")))
    run_dir = tmp / "run"
    args = [*TINY, f"data.root={data}", "trainer.max_epochs=2", "test=false", "~callbacks.model_checkpoint",
            "~callbacks.run_report", f"hydra.run.dir={run_dir}"]  # fmt: skip
    procs = {}
    for fault in ("kill", "enospc", "none"):
        env = {**clean_env(tmp), "WANDB_MODE": "offline", "FAULT": fault}
        procs[fault] = subprocess.run([sys.executable, str(wrapper), *args], cwd=tmp, env=env,
                                      capture_output=True, text=True, timeout=300)  # fmt: skip
        if fault == "kill":
            ckpts = run_dir / "checkpoints"
            procs["after_kill"] = sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []
        if fault == "enospc":
            procs["kept"] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    return tmp, run_dir, procs


def test_a_disk_full_behind_torch_saves_wrapper_names_the_file(runs):
    tmp, run_dir, procs = runs
    assert procs["kill"].returncode == -9 and procs["after_kill"] in ([], ["last.ckpt.tmp"])
    p = procs["enospc"]
    assert p.returncode == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    last = run_dir / "checkpoints" / "last.ckpt"
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: cannot write checkpoint {last}: the disk is full (No space left on device")
    assert err.endswith("; the previous checkpoint is kept")
    assert procs["kept"]["epoch"] == 0  # epoch 0's, whole


def test_one_run_folder_is_one_wandb_run(runs):
    tmp, run_dir, procs = runs
    assert procs["none"].returncode == 0, procs["none"].stderr[-3000:]
    assert read_metrics(run_dir)["status"] == "completed"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 3 and {f.name.rsplit("-", 1)[-1] for f in folders} == {run_id}
    steps = []  # across the three: the restart and the resume log no step twice, and none is missing
    for f in folders:
        for rec in read_wandb_records(next(f.glob("run-*.wandb"))):
            if rec.WhichOneof("record_type") == "history":
                h = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                if "train/loss" in h:
                    steps.append(int(h["trainer/global_step"]))
    assert sorted(steps) == sorted(set(steps)) == list(range(read_metrics(run_dir)["global_step"]))


def cells(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_no_csv_cell_is_a_formula(runs):
    tmp, run_dir, procs = runs
    assert procs["none"].returncode == 0, procs["none"].stderr[-3000:]
    preds = cells(run_dir / "val_predictions.csv")
    header, rows = preds[0], preds[1:]
    labels = {r[header.index("true_label")] for r in rows}
    assert f"'{CLASS}" in labels and CLASS not in labels  # shown as text by a spreadsheet
    assert any(r[header.index("file")].endswith(f"/{IMAGE}") for r in rows)
    for path in (
        run_dir / "val_predictions.csv",
        run_dir / "history.csv",
        run_dir / "report" / "mistakes.csv",
    ):
        for row in cells(path) if path.is_file() else []:
            for c in row:
                assert not c.startswith(FORMULA_STARTS) or is_number(c), (path.name, c)
    losses = [c for r in cells(run_dir / "history.csv")[1:] for c in r if c.startswith("-")]
    assert all(is_number(c) for c in losses)  # a negative number stays a number
    # JSON and what vit-ft reads back are the names as they are
    per_class = read_metrics(run_dir)["analysis"]["per_class"]
    assert CLASS in per_class
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "'=cmd" not in md and "=cmd\\|calc" in md


def test_the_report_names_unreadable_inputs_and_drops_the_stale_curves(runs):
    tmp, run_dir, procs = runs
    assert procs["none"].returncode == 0, procs["none"].stderr[-3000:]
    copy = tmp / "damaged"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    assert (copy / "report" / "curves.png").is_file()
    text = (copy / "history.csv").read_bytes().splitlines(keepends=True)
    text[3] = b'"' + text[3]  # a quote never closed
    (copy / "history.csv").write_bytes(b"".join(text) + b"\x00\xff")
    metrics = (copy / "metrics.json").read_bytes()
    (copy / "metrics.json").write_bytes(metrics[: len(metrics) // 2])
    env = {
        **clean_env(tmp),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run([sys.executable, "-m", "vit_ft.report", str(copy)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("warning: metrics.json cannot be read: not valid JSON (")
    assert lines[1].startswith("warning: history.csv cannot be read: a NUL byte at line ")
    assert not (copy / "report" / "curves.png").exists()
    md = (copy / "report.md").read_text(encoding="utf-8")
    assert "- status: unknown: `metrics.json` cannot be read" in md and "still going" not in md
    assert "- `history.csv`: a NUL byte at line" in md and "report/curves.png" not in md
