"""Build a run's report: the pictures in ``report/`` and ``report.md``, from whatever the run folder holds
(and, during training, the model's in-memory analysis of the last validation).

A picture is never shown as current when it is older than its data: one left from an earlier build whose
source file cannot be read now, or changed since, is removed when the report is redrawn, and marked as
out of date in ``report.md`` with ``draw=False`` (which keeps the pictures there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vit_ft.io import write_text_atomic
from vit_ft.report import figures, multilabel
from vit_ft.report.analysis import Mistake, analysis_of, read_mistakes, select_mistakes, write_mistakes_csv
from vit_ft.report.files import HISTORY_CSV, METRICS_JSON, RunFiles, predictions_files, read_run
from vit_ft.report.markdown import render

REPORT_DIR = "report"
REPORT_MD = "report.md"
N_MISTAKES = 16
PICTURES = (
    (figures.CURVES, "Training curves"),
    (figures.CONFUSION, "Confusion"),
    (figures.PER_CLASS, "Per-class accuracy"),
    (figures.RELIABILITY, "Reliability"),
    (figures.MISTAKES, "Most confident mistakes"),
)


def build_report(
    run_dir: str | os.PathLike, eval_analysis: dict[str, Any] | None = None, *, draw: bool = True
) -> Path:
    """Redraw the pictures the run's files allow (``draw=False``: keep those there), write ``report.md``
    and return its path. Raises :class:`vit_ft.report.NotARunError` for a folder that is not a run."""
    return build(run_dir, eval_analysis, draw=draw)[0]


def sources(run: RunFiles) -> dict[str, tuple[list[str], list[str]]]:
    """Per picture: the files it is drawn from (any unreadable: an earlier picture is not current) and
    those of them whose change makes an earlier picture out of date (not ``metrics.json``: rewritten at
    the end of every run, while the pictures of the last validation still hold)."""
    preds = [p.name for p in predictions_files(run.run_dir)]
    per_class = (preds + [METRICS_JSON], preds)
    return {
        figures.CURVES: ([HISTORY_CSV], [HISTORY_CSV]),
        figures.CONFUSION: per_class,
        figures.PER_CLASS: per_class,
        figures.RELIABILITY: per_class,
        figures.MISTAKES: (preds, preds),
    }


def out_of_date(run: RunFiles, picture: Path, read: list[str], changed: list[str]) -> str | None:
    """Why ``picture`` (an earlier one) does not show its data now, or None."""
    for name in read:
        if name in run.problems:
            return f"`{name}` cannot be read ({run.problems[name]})"
    try:
        drawn = picture.stat().st_mtime_ns
    except OSError:
        return None
    for name in changed:
        try:
            if (run.run_dir / name).stat().st_mtime_ns > drawn:
                return f"`{name}` changed after it was drawn"
        except OSError:
            continue
    return None


def build(
    run_dir: str | os.PathLike, eval_analysis: dict[str, Any] | None = None, *, draw: bool = True
) -> tuple[Path, dict[str, str]]:
    """:func:`build_report`, and the run files that could not be read (file name -> what is wrong)."""
    run = read_run(run_dir)
    analysis = analysis_of(run, eval_analysis)
    out = run.run_dir / REPORT_DIR
    no_classes = "no per-class results yet (no `<split>_predictions.csv`, no `analysis` in `metrics.json`)"
    why: dict[str, str] = {
        figures.CURVES: "no `history.csv` with loss, accuracy or learning rate values",
        figures.CONFUSION: no_classes,
        figures.PER_CLASS: no_classes,
        figures.RELIABILITY: "needs `<split>_predictions.csv` (or the model's analysis during training)",
        figures.MISTAKES: "no `<split>_predictions.csv`",
    }
    for name, (read, _) in sources(run).items():
        bad = next((n for n in read if n in run.problems), None)
        if bad is not None:
            why[name] = f"`{bad}` cannot be read: {run.problems[bad]}"
    mistakes: list[Mistake] = []
    mistakes_csv = out / figures.MISTAKES_CSV
    notes: dict[str, str] = {}
    if draw:
        drawn = {figures.CURVES: figures.curves(run.history, out / figures.CURVES)}
        if analysis is not None:
            drawn[figures.CONFUSION] = figures.confusion(analysis, out / figures.CONFUSION)
            drawn[figures.PER_CLASS] = figures.per_class(analysis, out / figures.PER_CLASS)
            drawn[figures.RELIABILITY] = figures.reliability(analysis, out / figures.RELIABILITY)
        if run.predictions is not None:
            mistakes = select_mistakes(run.predictions, run.run_dir, N_MISTAKES)
            if mistakes:
                # marks the images it could not open
                drawn[figures.MISTAKES] = figures.mistakes(mistakes, out / figures.MISTAKES)
                write_mistakes_csv(mistakes, mistakes_csv)
            else:
                why[figures.MISTAKES] = f"no mistakes in `{run.predictions.path.name}`"
                for stale in (out / figures.MISTAKES, mistakes_csv):
                    stale.unlink(missing_ok=True)
        for name, (read, changed) in sources(run).items():  # an earlier picture its data no longer shows
            path = out / name
            if not drawn.get(name) and path.is_file() and out_of_date(run, path, read, changed):
                path.unlink(missing_ok=True)
                if name == figures.MISTAKES:
                    mistakes_csv.unlink(missing_ok=True)
    else:
        mistakes = read_mistakes(mistakes_csv)
        for name, (read, changed) in sources(run).items():
            path = out / name
            stale = out_of_date(run, path, read, changed) if path.is_file() else None
            if stale:
                notes[name] = f"Out of date: {stale}; rebuild without `--no-draw` to redraw it."
    pictures = []
    for name, title in PICTURES:
        path = out / name
        pictures.append((title, path, None if path.is_file() else why[name], notes.get(name)))
    extra = multilabel.section(run, out, draw=draw)  # a multi-label run's pages ([] otherwise)
    md = render(run, analysis, pictures, mistakes, mistakes_csv if mistakes_csv.is_file() else None, extra)
    target = run.run_dir / REPORT_MD
    write_text_atomic(target, md)
    return target, dict(run.problems)


def picture_files(run_dir: str | os.PathLike) -> list[Path]:
    """The report's pictures that exist, in the report's order."""
    out = Path(run_dir) / REPORT_DIR
    return [out / name for name, _ in PICTURES if (out / name).is_file()]


def mistakes_of(run_dir: str | os.PathLike) -> list[Mistake]:
    """The rows of the report's mistakes grid (``report/mistakes.csv``)."""
    return read_mistakes(Path(run_dir) / REPORT_DIR / figures.MISTAKES_CSV)
