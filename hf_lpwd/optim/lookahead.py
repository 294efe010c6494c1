"""The next step's lr, which pwd's fold needs one step ahead.

A ``LambdaLR`` (every Trainer schedule but ``reduce_lr_on_plateau``) computes any step's lr as base_lr ×
λ(step), so the fold predicts it exactly; for other schedulers it predicts the current lr and ``pre_step()``
corrects the steps where that was wrong.
"""

from __future__ import annotations

from typing import Any

import torch

from .ledger import INDEX_KEY


def as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def can_look_ahead(lr_scheduler: Any) -> bool:
    return isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR)


def step_index(lr_scheduler: Any) -> int | None:
    """Index t of the step being taken (the scheduler's ``last_epoch``), ``None`` without a scheduler."""
    last_epoch = getattr(lr_scheduler, "last_epoch", None)
    return int(last_epoch) if last_epoch is not None else None


def next_lr(group: dict[str, Any], lr_scheduler: Any, num_training_steps: int | None) -> float | None:
    """η_{t+1} of ``group`` as the scheduler will set it, or ``None`` when step t is the last one."""
    if lr_scheduler is None:
        return as_float(group["lr"])
    last_epoch = getattr(lr_scheduler, "last_epoch", None)
    if num_training_steps is not None and last_epoch is not None and last_epoch + 1 >= num_training_steps:
        return None
    index = group.get(INDEX_KEY)
    if can_look_ahead(lr_scheduler) and index is not None and index < len(lr_scheduler.lr_lambdas):
        return as_float(lr_scheduler.base_lrs[index] * lr_scheduler.lr_lambdas[index](last_epoch + 1))
    return as_float(group["lr"])
