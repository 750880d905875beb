"""Long work that shows its progress: a bar on a terminal, a log line every few seconds otherwise.

Lightning draws its own bar for training; this is for the rest (scanning a folder, indexing ImageNet,
extracting features), so that nothing runs silently for more than ~10 seconds. On a terminal it is a
tqdm bar on stderr (rate and time left); in a log file or a batch job, where a bar would be a wall of
carriage returns, it is one ``logging`` line every ``every`` seconds with the count, rate and time left.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("vit_ft")


def _eta(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """``update(n)`` as work gets done; ``close()`` (or the ``with`` block) at the end.

    ``bar=None`` picks a bar when stderr is a terminal; ``enabled=False`` (e.g. on ranks other than 0)
    shows nothing. Only the log-line form prints when the work takes less than ``every`` seconds: a
    short job stays quiet. ``clock`` is where time is read (a fake in tests, so they never sleep)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        every: float = 10.0,
        bar: bool | None = None,
        enabled: bool = True,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.every = total, desc, unit, float(every)
        self.enabled = bool(enabled)
        self.log = logger or log
        self.clock = clock
        self.n = 0
        self.start = self.last = clock()
        use_bar = sys.stderr.isatty() if bar is None else bool(bar)
        self.bar = (
            tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
            if self.enabled and use_bar
            else None
        )

    def line(self) -> str:
        """``desc: n/total unit (pct) | rate unit/s | time left`` (what the log form prints)."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.n / elapsed
        done = f"{self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"
        if self.total:
            done += f" ({100.0 * self.n / self.total:.0f}%)"
        text = f"{self.desc}: {done} | {rate:,.1f} {self.unit}/s | elapsed {_eta(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            text += f" | left {_eta((self.total - self.n) / rate)}"
        return text

    def update(self, n: int = 1) -> None:
        if not self.enabled:
            return
        self.n += int(n)
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.log.info("%s", self.line())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.clock() - self.start >= self.every:
            self.log.info("%s (done)", self.line())
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def track(
    items: Iterable[T], total: int | None, desc: str, *, unit: str = "it", **kwargs: Any
) -> Iterator[T]:
    """Yield ``items`` while counting them with a :class:`Progress`."""
    with Progress(total, desc, unit=unit, **kwargs) as p:
        for item in items:
            yield item
            p.update(1)


@contextmanager
def heartbeat(
    desc: str,
    *,
    every: float = 10.0,
    stream: Any = None,
    clock: Callable[[], float] = time.monotonic,
    wait: Callable[[threading.Event, float], bool] = threading.Event.wait,
) -> Iterator[None]:
    """For one long call that cannot count its work (reading or writing a big checkpoint): a line
    ``desc ... (20 s)`` every ``every`` seconds until the block ends; nothing when it ends sooner.

    ``wait(done, seconds)`` returns True once the block has ended, and ``clock`` reads the time:
    tests pass a fake pair that advances time without sleeping."""
    stream = stream or sys.stderr
    done = threading.Event()
    start = clock()

    def beat() -> None:
        while not wait(done, every):
            print(f"{desc} ... ({clock() - start:.0f} s)", file=stream, flush=True)

    thread = threading.Thread(target=beat, name=f"heartbeat: {desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
