"""The one error type of ``hf-lpwd compare``."""

from __future__ import annotations

__all__ = ["CompareError"]


class CompareError(ValueError):
    """Bad input to ``compare``: reported as one ``error:`` line, exit status 2, before anything is run or
    written."""
