"""The one exception type for mistakes a user can fix.

Its message is a single line: what is wrong, the value seen, what to do. Entry points print it as
``error: <message>`` and exit with status 2; anything else is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A user-fixable problem with a setting, a path or an input file."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
