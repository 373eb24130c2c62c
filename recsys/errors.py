"""Project-wide exception types."""

from __future__ import annotations


class ConfigError(ValueError):
    """Base for every user-facing configuration error: a bad key, a missing file, an impossible setting.

    Raised early (before training starts) with a message that says what is wrong and how to fix it.
    """


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or a loss far above its start: the run fails and nothing is cached."""
