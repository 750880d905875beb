"""A run file that is there but cannot be read (cut short, NUL or 0xFF bytes, a quote never closed) is
named with what is wrong, on stderr and in report.md, and no picture older than its data is shown as
current: removed when the report is redrawn, marked with ``--no-draw``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tests.unit.report.test_report import CONFUSION, NAMES, fake_run, linked
from vit_ft.report import build_report, figures, read_run
from vit_ft.report.build import REPORT_DIR

HISTORY_DAMAGE = {
    "quote": (
        b'1,0,0.5,0.01,,\n2,0,"0.4,0.01,,\n3,0,0.3,0.01,,\n',
        "a quoted cell is never closed (from line 3)",
    ),
    "nul": (b"1,0,0.5,0.01,,\n2,0,0.4\x00\x00,0.01,,\n", "a NUL byte at line 3"),
    "0xff": (b"1,0,0.5,0.01,,\n2,0,\xff\xfe,0.01,,\n", "byte 0xff at line 3 is not UTF-8 text"),
    "cells": (b"1,0,0.5,0.01\n", "line 2 has 4 cells, the header 6"),
    "text": (b"1,0,abc,0.01,,\n", "row 1: train/loss = 'abc' is not a number"),
}
HEADER = b"step,epoch,train/loss,train/lr,val/acc1,val/loss\n"


def report_cli(run, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vit_ft.report", str(run), *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize("kind", sorted(HISTORY_DAMAGE))
def test_a_damaged_history_is_named_and_gives_no_rows(tmp_path, kind):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    body, what = HISTORY_DAMAGE[kind]
    (run / "history.csv").write_bytes(HEADER + body)
    files = read_run(run)
    assert files.history == [] and what in files.problems["history.csv"]
    assert list(files.problems) == ["history.csv"] and files.metrics is not None  # the rest is read


def test_a_redraw_removes_the_curves_of_an_unreadable_history(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    build_report(run)
    curves = run / REPORT_DIR / figures.CURVES
    assert curves.is_file()
    (run / "history.csv").write_bytes(HEADER + HISTORY_DAMAGE["quote"][0])
    proc = report_cli(run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "warning: history.csv cannot be read: a quoted cell is never closed (from line 3); "
        "left out of the report"
    ]
    assert not curves.exists()  # never the old curves shown as the run's
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "- `history.csv`: a quoted cell is never closed (from line 3)" in md
    assert "- Training curves: `history.csv` cannot be read: a quoted cell is never closed" in md
    assert f"{REPORT_DIR}/{figures.CURVES}" not in linked(md)
    assert f"{REPORT_DIR}/{figures.CONFUSION}" in linked(md)  # drawn from the predictions, as before


def test_no_draw_marks_pictures_older_than_their_data(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    build_report(run)
    curves = run / REPORT_DIR / figures.CURVES
    old = curves.stat().st_mtime_ns
    os.utime(run / "history.csv", ns=(old + 10**9, old + 10**9))  # history.csv written after the picture
    md = build_report(run, draw=False).read_text(encoding="utf-8")
    assert curves.is_file() and curves.stat().st_mtime_ns == old  # --no-draw keeps it, but says so
    assert "> Out of date: `history.csv` changed after it was drawn; rebuild without `--no-draw`" in md
    assert md.count("> Out of date") == 1  # the other pictures are newer than their data
    (run / "val_predictions.csv").write_bytes(b"index,file\n1,\xff\n")
    md = build_report(run, draw=False).read_text(encoding="utf-8")
    assert md.count("> Out of date: `val_predictions.csv` cannot be read (byte 0xff at line 2") == 4


def test_a_cut_metrics_json_is_not_a_run_still_going(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    text = (run / "metrics.json").read_text(encoding="utf-8")
    (run / "metrics.json").write_text(text[: len(text) // 2], encoding="utf-8")
    proc = report_cli(run, "--no-draw")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("warning: metrics.json cannot be read: not valid JSON (")
    assert line.endswith("cut short or damaged; left out of the report")
    md = (run / "report.md").read_text(encoding="utf-8")
    assert (
        "still going" not in md and "- status: unknown: `metrics.json` cannot be read (not valid JSON" in md
    )
    (run / "metrics.json").write_text("[1, 2]", encoding="utf-8")
    assert read_run(run).problems == {"metrics.json": "holds a JSON list, not an object"}


def test_unreadable_predictions_and_config_are_named(tmp_path):
    run = fake_run(tmp_path / "run", NAMES, CONFUSION)
    (run / "val_predictions.csv").write_text("index,file,true_index\n0,a.jpg,x\n", encoding="utf-8")
    (run / "config_resolved.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    problems = read_run(run).problems
    assert problems["val_predictions.csv"] == "row 1: invalid literal for int() with base 10: 'x'"
    assert problems["config_resolved.yaml"].startswith("not valid YAML: ")
    md = build_report(run).read_text(encoding="utf-8")
    assert "- Most confident mistakes: `val_predictions.csv` cannot be read: row 1" in md
