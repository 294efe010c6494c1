"""Moved to :mod:`hf_lpwd.compare.stats`; this module keeps the old import path."""

from .compare.stats import *  # noqa: F403
from .compare.stats import __all__  # noqa: F401
