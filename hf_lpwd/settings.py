"""The one home of LPWD's names, defaults and validators.

Config, groups, optimizer, Trainer glue and CLI all check their inputs here, so a bad value reads
the same wherever it comes from.  Each validator takes the name of the field as the user wrote it
(``--weight_decay``, ``LPWDConfig.tied_depth``, ...) and raises ``ValueError`` naming it.
"""

from __future__ import annotations

import math
import re
from typing import Any

TIMINGS: tuple[str, ...] = ("wd", "rwd", "pwd")
"""When the decay is applied: the ``mode`` of :class:`hf_lpwd.LPWD`."""

WEIGHT_DECAY_MODES: tuple[str, ...] = (*TIMINGS, "lpwd")
"""User-facing modes: a timing, or ``lpwd`` = the ``pwd`` timing × layer-wise λ."""

TIED_DEPTHS: tuple[str, ...] = ("input", "output")
"""Where a matrix shared by the input embedding and the output head sits: depth 0 or depth N+1."""

LR_COUPLINGS: tuple[str, ...] = ("coupled", "independent", "corrected")
"""How the per-step decay d_t follows the lr: η_t·λ, (η_t/η̄)·λ, (η_t²/η̄)·λ (η̄ the group's base lr)."""

CAUTIOUS_TIMINGS: tuple[str, ...] = ("wd",)
"""Timings cautious decay is defined for: the mask 1[u_t ⊙ θ_t ≥ 0] needs u_t when the decay is applied."""

CAUTIOUS_KERNELS: tuple[str, ...] = ("compiled", "eager")
"""How cautious decay on an AdamW/Adam base runs: one ``torch.compile``'d pass per tensor (the default; the
eager path where it does not apply), or the eager mask pass before the base's own step."""

DEFAULT_WEIGHT_DECAY = 0.01
"""λ when none is given (:class:`hf_lpwd.LPWD`, :class:`hf_lpwd.LPWDConfig`, the CLI); the Trainer's
``--weight_decay`` keeps transformers' own default."""

DEFAULTS: dict[str, Any] = {
    "mode": "lpwd",
    "layerwise": None,
    "layer_lr_decay": 1.0,
    "tied_depth": "input",
    "layer_pattern": None,
    "decay_embeddings": True,
    "stochastic_rounding": True,
    "lr_coupling": "coupled",
    "cautious": False,
    "decay_timescale": None,
}
"""Defaults of the LPWD settings shared by :class:`hf_lpwd.LPWDConfig` and the Trainer's arguments.  A
0.1.0 / 0.2.0 config without the newer keys means these: coupled, not cautious, no timescale."""


def validate_choice(value: Any, choices: tuple[str, ...], field_name: str) -> None:
    if value not in choices:
        raise ValueError(f"{field_name}={value!r} is not one of {list(choices)}")


def validate_bool(value: Any, field_name: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{field_name} must be true or false, got {value!r}")


def validate_weight_decay(value: Any, field_name: str = "weight_decay") -> float:
    """λ is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field_name} must be a number (it is λ), got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field_name}={value} must be a finite number >= 0 (it is λ)")
    return float(value)


def validate_layer_lr_decay(gamma: Any, field_name: str = "layer_lr_decay") -> None:
    """γ of layer-wise lr decay must be in (0, 1].

    γ ≤ 0 gives zero or sign-flipping learning rates; γ > 1 would give the embeddings the largest
    rate, the opposite of what discriminative fine-tuning is for.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise ValueError(f"{field_name} must be a number in (0, 1], got {gamma!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(
            f"{field_name}={gamma:g} must be in (0, 1]: the lr at depth d is lr·γ^(N+1−d), so γ > 1 would train the "
            "embeddings fastest and γ <= 0 gives zero or negative rates (1.0 turns layer-wise lr decay off)"
        )


def validate_layer_pattern(pattern: Any, field_name: str = "layer_pattern") -> None:
    """A layer pattern is a regex with exactly one capture group: the block index."""
    if pattern is None or isinstance(pattern, re.Pattern) or callable(pattern):
        return
    if not isinstance(pattern, str):
        raise ValueError(f"{field_name} must be a regex string, got {type(pattern).__name__}")
    from .layers import compile_layer_pattern  # the one parser of patterns

    compile_layer_pattern(pattern, field_name)


def validate_decay_timescale(tau: Any, field_name: str = "decay_timescale") -> None:
    """τ, in epochs, is a finite number > 0 (or ``None``: λ is given directly)."""
    if tau is None:
        return
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(
            f"{field_name}={tau!r} must be a number of epochs > 0: the EMA timescale of the weights, "
            "τ = 1/(η̄·λ·steps per epoch)"
        )


def validate_cautious(cautious: bool, timing: str, field_name: str = "cautious") -> None:
    """Cautious decay masks with the sign of u_t ⊙ θ_t, so the decay must act when u_t exists.

    pwd decays before the forward pass, before u_t is computed; rwd decays θ_t − η_t·u_t, a weight
    the mask was not defined on.  Only the wd timing keeps the meaning of Chen et al.'s rule.
    """
    validate_bool(cautious, field_name)
    if cautious and timing not in CAUTIOUS_TIMINGS:
        why = ("pwd decays before the forward pass, before the update u_t the mask needs exists"
               if timing == "pwd" else "rwd decays θ_t − η_t·u_t, not the θ_t the mask compares u_t with")
        raise ValueError(
            f"{field_name}=true needs the wd timing (θ ← θ − η·u − d·1[u⊙θ ≥ 0]⊙θ); with timing {timing}: {why}. "
            "Use --weight_decay_mode wd (add --lpwd_layerwise true for the layer-wise profile)"
        )


def check_decay_factor(decay: float, where: str, fix: str = "lower weight_decay or lr") -> None:
    """d_t, the per-step decay, must be finite, >= 0 and < 1 (else 1 − d_t <= 0 flips the weights' signs)."""
    if not math.isfinite(decay) or decay < 0:
        raise ValueError(f"{where}: the per-step decay is {decay}; it must be a finite number >= 0")
    if decay >= 1.0:
        raise ValueError(
            f"{where}: the per-step decay d = {decay:g} must stay below 1 (the factor 1 − d = {1.0 - decay:g} would "
            f"be <= 0 and flip the weights' signs); {fix}"
        )


SCHEDULE_FREE_REASON = (
    "schedule-free optimizers keep two weight sequences (x and z) and the model holds a third, their "
    "interpolation y, switched by optimizer.train()/eval(), with their own decay rule; LPWD's timings act on "
    "one weight sequence"
)
"""Why LPWD refuses schedule-free optimizers, in the words of both of its refusals."""
