"""Project-wide exception types."""

from __future__ import annotations


class ConfigError(ValueError):
    """Base for every user-facing configuration error: a bad key, a missing file, an impossible setting.

    Raised early (before training starts) with a message that says what is wrong and how to fix it.
    """


class DataError(ConfigError):
    """A data file that cannot be read as configured: names the file, the line (or column), what was found and what
    was expected, so the user can fix the file or the ``data.*`` keys before anything is trained or logged."""

    def __init__(self, path: object, found: str, expected: str, line: int | None = None, column: object = None,
                 hint: str = "") -> None:
        where = str(path) + (f", line {line}" if line is not None else "")
        where += f", column {column!r}" if column is not None else ""
        super().__init__(f"{where}: found {found}; expected {expected}." + (f" {hint}" if hint else ""))
        self.path, self.line, self.column, self.found, self.expected = path, line, column, found, expected


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or a loss far above its start: the run fails and nothing is cached."""
