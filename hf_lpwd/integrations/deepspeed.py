"""DeepSpeed's calling conventions, as LPWDTrainer meets them (the decay math stays in :mod:`hf_lpwd.optim`).

Under ZeRO the model's weights are copies of DeepSpeed's fp32 master partitions, which LPWD's param groups
hold while DeepSpeed steps them: a pre-forward pass on the model would be overwritten, so pwd's decay acts
on the masters inside ``step()`` (``require_pre_step = False``), and the first step's decay is applied to
the model's weights before DeepSpeed copies them (:meth:`hf_lpwd.LPWD.decay_initial_weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .._compat.deepspeed import is_zero3_optimizer, zero3_masters, zero3_masters_to_model, zero3_partition
from ..optim import LPWD

logger = logging.getLogger("transformers.hf_lpwd")


def storage(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding a parameter's values: its partition under ZeRO-3's ``zero.Init``, else itself."""
    return zero3_partition(param)


def wrapper(optimizer: Any, holds: Callable[[Any], bool]) -> Any:
    """The first of the wrappers between the Trainer's optimizer and LPWD (each one's ``.optimizer``) for
    which ``holds`` is true, or ``None``."""
    while optimizer is not None and not isinstance(optimizer, LPWD):
        if holds(optimizer):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def zero12_optimizer(optimizer: Any) -> Any:
    """DeepSpeed's ZeRO-1/2 optimizer between the Trainer's wrappers and LPWD (the one that copies its fp32
    master partitions into the model's weights, ``update_lp_params``), or ``None`` (ZeRO-3, no DeepSpeed)."""
    return wrapper(optimizer, lambda o: callable(getattr(o, "update_lp_params", None)))


def settle(lpwd: LPWD, optimizer: Any, warn: bool) -> None:
    """pwd under DeepSpeed: divide out a decay applied for a step that will not come.

    LPWD's decay acts on DeepSpeed's fp32 master partitions, which the model's weights copy.  ZeRO-1/2's
    groups hold the masters between steps: settle them, then DeepSpeed copies them into the model's weights
    as after a step.  ZeRO-3 hands its groups one sub-group's master at a time, so the groups are given all
    their masters for the division, then the masters are copied as after a step (both: every rank, a
    collective).  Where the masters are not in memory (ZeRO-3 swapping to NVMe) the decay stays (``warn``:
    say so, with the factor per depth).
    """
    pending = lpwd.pending_decay
    zero = zero12_optimizer(optimizer)
    if zero is not None:
        lpwd.settle()
        if pending:
            zero.update_lp_params()
        return
    zero3 = wrapper(optimizer, is_zero3_optimizer)
    masters = zero3_masters(zero3) if zero3 is not None else None
    if masters is not None:
        settle_zero3(lpwd, masters)
        if pending:
            zero3_masters_to_model(zero3)
        return
    if pending and warn:
        where = ("ZeRO-3 with the optimizer state swapped to NVMe" if zero3 is not None
                 else f"a DeepSpeed optimizer whose masters LPWD cannot reach ({type(optimizer).__name__})")
        logger.warning(
            "LPWD under %s: the run stopped before max_steps, and the final weights keep the decay folded in "
            "for the step that never came, θ' = (1 - lr·λ)·θ with 1 - lr·λ per depth %s (the weights an "
            "evaluation at that point sees), not unfolded pwd's θ", where, pending,
        )
    lpwd.forget_applied_decay()


def settle_zero3(lpwd: LPWD, masters: list[tuple[int, torch.Tensor]]) -> None:
    """``lpwd.settle()`` with each group holding all of its ZeRO-3 master partitions (θ₀ is kept per
    partition), then the groups' ``params`` as DeepSpeed left them."""
    held = [group["params"] for group in lpwd.param_groups]
    for index, group in enumerate(lpwd.param_groups):
        group["params"] = [master for owner, master in masters if owner == index]
    try:
        lpwd.settle()
    finally:
        for group, params in zip(lpwd.param_groups, held, strict=True):
            group["params"] = params
