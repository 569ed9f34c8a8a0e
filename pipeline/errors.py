"""Errors a user can act on; the CLI prints them as one line instead of a traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Something the user can fix (a wrong name, a missing dataset, an unreachable host).

    The message says what was wrong and what to do.
    """
