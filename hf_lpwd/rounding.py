"""Moved to :mod:`hf_lpwd.optim.rounding` (the optimizer's concern); this path keeps importing."""

from .optim.rounding import LOW_PRECISION_DTYPES, NoiseKeys, round_to, scale_, stochastic_round_

__all__ = ["LOW_PRECISION_DTYPES", "NoiseKeys", "round_to", "scale_", "stochastic_round_"]
