"""Build a run's report: the pictures in ``report/`` and ``report.md``, from whatever the run folder holds
(and, during training, the model's in-memory analysis of the last validation)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vit_ft.io import write_text_atomic
from vit_ft.report import figures
from vit_ft.report.analysis import Mistake, analysis_of, read_mistakes, select_mistakes, write_mistakes_csv
from vit_ft.report.files import read_run
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
    mistakes: list[Mistake] = []
    mistakes_csv = out / figures.MISTAKES_CSV
    if draw:
        figures.curves(run.history, out / figures.CURVES)
        if analysis is not None:
            figures.confusion(analysis, out / figures.CONFUSION)
            figures.per_class(analysis, out / figures.PER_CLASS)
            figures.reliability(analysis, out / figures.RELIABILITY)
        if run.predictions is not None:
            mistakes = select_mistakes(run.predictions, run.run_dir, N_MISTAKES)
            if mistakes:
                figures.mistakes(mistakes, out / figures.MISTAKES)  # marks the images it could not open
                write_mistakes_csv(mistakes, mistakes_csv)
            else:
                why[figures.MISTAKES] = f"no mistakes in `{run.predictions.path.name}`"
                for stale in (out / figures.MISTAKES, mistakes_csv):
                    stale.unlink(missing_ok=True)
    else:
        mistakes = read_mistakes(mistakes_csv)
    pictures = []
    for name, title in PICTURES:
        path = out / name
        pictures.append((title, path, None if path.is_file() else why[name]))
    md = render(run, analysis, pictures, mistakes, mistakes_csv if mistakes_csv.is_file() else None)
    target = run.run_dir / REPORT_MD
    write_text_atomic(target, md)
    return target


def picture_files(run_dir: str | os.PathLike) -> list[Path]:
    """The report's pictures that exist, in the report's order."""
    out = Path(run_dir) / REPORT_DIR
    return [out / name for name, _ in PICTURES if (out / name).is_file()]


def mistakes_of(run_dir: str | os.PathLike) -> list[Mistake]:
    """The rows of the report's mistakes grid (``report/mistakes.csv``)."""
    return read_mistakes(Path(run_dir) / REPORT_DIR / figures.MISTAKES_CSV)
