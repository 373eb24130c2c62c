"""Project-wide exception types."""

from __future__ import annotations


class ConfigError(ValueError):
    """Base for every user-facing configuration error: a bad key, a missing file, an impossible setting.

    Raised early (before training starts) with a message that says what is wrong and how to fix it.
    """


class UnreadableFileError(ValueError):
    """A saved file (artifact, cache entry, checkpoint) that cannot be read safely: damaged, truncated, or holding
    anything but tensors and plain values (a pickled object is refused, never run). The message names the file."""
