"""``python -m vit_ft.sweep_report <sweep folder>``: rebuild a sweep's report (see :mod:`vit_ft.sweeps.report`)."""

import sys

from vit_ft.sweeps.report import main

if __name__ == "__main__":
    sys.exit(main())
