"""The next step's lr, which pwd's fold needs one step ahead.

A ``LambdaLR`` (every Trainer schedule but ``reduce_lr_on_plateau`` and ``greedy``) computes any step's lr
as base_lr × λ(step), so the fold predicts it exactly; for other schedulers it predicts the current lr and
``pre_step()`` corrects the steps where that was wrong.  The index of the step is the scheduler's
``last_epoch``, except for schedulers stepped with a metric (``ReduceLROnPlateau``), which count evaluations
there: the training loop then gives the count of steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .._compat.torch import chained_schedulers
from .ledger import INDEX_KEY


def as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def can_look_ahead(lr_scheduler: Any) -> bool:
    return isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR)


def counts_steps(lr_scheduler: Any) -> bool:
    """Whether the scheduler's ``last_epoch`` counts optimizer steps.  One stepped with a metric
    (``ReduceLROnPlateau``, transformers' ``GreedyLR``) counts the evaluations it was given."""
    try:
        parameters = inspect.signature(lr_scheduler.step).parameters
    except (AttributeError, TypeError, ValueError):
        return True
    return "metrics" not in parameters


def unwrapped(lr_scheduler: Any) -> Any:
    """The scheduler that sets the lrs: a wrapper without a ``last_epoch`` of its own that steps the one it
    holds as ``.scheduler`` (Accelerate's ``AcceleratedScheduler``) is read through."""
    while (lr_scheduler is not None and not hasattr(lr_scheduler, "last_epoch")
           and getattr(lr_scheduler, "scheduler", None) is not None):
        lr_scheduler = lr_scheduler.scheduler
    return lr_scheduler


def _last_epoch(lr_scheduler: Any) -> int | None:
    last_epoch = getattr(lr_scheduler, "last_epoch", None)
    if last_epoch is None:  # a ChainedScheduler steps its schedulers together: the first one's count
        chained = chained_schedulers(lr_scheduler)
        last_epoch = getattr(chained[0], "last_epoch", None) if chained else None
    return int(last_epoch) if last_epoch is not None else None


def step_index(lr_scheduler: Any, steps_taken: Callable[[], int] | None = None) -> int | None:
    """Index t of the step being taken: the scheduler's ``last_epoch`` where it counts optimizer steps, else
    ``steps_taken()`` (the Trainer's ``global_step``); ``None`` when neither says."""
    if lr_scheduler is not None and counts_steps(lr_scheduler):
        last_epoch = _last_epoch(lr_scheduler)
        if last_epoch is not None:
            return last_epoch
    return None if steps_taken is None else int(steps_taken())


def next_lr(group: dict[str, Any], lr_scheduler: Any, num_training_steps: int | None,
            step: int | None) -> float | None:
    """η_{t+1} of ``group`` as the scheduler will set it (t = ``step``, see :func:`step_index`), or ``None``
    when step t is the last one."""
    if lr_scheduler is None:
        return as_float(group["lr"])
    if num_training_steps is not None and step is not None and step + 1 >= num_training_steps:
        return None
    index = group.get(INDEX_KEY)
    if can_look_ahead(lr_scheduler) and index is not None and index < len(lr_scheduler.lr_lambdas):
        return as_float(lr_scheduler.base_lrs[index] * lr_scheduler.lr_lambdas[index](step + 1))
    return as_float(group["lr"])
