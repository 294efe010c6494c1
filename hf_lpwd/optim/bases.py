"""What LPWD needs to know of the base optimizer it wraps: its class, how to step it, its direction's sign."""

from __future__ import annotations

from typing import Any

import torch

from .._compat.torch import step_without_hooks
from ..settings import SCHEDULE_FREE_REASON

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adamw_torch": torch.optim.AdamW,
    "adamw_torch_fused": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
"""Names accepted for ``base``: short names and the Trainer's ``--optim`` names that map to one torch
class; any ``torch.optim.Optimizer`` subclass is accepted as well."""

CAUTIOUS_BASES: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.AdamW,
    torch.optim.Adam,
    torch.optim.SGD,
)
"""Bases whose update direction's sign LPWD can read after the step (Adam's m, SGD's momentum buffer)."""


def resolve_base(base: str | type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """The optimizer class for ``base`` (a name in :data:`BASE_OPTIMIZERS` or a class)."""
    if isinstance(base, str):
        try:
            return BASE_OPTIMIZERS[base.lower()]
        except KeyError:
            raise ValueError(
                f"LPWD: unknown base {base!r}; valid names are {sorted(BASE_OPTIMIZERS)}, "
                "or pass any torch.optim.Optimizer subclass"
            ) from None
    if isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
        return base
    raise ValueError(
        f"LPWD: base must be one of {sorted(BASE_OPTIMIZERS)} or a torch.optim.Optimizer subclass, got "
        f"{base!r}"
    )


def refuse_schedule_free(base_cls: type) -> None:
    """Schedule-free optimizers switch the model's weights with ``train()`` / ``eval()``."""
    if callable(getattr(base_cls, "train", None)) and callable(getattr(base_cls, "eval", None)):
        raise ValueError(
            f"LPWD: {base_cls.__name__} is a schedule-free optimizer: {SCHEDULE_FREE_REASON}. Use its own "
            "weight_decay with the stock Trainer, or an optimizer with one weight sequence "
            "(--optim adamw_torch_fused, adamw_torch, sgd, adafactor) with LPWD."
        )


def refuse_cautious_base(base_cls: type) -> None:
    if not issubclass(base_cls, CAUTIOUS_BASES):
        raise ValueError(
            "LPWD: cautious=True needs the sign of the base's update u per coordinate, which LPWD reads from "
            f"AdamW/Adam's first moment or SGD's momentum buffer; {base_cls.__name__} is not one of them. "
            "Use --optim adamw_torch_fused / adamw_torch / sgd, or cautious=False"
        )


def step_without_global_hooks(optimizer: torch.optim.Optimizer) -> Any:
    """Run ``optimizer.step()`` without torch's step hooks.

    torch wraps every ``Optimizer.step`` so that the global (and the instance's) step hooks fire.  The base is
    LPWD's internal engine: its step is part of LPWD's, whose own wrapper fires the hooks, once per step.
    """
    return step_without_hooks(type(optimizer))(optimizer)


def coming_update_direction(
    base: torch.optim.Optimizer, group: dict[str, Any], param: torch.Tensor
) -> torch.Tensor:
    """A new tensor with the sign of the update u the base's coming step will take for ``param``.

    Read before the step, from the gradient and the state the step will update: Adam(W)'s m_t = β1·m_{t−1} +
    (1 − β1)·g (u = m̂/(√v̂+ε) has its sign); SGD's momentum buffer μ·buf + (1 − dampening)·g (the gradient
    itself on the first step or without momentum; Nesterov g + μ·buf_t).  ``maximize`` negates the gradient
    first, as torch does.
    """
    grad = -param.grad if group.get("maximize", False) else param.grad
    state = base.state.get(param, {})
    if isinstance(base, torch.optim.SGD):
        momentum = group.get("momentum", 0.0)
        buf = state.get("momentum_buffer")
        if momentum == 0:
            return grad.clone()
        buf = (
            grad.clone()
            if buf is None
            else buf.mul(momentum).add_(grad, alpha=1.0 - group.get("dampening", 0.0))
        )
        return grad.add(buf, alpha=momentum) if group.get("nesterov", False) else buf
    exp_avg = state.get("exp_avg")
    if exp_avg is None:
        return grad.clone()  # m_1 = (1 − β1)·g
    return torch.lerp(exp_avg, grad.to(exp_avg.dtype), 1.0 - group["betas"][0])
