"""What a run folder holds, read without Lightning or Hydra: the config, ``metrics.json``, ``history.csv``
and ``<split>_predictions.csv`` (their formats are in the README's "What a run leaves").

Every reader returns None (or an empty list) for a file that is missing or unreadable: a report is built
from whatever exists, also for a run that was interrupted or is still going.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS_JSON = "metrics.json"
HISTORY_CSV = "history.csv"
CONFIG_FILES = ("config_resolved.yaml", os.path.join(".hydra", "config.yaml"))
PREDICTIONS_SUFFIX = "_predictions.csv"
HF_NAME = re.compile(
    r"^\S+\[\d+\] \((?P<path>.*)\)$"
)  # records.name(i) of a Hugging Face row: "split[i] (path)"


class NotARunError(ValueError):
    """The folder holds none of the files a vit-ft run leaves."""


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


def load_config(run_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The run's config (``config_resolved.yaml`` first, else ``.hydra/config.yaml``) and its file name."""
    import yaml

    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            try:
                cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(cfg, dict):
                return cfg, name
    return None, None


def load_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((run_dir / METRICS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def read_history(run_dir: Path) -> list[dict[str, float | None]]:
    """The rows of ``history.csv``: ``step``, ``epoch`` and one value per metric (None: not logged there)."""
    try:
        with open(run_dir / HISTORY_CSV, newline="", encoding="utf-8") as f:
            return [{k: number(v) for k, v in row.items() if k} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


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


def read_predictions(path: Path) -> Predictions | None:
    cols: dict[str, list] = {k: [] for k in ("index", "true_index", "pred_index", "prob", "correct")}
    files: list[str] = []
    true_label: list[str] = []
    pred_label: list[str] = []
    labels: dict[int, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
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
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, ValueError, TypeError):
        return None
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
    config, config_file = load_config(d)
    metrics = load_metrics(d)
    split = str(((metrics or {}).get("analysis") or {}).get("split") or (metrics or {}).get("split") or "")
    files = predictions_files(d)
    preferred = [p for p in files if p.name == f"{split}{PREDICTIONS_SUFFIX}"] + files
    predictions = None
    for p in preferred:
        predictions = read_predictions(p)
        if predictions is not None:
            break
    return RunFiles(d, config, config_file, metrics, read_history(d), predictions)
