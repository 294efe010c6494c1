"""What LPWD needs to know of the base optimizer it wraps: its class, how to step it, its direction's sign."""

from __future__ import annotations

from typing import Any

import torch

from ..settings import SCHEDULE_FREE_REASON

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adamw_torch": torch.optim.AdamW,
    "adamw_torch_fused": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
"""Names accepted for ``base``: short names and the Trainer's ``--optim`` names that map to one torch
class; any ``torch.optim.Optimizer`` subclass is accepted as well."""

CAUTIOUS_BASES: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)
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
        f"LPWD: base must be one of {sorted(BASE_OPTIMIZERS)} or a torch.optim.Optimizer subclass, got {base!r}"
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
            f"LPWD: cautious=True needs the sign of the base's update u per coordinate, which LPWD reads from "
            f"AdamW/Adam's first moment or SGD's momentum buffer; {base_cls.__name__} is not one of them. Use "
            "--optim adamw_torch_fused / adamw_torch / sgd, or cautious=False"
        )


def step_without_global_hooks(optimizer: torch.optim.Optimizer) -> Any:
    """Run ``optimizer.step()`` without torch's step hooks.

    torch wraps every ``Optimizer.step`` so that the global (and the instance's) step hooks fire.  The
    base is LPWD's internal engine: its step is part of LPWD's, whose own wrapper fires the hooks,
    once per step.
    """
    step = type(optimizer).step
    inner = getattr(step, "__wrapped__", None) if getattr(step, "hooked", False) else None
    return (inner or step)(optimizer)


def update_directions(base: torch.optim.Optimizer, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
    """After the base stepped ``params``, a tensor per parameter with the sign of the update u it took.

    Adam(W): u = m̂/(√v̂+ε) has the sign of ``exp_avg``.  SGD: u is the momentum buffer (with Nesterov
    g + μ·buf), or the gradient without momentum; ``maximize`` flips the gradient first, as torch does.
    """
    if isinstance(base, torch.optim.SGD):
        momentum, nesterov = group.get("momentum", 0.0), group.get("nesterov", False)
        sign = -1.0 if group.get("maximize", False) else 1.0
        out = []
        for p in params:
            buf = base.state.get(p, {}).get("momentum_buffer")
            grad = p.grad if sign == 1.0 else -p.grad
            if momentum == 0 or buf is None:
                out.append(grad)
            elif nesterov:
                out.append(grad.add(buf, alpha=momentum))
            else:
                out.append(buf)
        return out
    return [base.state[p]["exp_avg"] for p in params]
