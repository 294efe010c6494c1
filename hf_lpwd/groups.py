"""Moved to :mod:`hf_lpwd.model.groups`; this module keeps 0.3.0's imports working."""

from .model.groups import *  # noqa: F403
from .model.groups import __all__  # noqa: F401
