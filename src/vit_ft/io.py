"""Files that appear complete or not at all: written beside the target, then renamed over it; and CSV
cells that a spreadsheet opening the file shows as text, never runs as a formula.

A crash, a full disk or a kill mid-write leaves the old file (or none) and no stray temporary.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error delete it.

    ``suffix`` is appended to the file name (keep the extension, e.g. ``.tmp.png``, when the writer
    infers the format from it)."""
    target = Path(path)
    tmp = target.with_name(target.name + suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only or vanished folder: the original error is the one to report
            pass
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """``payload`` as indented JSON with sorted keys (stable diffs between runs)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


# -- CSV cells a spreadsheet cannot run ---------------------------------------------------------------------
# A text cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (a class
# named "=cmd|calc", a file "=HYPERLINK(...).png"): OWASP's CSV-injection guidance, a leading apostrophe.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_safe(cell: Any) -> Any:
    """``cell`` as a spreadsheet shows it as text: a string that starts (after any apostrophes) with a
    formula character gets one more leading apostrophe; numbers, and strings that are numbers (``-0.5``),
    stay as they are. :func:`csv_text` undoes it (also for a name that began with an apostrophe)."""
    if not isinstance(cell, str) or not cell.lstrip("'").startswith(FORMULA_STARTS):
        return cell
    if not cell.startswith("'") and is_number(cell):
        return cell
    return "'" + cell


def csv_text(cell: str | None) -> str | None:
    """A cell as written before :func:`csv_safe` (for the readers of vit-ft's own CSV files)."""
    if cell and cell.startswith("'") and cell.lstrip("'").startswith(FORMULA_STARTS):
        return cell[1:]
    return cell


class SafeCSVWriter:
    """``csv.writer`` whose text cells go through :func:`csv_safe` (every CSV vit-ft writes uses it)."""

    def __init__(self, f: Any, **kwargs: Any) -> None:
        self.writer = csv.writer(f, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self.writer.writerow([csv_safe(c) for c in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)
