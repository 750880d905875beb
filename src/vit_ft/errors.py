"""The exception types for what a user can fix, and how to find them behind a wrapped one.

Their message is a single line: what is wrong, the value seen, what to do. Entry points print it as
``error: <message>`` and exit with status 2 (:class:`ConfigError`: bad input, found before the run)
or 1 (:class:`RunFault`: a fault met while running); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

from lightning.fabric.utilities.exceptions import MisconfigurationException


class ConfigError(ValueError):
    """A user-fixable problem with a setting, a path or an input file."""


class RunFault(RuntimeError):
    """A run stopped by a fault it detected while running (a non-finite loss, a checkpoint that
    cannot be written): one line, exit status 1, what was saved before it left intact."""


def user_error(exc: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` behind ``exc`` (Hydra's instantiate and DataLoader workers wrap what
    they raise), or Lightning's word on invalid trainer settings, as one; None for anything else."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ConfigError):
            return exc
        if isinstance(exc, MisconfigurationException):
            first = (str(exc).strip().splitlines() or ["invalid trainer settings"])[0]
            return ConfigError(f"{first} (check the trainer.* settings)")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


DISK_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS)


def run_fault(exc: BaseException | None) -> RunFault | None:
    """The :class:`RunFault` behind ``exc`` (Lightning and Hydra re-raise or wrap it), or None. A
    full disk or a read-only file system met anywhere (metrics, history, report) is one too."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, RunFault):
            return exc
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            where = f" {exc.filename}" if exc.filename else ""
            return RunFault(f"cannot write{where}: {exc.strerror or exc}; free space or set paths.output_dir")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def user_message(exc: BaseException) -> str | None:
    """The one line to show for a user error behind ``exc`` (None when ``exc`` is not one).

    Errors raised in DataLoader workers arrive wrapped in the worker's traceback: the message is its
    last line, without the exception's type name."""
    user = user_error(exc)
    if user is None:
        return None
    lines = str(user).strip().splitlines()
    return (lines[-1] if lines else "invalid configuration").split("ConfigError: ", 1)[-1]
