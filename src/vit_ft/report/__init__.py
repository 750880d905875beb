"""A run's report: pictures in ``<run>/report/`` and ``<run>/report.md``, from the files the run leaves.

Pure: it reads files and draws with matplotlib (no Lightning, no Hydra); training wires
:func:`build_report` into the ``RunReport`` callback, the tasks call it when a run ends, and
``python -m vit_ft.report RUN_DIR`` rebuilds it (also for an interrupted run).
"""

from vit_ft.report.analysis import Analysis, Mistake, analysis_of, select_mistakes
from vit_ft.report.build import PICTURES, REPORT_DIR, REPORT_MD, build_report, mistakes_of, picture_files
from vit_ft.report.files import NotARunError, is_run_dir, read_run

__all__ = [
    "PICTURES",
    "REPORT_DIR",
    "REPORT_MD",
    "Analysis",
    "Mistake",
    "NotARunError",
    "analysis_of",
    "build_report",
    "is_run_dir",
    "mistakes_of",
    "picture_files",
    "read_run",
    "select_mistakes",
]
