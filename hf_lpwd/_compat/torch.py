"""torch's private names the package relies on (guarded by ``tests/test_compat.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

PRIVATE_NAMES = (
    "torch._foreach_norm",
    "torch._foreach_mul_",
    "Optimizer._optimizer_state_dict_pre_hooks / _post_hooks",
    "Optimizer._optimizer_load_state_dict_pre_hooks / _post_hooks",
    "Optimizer.step.hooked / __wrapped__ (profile_hook_step)",
    "torch._foreach_lerp_",
    "torch._foreach_copy_",
    "torch._dynamo.config.recompile_limit",
    "ChainedScheduler._schedulers",
)


def foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """‖t‖₂ of every tensor, one fused kernel per device and dtype.

    The public ``torch.nn.utils.get_total_norm`` (torch ≥ 2.6) returns only the root of the sum, in the
    inputs' dtype; the per-depth norms need each norm, and the squares summed in float32.
    """
    return list(torch._foreach_norm(tensors))


def foreach_lerp_(tensors: list[torch.Tensor], ends: list[torch.Tensor], weight: float) -> None:
    """t ← t + weight·(end − t) for every tensor, one fused kernel: the decay toward θ₀ in one pass.

    No public in-place multi-tensor lerp exists; ``t.lerp_`` per tensor launches one kernel each.
    """
    torch._foreach_lerp_(tensors, ends, weight)


def foreach_copy_(tensors: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """t ← s for every pair, one fused call (the small tensors of a packed rounded step written back).

    No public multi-tensor copy exists; a Python loop of ``copy_`` dispatches once per tensor.
    """
    torch._foreach_copy_(tensors, sources)


def foreach_add_(tensors: list[torch.Tensor], value: float) -> None:
    """t ← t + value for every tensor, one call (the step counters, as torch's foreach AdamW adds them).

    No public in-place multi-tensor add exists; a Python loop of ``add_`` dispatches once per tensor.
    """
    torch._foreach_add_(tensors, value)


def foreach_mul_(tensors: list[torch.Tensor], factor: float) -> None:
    """t ← factor·t for every tensor, one fused kernel (what torch's own foreach optimizers use).

    No public in-place multi-tensor scale exists; a Python loop of ``mul_`` launches one kernel per tensor.
    """
    torch._foreach_mul_(tensors, factor)


class OptimizerHookDicts(NamedTuple):
    """The hooks ``register_state_dict_pre_hook`` & co. store, by handle id, in registration order."""

    state_dict_pre: dict[int, Callable[..., Any]]
    state_dict_post: dict[int, Callable[..., Any]]
    load_state_dict_pre: dict[int, Callable[..., Any]]
    load_state_dict_post: dict[int, Callable[..., Any]]


def optimizer_hook_dicts(optimizer: torch.optim.Optimizer) -> OptimizerHookDicts:
    """The hook dicts of ``optimizer``, for a wrapper that delegates ``state_dict`` to an inner optimizer.

    torch registers these hooks publicly but runs them only inside ``Optimizer.state_dict`` /
    ``load_state_dict`` of the same object; no public call runs them around another object's state
    dict.
    """
    return OptimizerHookDicts(
        optimizer._optimizer_state_dict_pre_hooks,
        optimizer._optimizer_state_dict_post_hooks,
        optimizer._optimizer_load_state_dict_pre_hooks,
        optimizer._optimizer_load_state_dict_post_hooks,
    )


def step_without_hooks(optimizer_cls: type[torch.optim.Optimizer]) -> Callable[..., Any]:
    """The class's ``step`` before torch wrapped it to fire the global and per-instance step hooks.

    torch wraps each class's ``step`` once (``Optimizer._patch_step_function``), marks the wrapper
    ``hooked = True`` and keeps the original as ``__wrapped__`` (functools.wraps); no public switch turns
    the hooks off for one call.
    """
    step = optimizer_cls.step
    inner = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    return inner or step


def call_with_recompile_limit(fn: Callable[..., Any], args: tuple[Any, ...], limit: int) -> Any:
    """``fn(*args)`` with dynamo allowed ``limit`` compiled variants per function while it runs.

    dynamo's default (8 per code object) is process-wide; a kernel over lists of tensors has one variant per
    list length, θ₀ or not, mask or not and dtype, so a process trying several settings (a sweep, a test
    suite) passes 8 and silently runs the rest eagerly.  Raised only around our own calls, the user's
    functions keep their own budget.
    """
    config = torch._dynamo.config
    old = config.recompile_limit
    if old >= limit:
        return fn(*args)
    config.recompile_limit = limit
    try:
        return fn(*args)
    finally:
        config.recompile_limit = old


def chained_schedulers(lr_scheduler: Any) -> list[Any]:
    """The schedulers a ``ChainedScheduler`` steps together (each once per its ``step()``); ``[]`` for any
    other.  ``ChainedScheduler`` keeps no ``last_epoch`` of its own and no public list of them."""
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.ChainedScheduler):
        return list(lr_scheduler._schedulers)
    return []
