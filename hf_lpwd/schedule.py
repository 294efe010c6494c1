"""The lr schedule of a run as scale factors s_t (η_t = η̄·s_t), before or after the Trainer builds it.

The shrink S = Σ_t d_t of the layer table and the first step's decay under DeepSpeed both need the
schedule's values; they come from transformers' own ``get_scheduler`` or from the scheduler itself, never
from a copy of its formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .optim.functional import decay_per_step


def scheduler_scales(lr_scheduler: Any, num_training_steps: int) -> list[list[float]] | None:
    """s_t per param group of a ``LambdaLR`` (every Trainer schedule but ``reduce_lr_on_plateau``), or
    ``None``.

    Groups sharing one lambda (the Trainer's) are evaluated once.
    """
    if not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
        return None
    cache: dict[int, list[float]] = {}
    out = []
    for fn in lr_scheduler.lr_lambdas:
        if id(fn) not in cache:
            cache[id(fn)] = [float(fn(t)) for t in range(num_training_steps)]
        out.append(cache[id(fn)])
    return out


def _probe_scheduler(lr_scheduler_type: Any, num_training_steps: int, num_warmup_steps: int,
                     scheduler_kwargs: dict | None, lr: float = 1.0) -> tuple[Any, torch.optim.Optimizer]:
    """transformers' ``get_scheduler`` on a one-tensor optimizer at ``lr``: the Trainer's schedule without
    a model (an absolute ``min_lr`` is read as a fraction of ``lr``)."""
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = get_scheduler(lr_scheduler_type, optimizer=probe, num_warmup_steps=num_warmup_steps,
                              num_training_steps=num_training_steps,
                              scheduler_specific_kwargs=scheduler_kwargs or {})
    return scheduler, probe


def trainer_schedule_scales(
    lr_scheduler_type: str, num_training_steps: int, num_warmup_steps: int = 0,
    scheduler_kwargs: dict | None = None
) -> list[float]:
    """s_t of a Trainer schedule (``--lr_scheduler_type``), from transformers' ``get_scheduler`` on a
    probe."""
    scheduler, _ = _probe_scheduler(lr_scheduler_type, num_training_steps, num_warmup_steps, scheduler_kwargs)
    scales = scheduler_scales(scheduler, num_training_steps)
    if scales is None:
        raise ValueError(f"--lr_scheduler_type {lr_scheduler_type} cannot say its lrs ahead of the run")
    return scales[0]


def first_step_scale(args: Any) -> float:
    """s_0 of the schedule the Trainer will build from ``TrainingArguments``: the first step's lr is lr × s_0.

    0 with any warm-up from lr 0, 1 without one, for every Trainer schedule; the length only shapes later
    steps.
    """
    total = args.max_steps if args.max_steps > 0 else 1_000_000
    _, probe = _probe_scheduler(args.lr_scheduler_type, total, args.get_warmup_steps(total),
                                args.lr_scheduler_kwargs)
    return float(probe.param_groups[0]["lr"])


NOMINAL_STEPS = 1000
"""The length a schedule is probed at before the run's is known: every Trainer schedule's highest scale is
reached at the peak or at the end (a ``min_lr`` above the peak), whatever the length."""


def schedule_rise(args: Any, lr: float) -> float:
    """max_t s_t of the schedule the Trainer will build from ``TrainingArguments``: above 1 only where its
    kwargs lift the lr over ``--learning_rate`` (``cosine_with_min_lr``'s ``min_lr``,
    ``warmup_stable_decay``'s ``min_lr_ratio`` > 1); probed at the run's peak ``lr``, which an absolute
    ``min_lr`` is a fraction of.  1 where the schedule cannot be probed here (the Trainer
    will say why)."""
    if getattr(args, "lr_scheduler_type", None) is None:  # not TrainingArguments: no schedule to probe
        return 1.0
    length = args.max_steps if args.max_steps > 0 else NOMINAL_STEPS
    warmup = args.get_warmup_steps(length)
    # the highest scale is the peak's or the end's at any length: a long run is probed at the nominal
    # length, its warm-up in proportion
    total = min(length, NOMINAL_STEPS)
    warmup = warmup * total // length
    try:
        scheduler, _ = _probe_scheduler(args.lr_scheduler_type, total, warmup, args.lr_scheduler_kwargs, lr)
    except (ValueError, TypeError):  # bad kwargs: the Trainer raises its own error on them
        return 1.0
    scales = scheduler_scales(scheduler, total)
    return 1.0 if scales is None else max(1.0, max(scales[0], default=1.0))


def highest_decay(groups: Sequence[dict[str, Any]], base_lrs: Sequence[float],
                  scales: Sequence[Sequence[float]], lr_coupling: str) -> tuple[float, int, int]:
    """(max d_t, its group, its step) over a run whose group g has lr η̄_g·s_t: d_t grows with η_t under
    every coupling, so each group's highest scale gives its highest decay."""
    best = (0.0, 0, 0)
    for index, (group, base_lr, group_scales) in enumerate(zip(groups, base_lrs, scales, strict=True)):
        if not group_scales or float(group["weight_decay"]) == 0.0:
            continue
        step = max(range(len(group_scales)), key=group_scales.__getitem__)
        decay = decay_per_step(lr_coupling, float(group["weight_decay"]), base_lr * group_scales[step],
                               base_lr)
        if decay > best[0]:
            best = (decay, index, step)
    return best


def groups_shrink(groups: Sequence[dict[str, Any]], base_lrs: Sequence[float],
                  scales: Sequence[Sequence[float]], settings: dict[str, Any]) -> list[float]:
    """:func:`group_shrink` of every param group (λ from the group, η̄ and s_t per group, the settings'
    coupling)."""
    return [group_shrink(float(g["weight_decay"]), float(lr), s, settings["lr_coupling"])
            for g, lr, s in zip(groups, base_lrs, scales, strict=True)]


def group_shrink(weight_decay: float, base_lr: float, scales: Sequence[float],
                 lr_coupling: str = "coupled") -> float:
    """S = Σ_t d_t over a run whose lr is η̄·s_t: the log-shrink of a weight no gradient moves.

    Such a weight ends at Π_t (1 − d_t)·θ_0 ≈ e^(−S)·θ_0, whatever the timing, so S says how much of a
    weight the decay alone removes over the run; with d_t of the lr coupling (see
    :mod:`hf_lpwd.optim.functional`).
    """
    if weight_decay == 0.0:
        return 0.0
    return float(sum(decay_per_step(lr_coupling, weight_decay, base_lr * s, base_lr) for s in scales))
