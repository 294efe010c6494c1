"""DeepSpeed's calling conventions, as LPWDTrainer meets them (the decay math stays in :mod:`hf_lpwd.optim`).

Under ZeRO the model's weights are copies of DeepSpeed's fp32 master partitions, which LPWD's param groups
hold while DeepSpeed steps them: a pre-forward pass on the model would be overwritten, so pwd's decay acts
on the masters inside ``step()`` (``require_pre_step = False``), and the first step's decay is applied to
the model's weights before DeepSpeed copies them (:meth:`hf_lpwd.LPWD.decay_initial_weights`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .._compat.deepspeed import zero3_partition
from ..optim import LPWD

logger = logging.getLogger("transformers.hf_lpwd")


def storage(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding a parameter's values: its partition under ZeRO-3's ``zero.Init``, else itself."""
    return zero3_partition(param)


def zero12_optimizer(optimizer: Any) -> Any:
    """DeepSpeed's ZeRO-1/2 optimizer between the Trainer's wrappers and LPWD (the one that copies its fp32
    master partitions into the model's weights, ``update_lp_params``), or ``None`` (ZeRO-3, no DeepSpeed)."""
    while optimizer is not None and not isinstance(optimizer, LPWD):
        if callable(getattr(optimizer, "update_lp_params", None)):
            return optimizer
        optimizer = getattr(optimizer, "optimizer", None)
    return None


def settle(lpwd: LPWD, optimizer: Any, warn: bool) -> None:
    """pwd under DeepSpeed: divide out a decay applied for a step that will not come.

    ZeRO-1/2: LPWD's groups hold the fp32 master partitions; settle them, then DeepSpeed copies them into
    the model's weights as after a step (every rank: an all-gather).  ZeRO-3's masters sit outside LPWD's
    groups between steps, so the decay stays (``warn``: say so, with the factor per depth).
    """
    pending = lpwd.pending_decay
    zero = zero12_optimizer(optimizer)
    if zero is not None:
        lpwd.settle()
        if pending:
            zero.update_lp_params()
        return
    if pending and warn:
        logger.warning(
            "LPWD under DeepSpeed ZeRO-3: the run stopped before max_steps, and the final weights keep the "
            "decay folded in for the step that never came, θ' = (1 - lr·λ)·θ with 1 - lr·λ per depth %s (the "
            "weights an evaluation at that point sees), not unfolded pwd's θ", pending,
        )
    lpwd.forget_applied_decay()
