"""Moved to :mod:`hf_lpwd.compare.grid`; this module keeps the old import path."""

from .compare.grid import *  # noqa: F403
from .compare.grid import __all__  # noqa: F401
