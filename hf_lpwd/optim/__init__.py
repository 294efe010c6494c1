"""The decay timings (wd / rwd / pwd) around a base torch optimizer, with lr couplings and cautious decay.

:class:`LPWD` is the optimizer; :mod:`.functional` holds the math as plain functions, :mod:`.ledger` pwd's
bookkeeping, :mod:`.lookahead` the next step's lr, :mod:`.bases` what LPWD knows of its base,
:mod:`.cautious_adamw` cautious AdamW as one compiled pass, :mod:`.rounded_step` the whole step of bf16/fp16
weights in fp32 with one stochastic rounding, :mod:`.rounding` the rounding and its noise, :mod:`.precision`
which path a group takes (:func:`rounding_path`) and what round-to-nearest loses
(:func:`fraction_below_half_ulp`), :mod:`.compiled` the compile-or-eager wrapper, :mod:`.target` the decay
toward θ₀, :mod:`.spd` Selective Projection Decay (its measure, ratio, decay and refusals).  Nothing here
knows about layers or transformers.
"""

from ..settings import DEFAULT_WEIGHT_DECAY, LR_COUPLINGS, TIMINGS
from .bases import BASE_OPTIMIZERS, resolve_base
from .ledger import APPLIED_DECAY_KEY
from .lpwd import LPWD
from .precision import fraction_below_half_ulp, rounding_path

DECAY_MODES = TIMINGS
"""hf_lpwd 0.1.0's name of :data:`TIMINGS`, kept for compatibility."""

__all__ = [
    "APPLIED_DECAY_KEY",
    "BASE_OPTIMIZERS",
    "DECAY_MODES",
    "DEFAULT_WEIGHT_DECAY",
    "LPWD",
    "LR_COUPLINGS",
    "TIMINGS",
    "fraction_below_half_ulp",
    "resolve_base",
    "rounding_path",
]
