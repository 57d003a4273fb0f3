"""Errors a user can cause and fix (bad file, bad flag, unknown class).

The CLI prints these as one line and exits non-zero, without a traceback. Programming
errors (bugs) stay ordinary exceptions and keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave: a file, a field, a flag, a name.

    The message must say what was expected and what came, and name the file or field:
    ``f"{path}: field 'images[3].filename' must be a string, got 12"``.
    """


class DataError(UserError, ValueError):
    """A data file is missing, malformed, truncated or inconsistent."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, foreign, truncated, pickle-bearing or of a future version."""
