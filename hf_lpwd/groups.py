"""Moved to :mod:`hf_lpwd.model.groups` (and ``group_shrink`` to :mod:`hf_lpwd.schedule`); 0.3.0's imports
work."""

from .model.groups import *  # noqa: F403
from .model.groups import __all__ as _moved
from .schedule import group_shrink

__all__ = [*_moved, "group_shrink"]
