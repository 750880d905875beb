"""CSV cells a spreadsheet cannot run (OWASP's CSV-injection guidance): a text cell starting with
``= + - @``, a tab or a carriage return gets a leading apostrophe; numbers stay numbers, and vit-ft's own
readers get the text back as it was."""

from __future__ import annotations

import csv
import io

import pytest

from vit_ft.io import SafeCSVWriter, csv_safe, csv_text

FORMULAS = ["=cmd|' /C calc'!A0", "=HYPERLINK(\"http://x\",\"y\").png", "+1+2", "-2+3", "@SUM(A1)",
            "\t=1", "\r=1", "-", "'=already", "''=twice"]  # fmt: skip
PLAIN = ["cat", "'quoted", "a=b", " =spaced", "", "日本語", "/abs/=x.png"]
NUMBERS = ["-0.5", "+1", "-1e-05", "-inf", "nan", "3"]


@pytest.mark.parametrize("cell", FORMULAS)
def test_formula_cells_become_text_and_read_back(cell):
    safe = csv_safe(cell)
    assert safe == "'" + cell and csv_text(safe) == cell


@pytest.mark.parametrize("cell", PLAIN + NUMBERS)
def test_other_text_and_numbers_are_unchanged(cell):
    assert csv_safe(cell) == cell and csv_text(cell) == cell


def test_the_writer_neutralises_text_cells_only():
    buf = io.StringIO()
    w = SafeCSVWriter(buf, lineterminator="\n")
    w.writerow(["name", "loss", "n"])
    w.writerows([["=cmd|calc", -0.5, -3], ["-x", "-0.25", 7]])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows == [["name", "loss", "n"], ["'=cmd|calc", "-0.5", "-3"], ["'-x", "-0.25", "7"]]
