"""Exceptions that carry the file (and line) a problem came from.

Every error a user can cause names what to look at, so the CLI can print it as
one line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class QLungError(Exception):
    """Base class for errors the CLI reports without a traceback."""


class AudioFileError(QLungError):
    """An audio file that cannot be used: unreadable, empty, truncated, NaN, ..."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataError(QLungError):
    """A data set file that does not parse: annotation line, split file, JSON, ..."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {problem}")
