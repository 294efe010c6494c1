"""Moved to :mod:`hf_lpwd.trainer.refusals`; this module keeps 0.3.0's imports working."""

from .trainer.refusals import *  # noqa: F403
from .trainer.refusals import __all__  # noqa: F401
