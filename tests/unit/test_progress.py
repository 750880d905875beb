"""Long work shows its progress: log lines when there is no terminal, a heartbeat for one long call.

Time is a fake clock the tests advance, so nothing here sleeps and the printed rates and times are exact.
"""

from __future__ import annotations

import io
import logging
import threading

from vit_ft.progress import Progress, heartbeat, track


class FakeClock:
    """``clock()`` reads the fake time; ``advance`` moves it. Starts far from 0 so that only
    differences can be what the code prints."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeCall(FakeClock):
    """A call that lasts ``seconds`` of fake time, for ``heartbeat``'s ``wait``: each wait that ends
    before the call does advances the clock by its timeout and reports "still running"; the first
    one that would outlast the call blocks until the ``with`` block really ends."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.end = self.t + seconds
        self.timeouts: list[float] = []

    def wait(self, done: threading.Event, seconds: float) -> bool:
        self.timeouts.append(seconds)
        if self.t + seconds <= self.end:
            self.advance(seconds)
            return False
        self.t = self.end
        return done.wait()


def test_log_lines_every_few_seconds_say_count_rate_and_time_left(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="vit_ft"):
        with Progress(10, "indexing", unit="folders", every=2.0, bar=False, clock=clock) as p:
            for _ in range(5):
                clock.advance(1.0)
                p.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "indexing: 2/10 folders (20%) | 1.0 folders/s | elapsed 00:02 | left 00:08",
        "indexing: 4/10 folders (40%) | 1.0 folders/s | elapsed 00:04 | left 00:06",
        "indexing: 5/10 folders (50%) | 1.0 folders/s | elapsed 00:05 | left 00:05 (done)",
    ]


def test_no_total_and_hours_are_shown_without_a_time_left(caplog):
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="vit_ft"):
        p = Progress(None, "features", unit="img", every=10.0, bar=False, clock=clock)
        clock.advance(3725.0)
        p.update(7450)
    assert [r.getMessage() for r in caplog.records] == ["features: 7,450 img | 2.0 img/s | elapsed 1:02:05"]


def test_short_work_stays_quiet_and_disabled_shows_nothing(caplog):
    clock = FakeClock()

    def slowly(n):
        for i in range(n):
            clock.advance(1.9)
            yield i

    with caplog.at_level(logging.INFO, logger="vit_ft"):
        # 5 items in 9.5 s: under the 10 s between lines, so not even a "(done)" line
        assert list(track(slowly(5), 5, "scan", unit="img", bar=False, clock=clock)) == [0, 1, 2, 3, 4]
        with Progress(3, "other rank", every=0.0, bar=False, enabled=False, clock=clock) as p:
            clock.advance(60.0)
            p.update(3)
    assert caplog.records == []


def test_heartbeat_beats_every_period_while_the_call_runs():
    out = io.StringIO()
    call = FakeCall(35.0)
    with heartbeat("export: writing big", every=10.0, stream=out, clock=call, wait=call.wait):
        pass
    assert out.getvalue().splitlines() == [
        "export: writing big ... (10 s)",
        "export: writing big ... (20 s)",
        "export: writing big ... (30 s)",
    ]
    assert call.timeouts == [10.0, 10.0, 10.0, 10.0]


def test_heartbeat_is_quiet_for_a_call_shorter_than_the_period():
    quiet = io.StringIO()
    call = FakeCall(5.0)
    with heartbeat("fast", every=10.0, stream=quiet, clock=call, wait=call.wait):
        pass
    assert quiet.getvalue() == ""


def test_heartbeat_with_the_real_clock_ends_with_its_block():
    """The default wait is the block's own event: leaving the block stops the beat at once."""
    quiet = io.StringIO()
    with heartbeat("fast", every=3600.0, stream=quiet):
        pass
    assert quiet.getvalue() == ""
