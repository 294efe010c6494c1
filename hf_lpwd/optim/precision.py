"""Which path a group's step takes on its weights' dtype, and what round-to-nearest would lose.

For the layer table and the warnings: :func:`rounding_path` names the path of a group (or a list of
parameters), :func:`fraction_below_half_ulp` estimates at step 0 the share of coordinates whose update at the
peak lr is below half the spacing of their bf16/fp16 weight (what round-to-nearest drops),
:func:`unrounded_share` counts what the whole-step rounding cannot take (a base it does not know, a DTensor, a
tensor subclass).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .bases import class_name
from .rounded_step import ROUNDED_BASES, group_supported, param_supported
from .rounding import LOW_PRECISION_DTYPES

ROUNDED_WHOLE_STEP = "update + decay stochastically rounded"
ROUNDED_DECAY_ONLY = "decay stochastically rounded, update rounded to nearest"
ROUNDED_TO_NEAREST = "rounded to nearest (stochastic_rounding=False)"
FP32_WEIGHTS = "fp32 weights"

_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _params_of(
    group_or_params: dict[str, Any] | Iterable[torch.Tensor],
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    if isinstance(group_or_params, dict):
        return list(group_or_params["params"]), group_or_params
    params = list(group_or_params)
    return params, {"params": params}


def rounding_path(group_or_params: dict[str, Any] | Iterable[torch.Tensor], optimizer: Any = None) -> str:
    """How a group's step is written to its weights, in the layer table's words.

    ``"fp32 weights"`` when no weight is bf16/fp16; else ``"bf16 weights: update + decay stochastically
    rounded"`` (the whole step, :mod:`.rounded_step`), ``"...: decay stochastically rounded, update rounded to
    nearest"`` (a base, tensor type or flag the whole step does not cover, or SPD) or ``"...: rounded to
    nearest (stochastic_rounding=False)"``.  ``optimizer`` (an :class:`~hf_lpwd.LPWD`) gives the base and the
    setting; without it the group is assumed to run on AdamW with stochastic rounding on.
    """
    params, group = _params_of(group_or_params)
    low = [p for p in params if p.dtype in LOW_PRECISION_DTYPES]
    if not low:
        return FP32_WEIGHTS
    names = "/".join(sorted({_SHORT[p.dtype] for p in low}))
    if optimizer is not None and not getattr(optimizer, "stochastic_rounding", True):
        return f"{names} weights: {ROUNDED_TO_NEAREST}"
    base = getattr(optimizer, "base_optimizer", None)
    known = type(base) in ROUNDED_BASES and group_supported(base, group) if base is not None else True
    spd = getattr(optimizer, "spd", False)  # SPD's decay needs ‖θ̃ − θ₀‖: the base's step, then the decay
    whole = known and not spd and all(param_supported(p) for p in low)
    return f"{names} weights: {ROUNDED_WHOLE_STEP if whole else ROUNDED_DECAY_ONLY}"


def half_spacing(theta: torch.Tensor) -> torch.Tensor:
    """Half the distance from each weight to its next representable neighbour away from zero, in fp32."""
    magnitude = theta.detach().abs()
    upper = torch.nextafter(magnitude, torch.full_like(magnitude, float("inf")))
    return (upper.float() - magnitude.float()) / 2


@torch.no_grad()
def fraction_below_half_ulp(params: Iterable[torch.Tensor], lr: float, adaptive: bool = True) -> float:
    """Share of bf16/fp16 coordinates whose first update at ``lr`` is below half an ulp (rounds away).

    Adam's first update is m̂/(√v̂ + ε) = ±1 per coordinate (g/|g|), so it moves θ by η: ``adaptive``.  SGD's
    moves it by η·|g| (``adaptive=False``, from the gradients present; parameters without one are skipped).
    Returns 0.0 when there is no such coordinate.
    """
    below = total = 0
    for p in params:
        if p.dtype not in LOW_PRECISION_DTYPES or p.numel() == 0 or type(p.data) is not torch.Tensor:
            continue
        if adaptive:
            step = torch.full(p.shape, float(lr), dtype=torch.float32, device=p.device)
        elif p.grad is not None:
            step = p.grad.detach().float().abs() * float(lr)
        else:
            continue
        below += int((step < half_spacing(p)).sum())
        total += p.numel()
    return below / total if total else 0.0


def unrounded_share(
    base: torch.optim.Optimizer, groups: Iterable[dict[str, Any]]
) -> tuple[int, int, int, str]:
    """(parameters, their weights, all bf16/fp16 weights, why) for bf16/fp16 weights the whole step cannot
    take."""
    count = numel = total = 0
    why: set[str] = set()
    for group in groups:
        known = group_supported(base, group)
        for p in group["params"]:
            if p.dtype not in LOW_PRECISION_DTYPES:
                continue
            total += p.numel()
            if known and param_supported(p):
                continue
            count += 1
            numel += p.numel()
            if type(base) not in ROUNDED_BASES:
                why.add(f"base {class_name(type(base))}")
            elif not known:
                why.add("amsgrad / capturable / differentiable / a tensor lr")
            elif type(p.data) is not torch.Tensor:
                why.add(f"{type(p.data).__name__} parameters")
            else:
                why.add("non-contiguous or empty tensors")
    return count, numel, total, ", ".join(sorted(why))
