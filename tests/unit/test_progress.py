"""Long work shows its progress: log lines when there is no terminal, a heartbeat for one long call."""

from __future__ import annotations

import io
import logging
import time

from vit_ft.progress import Progress, heartbeat, track


def test_log_lines_say_count_rate_and_time_left(caplog):
    with caplog.at_level(logging.INFO, logger="vit_ft"):
        with Progress(10, "indexing", unit="folders", every=0.0, bar=False) as p:
            for _ in range(4):
                p.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("indexing: 1/10 folders (10%) | ") and "folders/s" in lines[0]
    assert "left" in lines[2]
    assert lines[-1].endswith("(done)") and "4/10 folders (40%)" in lines[-1]


def test_short_work_stays_quiet_and_disabled_shows_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="vit_ft"):
        assert list(track(range(5), 5, "scan", unit="img", bar=False)) == [0, 1, 2, 3, 4]
        with Progress(3, "other rank", every=0.0, bar=False, enabled=False) as p:
            p.update(3)
    assert caplog.records == []


def test_heartbeat_beats_only_while_the_call_runs():
    out = io.StringIO()
    with heartbeat("export: writing big", every=0.05, stream=out):
        time.sleep(0.18)
    beats = out.getvalue().splitlines()
    assert 2 <= len(beats) <= 4 and all(b.startswith("export: writing big ... (") for b in beats)
    quiet = io.StringIO()
    with heartbeat("fast", every=5.0, stream=quiet):
        pass
    assert quiet.getvalue() == ""
