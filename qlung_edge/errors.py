"""One error type for everything a user can cause, carrying where it happened.

Every such error names what to look at (a file, a line, a sink or source spec, a config key), so the CLI can
print it as one line instead of a traceback. Subclasses only say which part of the toolkit raised it.
"""

from __future__ import annotations

from pathlib import Path


class QLungError(Exception):
    """A problem with something the user gave us; `path` (and `line`) say where, `problem` says what."""

    def __init__(self, problem: str, *, path: str | Path | None = None, line: int | None = None) -> None:
        self.problem = problem
        self.path = path
        self.line = line
        where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{problem}")


class AudioFileError(QLungError):
    """An audio file that cannot be used: unreadable, empty, truncated, NaN, ..."""


class DataError(QLungError):
    """A data set file that does not parse: annotation line, split file, JSON, ..."""


class ConfigError(QLungError):
    """A recipe or config that does not fit its schema: unknown key, wrong type, value out of range."""
