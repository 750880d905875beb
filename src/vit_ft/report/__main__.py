"""``python -m vit_ft.report RUN_DIR``: rebuild a run's ``report.md`` and pictures (also for an interrupted run)."""

from __future__ import annotations

import argparse
import sys

from vit_ft.report.build import build
from vit_ft.report.files import NotARunError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vit_ft.report",
        description="Rebuild a run's report.md and report/ pictures from the files in its folder.",
    )
    p.add_argument("run_dir", help="the folder of a train.py or eval.py run (e.g. outputs/train/<date>)")
    p.add_argument("--no-draw", action="store_true", help="only rewrite report.md; keep the pictures there")
    a = p.parse_args(argv)
    try:
        path, problems = build(a.run_dir, draw=not a.no_draw)
    except NotARunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, what in problems.items():  # the report is built from the rest; report.md says so too
        print(f"warning: {name} cannot be read: {what}; left out of the report", file=sys.stderr)
    print(f"report        : {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
