"""pwd's ledger: which decay factor the weights of each param group carry, kept in the group itself.

With the fold, the weights between steps already carry the next step's pre-forward decay.  What resume needs
rides in the param groups, so ``state_dict()`` carries it and a resumed run is bitwise the uninterrupted one.
These four keys are the whole ledger (names kept from hf_lpwd 0.1.0/0.2.0):

* ``lpwd_applied_decay``: the factor 1 − d already applied for the coming step, ``None`` when none is;
* ``lpwd_group_index``: the group's position (DeepSpeed steps one group, or a sub-group, at a time);
* ``lpwd_applied_for_step`` / ``lpwd_carried_decay``: DeepSpeed ZeRO-3 steps a large group as several flat
  sub-groups, one ``step()`` call each: once the first is stepped, the group's applied factor already says
  step t+1's, while the sub-groups not stepped yet still carry step t's.
"""

from __future__ import annotations

from typing import Any

APPLIED_DECAY_KEY = "lpwd_applied_decay"
INDEX_KEY = "lpwd_group_index"
FOR_STEP_KEY = "lpwd_applied_for_step"
CARRIED_KEY = "lpwd_carried_decay"


def carried_factor(group: dict[str, Any], step_index: int | None) -> float:
    """The factor the weights about to be stepped carry now (read only; 1.0 when none)."""
    if step_index is not None and group.get(FOR_STEP_KEY) == step_index + 1:
        carried = group.get(CARRIED_KEY)
    else:
        carried = group.get(APPLIED_DECAY_KEY)
    return 1.0 if carried is None else float(carried)


def begin_step(group: dict[str, Any], step_index: int | None) -> float:
    """Open step t for ``group`` at its first (sub-)group call; return the factor its weights carry."""
    carried = carried_factor(group, step_index)
    if step_index is not None and group.get(FOR_STEP_KEY) != step_index + 1:
        group[CARRIED_KEY] = carried
        group[FOR_STEP_KEY] = step_index + 1
    return carried


def record(group: dict[str, Any], factor: float | None) -> None:
    """The weights of ``group`` now carry ``factor`` for the coming step."""
    group[APPLIED_DECAY_KEY] = factor


def applied(group: dict[str, Any]) -> float | None:
    value = group.get(APPLIED_DECAY_KEY)
    return None if value is None else float(value)


def clear(group: dict[str, Any]) -> None:
    """No decay is carried any more (after :meth:`hf_lpwd.LPWD.settle`)."""
    group[APPLIED_DECAY_KEY] = None
    group.pop(FOR_STEP_KEY, None)
    group.pop(CARRIED_KEY, None)
