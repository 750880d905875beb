"""What a run folder holds, read without Lightning or Hydra: the config, ``metrics.json``, ``history.csv``
and ``<split>_predictions.csv`` (their formats are in the README's "What a run leaves").

Every reader returns None (or an empty list) for a file that is missing or unreadable: a report is built
from whatever exists, also for a run that was interrupted or is still going. A file that is there but
cannot be read (cut short, NUL or non-UTF-8 bytes, a quote never closed) is named with what is wrong in
:attr:`RunFiles.problems`: the report says so instead of passing it over as missing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vit_ft.io import csv_text, is_number

METRICS_JSON = "metrics.json"
HISTORY_CSV = "history.csv"
CONFIG_FILES = ("config_resolved.yaml", os.path.join(".hydra", "config.yaml"))
PREDICTIONS_SUFFIX = "_predictions.csv"
HF_NAME = re.compile(
    r"^\S+\[\d+\] \((?P<path>.*)\)$"
)  # records.name(i) of a Hugging Face row: "split[i] (path)"


class NotARunError(ValueError):
    """The folder holds none of the files a vit-ft run leaves."""


class Unreadable(ValueError):
    """A run file that exists but cannot be read; the message says what is wrong (one line)."""


def read_text(path: Path) -> str:
    """The file as UTF-8 text; :class:`Unreadable` for NUL bytes or bytes that are not UTF-8 (a file
    damaged by a crash or a disk fault); OSError as raised (a missing file: not a problem to report)."""
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise Unreadable(f"a NUL byte at line {line} (the file is damaged)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise Unreadable(
            f"byte 0x{data[e.start]:02x} at line {line} is not UTF-8 text (the file is damaged)"
        ) from None


def csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, read strictly: a quote never closed, or a row with more or fewer cells
    than the header, is :class:`Unreadable` (the lenient reading would take the rest of the file as one
    cell). Cells as written before :func:`vit_ft.io.csv_safe`."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), strict=True)
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            if header is None:
                header = [csv_text(c) or "" for c in row]
            elif row:
                if len(row) != len(header):
                    raise Unreadable(f"line {start} has {len(row)} cells, the header {len(header)}")
                rows.append(dict(zip(header, (csv_text(c) or "" for c in row))))
            start = reader.line_num + 1
    except csv.Error as e:
        what = "a quoted cell is never closed" if "end of data" in str(e) else str(e)
        raise Unreadable(f"{what} (from line {start})") from None
    return rows


def is_run_dir(run_dir: str | os.PathLike) -> bool:
    d = Path(run_dir)
    names = (METRICS_JSON, HISTORY_CSV, *CONFIG_FILES)
    return d.is_dir() and (any((d / n).is_file() for n in names) or bool(predictions_files(d)))


def number(v: Any) -> float | None:
    """``v`` as a finite float, else None (an empty CSV cell, null, nan, text)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_config(
    run_dir: Path, problems: dict[str, str] | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """The run's config (``config_resolved.yaml`` first, else ``.hydra/config.yaml``) and its file name;
    one that exists but cannot be read goes into ``problems``."""
    import yaml

    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            try:
                cfg = yaml.safe_load(read_text(path))
            except (Unreadable, yaml.YAMLError) as e:
                note(
                    problems,
                    name,
                    f"not valid YAML: {first_line(e)}" if isinstance(e, yaml.YAMLError) else str(e),
                )
                continue
            except OSError as e:
                note(problems, name, e.strerror or str(e))
                continue
            if isinstance(cfg, dict):
                return cfg, name
            note(problems, name, f"holds {type(cfg).__name__}, not a mapping of settings")
    return None, None


def load_metrics(run_dir: Path, problems: dict[str, str] | None = None) -> dict[str, Any] | None:
    """``metrics.json``; None when it is missing, or unreadable (then named in ``problems``)."""
    path = run_dir / METRICS_JSON
    try:
        m = json.loads(read_text(path))
    except FileNotFoundError:
        return None
    except Unreadable as e:
        return note(problems, METRICS_JSON, str(e))
    except json.JSONDecodeError as e:
        return note(problems, METRICS_JSON, f"not valid JSON ({e}): cut short or damaged")
    except OSError as e:
        return note(problems, METRICS_JSON, e.strerror or str(e))
    if not isinstance(m, dict):
        return note(problems, METRICS_JSON, f"holds a JSON {type(m).__name__}, not an object")
    return m


def read_history(run_dir: Path, problems: dict[str, str] | None = None) -> list[dict[str, float | None]]:
    """The rows of ``history.csv``: ``step``, ``epoch`` and one value per metric (None: not logged there).
    A file that cannot be read, or holds a cell that is not a number, gives no rows (named in ``problems``)."""
    path = run_dir / HISTORY_CSV
    try:
        rows = csv_rows(path)
    except FileNotFoundError:
        return []
    except Unreadable as e:
        return note(problems, HISTORY_CSV, str(e)) or []
    except OSError as e:
        return note(problems, HISTORY_CSV, e.strerror or str(e)) or []
    out = []
    for row_no, row in enumerate(rows, start=1):
        if "step" not in row:
            return note(problems, HISTORY_CSV, "no `step` column in its header") or []
        for k, v in row.items():
            if v.strip() and not is_number(v):
                return note(problems, HISTORY_CSV, f"row {row_no}: {k} = {v[:40]!r} is not a number") or []
        out.append({k: number(v) for k, v in row.items() if k})
    return out


def note(problems: dict[str, str] | None, name: str, what: str) -> None:
    """Record in ``problems`` that the file ``name`` cannot be read and why (None: the readers' result)."""
    if problems is not None:
        problems[name] = what


def first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def predictions_files(run_dir: Path) -> list[Path]:
    """``<split>_predictions.csv`` files, val first, then test, then the others by name."""
    order = {"val": 0, "test": 1}
    found = [p for p in run_dir.glob(f"*{PREDICTIONS_SUFFIX}") if p.is_file()]
    return sorted(found, key=lambda p: (order.get(p.name[: -len(PREDICTIONS_SUFFIX)], 2), p.name))


@dataclass
class Predictions:
    """One row per image of ``<split>_predictions.csv`` (columns as arrays, in file order)."""

    path: Path
    split: str
    index: np.ndarray  # int
    true_index: np.ndarray  # int
    pred_index: np.ndarray  # int
    prob: np.ndarray  # float, the probability of the predicted class
    correct: np.ndarray  # bool
    file: list[str]
    true_label: list[str]
    pred_label: list[str]
    labels: dict[int, str] = field(default_factory=dict)  # class index -> name, as the rows name them

    def __len__(self) -> int:
        return len(self.file)


def read_predictions(path: Path, problems: dict[str, str] | None = None) -> Predictions | None:
    cols: dict[str, list] = {k: [] for k in ("index", "true_index", "pred_index", "prob", "correct")}
    files: list[str] = []
    true_label: list[str] = []
    pred_label: list[str] = []
    labels: dict[int, str] = {}
    row_no = 0
    try:
        for i, row in enumerate(csv_rows(path)):
            row_no = i + 1
            if (
                "true_labels" in row and "true_index" not in row
            ):  # a multi-label model's: report/multilabel.py
                return None
            t, p = int(row["true_index"]), int(row["pred_index"])
            prob = number(row.get("prob"))
            cols["index"].append(int(row.get("index") or i))
            cols["true_index"].append(t)
            cols["pred_index"].append(p)
            cols["prob"].append(prob if prob is not None else float("nan"))
            correct = str(row.get("correct", "")).strip()
            cols["correct"].append(correct in ("1", "True", "true") if correct else t == p)
            files.append(row.get("file") or "")
            true_label.append(row.get("true_label") or str(t))
            pred_label.append(row.get("pred_label") or str(p))
            labels.setdefault(t, true_label[-1])
            labels.setdefault(p, pred_label[-1])
    except FileNotFoundError:
        return None
    except Unreadable as e:
        return note(problems, path.name, str(e))
    except OSError as e:
        return note(problems, path.name, e.strerror or str(e))
    except KeyError as e:
        return note(problems, path.name, f"no {e.args[0]} column in its header")
    except (ValueError, TypeError) as e:
        return note(problems, path.name, f"row {row_no}: {first_line(e)}")
    return Predictions(
        path=path,
        split=path.name[: -len(PREDICTIONS_SUFFIX)],
        index=np.asarray(cols["index"], dtype=np.int64),
        true_index=np.asarray(cols["true_index"], dtype=np.int64),
        pred_index=np.asarray(cols["pred_index"], dtype=np.int64),
        prob=np.asarray(cols["prob"], dtype=np.float64),
        correct=np.asarray(cols["correct"], dtype=bool),
        file=files,
        true_label=true_label,
        pred_label=pred_label,
        labels=labels,
    )


def image_path(name: str, run_dir: Path) -> Path | None:
    """The readable file behind a ``file`` cell (a path, or ``split[i] (path)`` of a Hugging Face row)."""
    if not name:
        return None
    m = HF_NAME.match(name)
    for candidate in (name, m.group("path") if m else None):
        if not candidate or candidate == "None":
            continue
        p = Path(candidate).expanduser()
        for q in (p,) if p.is_absolute() else (p, run_dir / p):
            try:
                if q.is_file():
                    return q
            except OSError:
                continue
    return None


@dataclass
class RunFiles:
    """Everything read from a run folder."""

    run_dir: Path
    config: dict[str, Any] | None
    config_file: str | None
    metrics: dict[str, Any] | None
    history: list[dict[str, float | None]]
    predictions: Predictions | None
    problems: dict[str, str] = field(default_factory=dict)  # file name -> why it cannot be read

    @property
    def analysis(self) -> dict[str, Any] | None:
        a = (self.metrics or {}).get("analysis")
        return a if isinstance(a, dict) else None

    @property
    def class_names(self) -> list[str]:
        """Class names by index: metrics.json's analysis, else the resolved config, else the predictions."""
        names: dict[int, str] = {}
        for name, info in ((self.analysis or {}).get("per_class") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("index"), int):
                names[info["index"]] = str(name)
        if not names:
            cfg_names = (self.config or {}).get("class_names")
            if isinstance(cfg_names, list):
                names = {i: str(n) for i, n in enumerate(cfg_names)}
        for i, n in (self.predictions.labels if self.predictions else {}).items():
            names.setdefault(i, n)
        k = max(names) + 1 if names else 0
        return [names.get(i, str(i)) for i in range(k)]


def read_run(run_dir: str | os.PathLike) -> RunFiles:
    """Read ``run_dir``; raise :class:`NotARunError` when it holds none of a run's files."""
    d = Path(run_dir).absolute()
    if not d.is_dir():
        raise NotARunError(f"{d} is not a folder; pass the folder of a run (e.g. outputs/train/<date>)")
    if not is_run_dir(d) and (d / "multirun.yaml").is_file():
        raise NotARunError(
            f"{d} is a sweep folder; pass one of its job folders, or run python -m vit_ft.sweep_report {d}"
        )
    if not is_run_dir(d):
        raise NotARunError(
            f"{d} is not a run folder: it holds no metrics.json, history.csv, config_resolved.yaml, "
            ".hydra/config.yaml or *_predictions.csv"
        )
    problems: dict[str, str] = {}
    config, config_file = load_config(d, problems)
    metrics = load_metrics(d, problems)
    split = str(((metrics or {}).get("analysis") or {}).get("split") or (metrics or {}).get("split") or "")
    extra = (metrics or {}).get("extra_eval")
    extra = set(extra) if isinstance(extra, dict) else set()  # data.extra_eval sets: their own section
    files = [p for p in predictions_files(d) if p.name[: -len(PREDICTIONS_SUFFIX)] not in extra]
    preferred = [p for p in files if p.name == f"{split}{PREDICTIONS_SUFFIX}"] + files
    predictions = None
    for p in preferred:
        predictions = read_predictions(p, problems)
        if predictions is not None:
            break
    history = read_history(d, problems)
    return RunFiles(d, config, config_file, metrics, history, predictions, problems)
