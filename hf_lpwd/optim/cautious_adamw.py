"""Cautious AdamW in one pass per tensor: the moments, the mask, the decay and the update together.

Cautious decay's mask needs the sign of this step's update u_t = m̂_t/(√v̂_t+ε), which torch's fused AdamW
never exposes; computing it beside that kernel streams m, g and θ once more (one extra pass at least 4/7 of
AdamW's memory traffic, and in eager mode four of them).  Here the whole step is one elementwise function,
compiled once with ``torch.compile`` (dynamic shapes, so one kernel serves every tensor), that reads θ, g, m,
v and writes θ, m, v, as AdamW does::

    m ← β1·m + (1 − β1)·g          v ← β2·v + (1 − β2)·g²
    θ ← θ − d·1[m ⊙ θ ≥ 0] ⊙ θ − (η/(1 − β1^t))·m / (√v/√(1 − β2^t) + ε)

It writes the base's own state (``step``, ``exp_avg``, ``exp_avg_sq``), so a checkpoint is the base's, with or
without this path.  :func:`cautious_adamw_step` returns ``False`` (nothing done) where the step is not this
equation on plain fp32 tensors, or where compilation is not available; the caller then takes the eager path
(mask pass + base step), which computes the same equation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .scalars import device_scalars, read_values

logger = logging.getLogger("hf_lpwd")

_UNSUPPORTED_FLAGS = ("amsgrad", "maximize", "capturable", "differentiable")
_compiled: Any = None
_compile_failed = False
_compiled_once = False


def cautious_adamw_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    step_size: torch.Tensor,
    one_minus_beta1: torch.Tensor,
    beta2: torch.Tensor,
    eps: torch.Tensor,
    bias_correction2_sqrt: torch.Tensor,
    decay: torch.Tensor,
) -> None:
    """One cautious AdamW step of one tensor, in place, AdamW's ``step`` counter included.

    The scalars are 0-d tensors (one compiled kernel for every step and group), with the bias corrections of
    this step computed by the caller in double precision as torch's AdamW does: step_size = η/(1 − β1^t), √(1
    − β2^t).  The mask uses m_t, which has the sign of u_t = m̂_t/(√v̂_t+ε), and the weights before this step:
    θ_{t+1} = θ_t − η·u_t − d·1[u_t ⊙ θ_t ≥ 0] ⊙ θ_t.
    """
    step.add_(1)
    exp_avg.lerp_(grad, one_minus_beta1.to(grad.dtype))
    exp_avg_sq.mul_(beta2).add_(grad * grad * (1.0 - beta2))
    keep = (exp_avg * param) >= 0
    denom = exp_avg_sq.sqrt() / bias_correction2_sqrt + eps
    decayed = torch.where(keep, param - decay * param, param)
    param.copy_(decayed - step_size * exp_avg / denom)


def _kernel() -> Any:
    global _compiled
    if _compiled is None:
        # Not fullgraph: past dynamo's recompile limit the function runs eagerly, still this equation.
        _compiled = torch.compile(cautious_adamw_, dynamic=True)
    return _compiled


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D plain tensor on the same memory (and version counter), without ``_base``: dynamo treats
    parameters' shapes as static and guards on a view's base, so only this keeps one kernel for all."""
    return tensor.view(-1).detach()


def _supported(base: torch.optim.Optimizer, groups: Sequence[dict[str, Any]]) -> bool:
    """This equation, on plain, dense, contiguous fp32 tensors (and their states)."""
    if type(base) not in (torch.optim.AdamW, torch.optim.Adam):
        return False
    for group in groups:
        if any(group.get(flag, False) for flag in _UNSUPPORTED_FLAGS) or torch.is_tensor(group["lr"]):
            return False
        for p in group["params"]:
            if p.grad is None:
                continue
            if group.get("fused", False) and p.device.type != "cpu":  # its step counter lives on the device
                return False
            if (
                type(p.data) is not torch.Tensor or type(p.grad) is not torch.Tensor
            ):  # DTensor (FSDP2), subclasses
                return False
            if p.dtype != torch.float32 or p.grad.dtype != torch.float32 or p.grad.is_sparse:
                return False
            if not (p.is_contiguous() and p.grad.is_contiguous()):
                return False
            state = base.state.get(p)
            if state and not (state["exp_avg"].is_contiguous() and state["exp_avg_sq"].is_contiguous()):
                return False
    return True


def _init_state(base: torch.optim.Optimizer, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    """The state torch's Adam(W) would create for ``p`` (same keys, dtypes and devices)."""
    state = base.state[p]
    if len(state) == 0:
        on_device = group.get("capturable", False) or group.get("fused", False)
        scalar_dtype = (
            torch.float32 if on_device or torch.get_default_dtype() != torch.float64 else torch.float64
        )
        state["step"] = torch.zeros((), dtype=scalar_dtype, device=p.device if on_device else "cpu")
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state


def _scalars(
    group: dict[str, Any], step: float, decay: float, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """The kernel's 0-d arguments for a group's AdamW step number ``step`` (1-based), in float64."""
    beta1, beta2 = group["betas"]
    values = (
        group["lr"] / (1.0 - beta1**step),
        1.0 - beta1,
        beta2,
        group["eps"],
        (1.0 - beta2**step) ** 0.5,
        decay,
    )
    return device_scalars(device, [float(v) for v in values], torch.float64)


def cautious_adamw_step(base: torch.optim.Optimizer, decays: Sequence[float]) -> bool:
    """Step every group of ``base`` (Adam/AdamW, its ``weight_decay`` unused) with cautious decay
    ``decays[i]``.

    Returns ``False`` without touching anything when this path does not apply; the caller then runs the
    eager path.  A compilation failure (no C++ compiler, no Triton) is logged once and also returns ``False``.
    """
    global _compile_failed, _compiled_once
    groups = base.param_groups
    if _compile_failed or not _supported(base, groups):
        return False
    kernel = _kernel()
    for group, decay in zip(groups, decays, strict=True):
        scalars: dict[float, tuple[torch.Tensor, ...]] = {}  # by step number: a group's params share one
        taken = [(p, _init_state(base, group, p)) for p in group["params"] if p.grad is not None]
        counts = read_values([state["step"] for _, state in taken])  # one host read, not one per tensor
        for (p, state), count in zip(taken, counts, strict=True):
            step = count + 1.0
            if step not in scalars:
                scalars[step] = _scalars(group, step, decay, p.device)
            args = (
                *map(_flat, (p, p.grad, state["exp_avg"], state["exp_avg_sq"])),
                state["step"],
                *scalars[step],
            )
            if _compiled_once:
                kernel(*args)
                continue
            try:  # the first call compiles; nothing is written before it succeeds
                kernel(*args)
            except Exception as exc:  # no C++ compiler / Triton: the eager path computes the same equation
                _compile_failed = True
                logger.warning("LPWD: cautious decay takes the eager path (torch.compile failed: %s)", exc)
                return False
            _compiled_once = True
    return True
