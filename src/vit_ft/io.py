"""Files that appear complete or not at all: written beside the target, then renamed over it.

A crash, a full disk or a kill mid-write leaves the old file (or none) and no stray temporary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
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
