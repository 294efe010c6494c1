"""The decay's target: toward zero (weight decay) or toward the weights θ₀ the optimizer was built with.

Toward θ₀ every timing is today's timing in the coordinates δ = θ − θ₀ (the update u does not depend on θ):

* ``wd``   θ ← θ − η_t·u − d_t·(θ − θ₀)
* ``rwd``  θ ← θ₀ + (1 − d_t)·(θ − η_t·u − θ₀)
* ``pwd``  θ ← θ₀ + (1 − d_t)·(θ − θ₀) before the forward, then θ ← θ − η_t·u
* cautious ``wd``  θ ← θ − η_t·u − d_t·1[u ⊙ (θ − θ₀) ≥ 0] ⊙ (θ − θ₀)

This is the L2-SP penalty, (α/2)·‖w_S − w_S⁰‖² on the weights the source model had, toward their pretrained
values w_S⁰, and (β/2)·‖w_S̄‖² toward 0 on those it lacked (the new head) (Li, Grandvalet & Davoine, ICML
2018, arXiv 1802.01483, read on arXiv), applied as a decoupled decay the way AdamW applies λ/2·‖θ‖²
(Loshchilov & Hutter 2019); SPD (Tian, Huang & Kira 2024, arXiv 2411.01713) decays toward θ₀ in the same
coordinates, selectively.

A scale pass θ ← f·θ of target zero becomes θ ← θ₀ + f·(θ − θ₀) = lerp(θ, θ₀, 1 − f): one fused pass
that reads θ and θ₀ and writes θ (``torch._foreach_lerp_``), not a multiply plus an add.  AdamW's own
decay cannot take θ₀, so a group decayed toward θ₀ runs its base with λ = 0 and this pass (on bf16/fp16
weights the θ₀ term is inside the step's one stochastic rounding, :mod:`.rounded_step`).

θ₀ is optimizer state, one copy per decayed parameter (groups with λ > 0 and target ``init``), held by
``LPWD.initial_weights`` beside the base's state (torch's Adam takes a non-empty ``state[p]`` for an
initialised one) and saved as ``state_dict()["state"][i]["decay_target"]``, in the weight's own dtype:
the value it holds *is* θ₀ exactly (bf16 weights hold bf16 numbers), so a wider copy would store nothing
more, and bf16 weights pay 2 bytes per weight.  It is created
from the parameter itself (``clone``), so a DTensor (FSDP2) parameter gets a θ₀ sharded like it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .._compat.torch import foreach_lerp_
from .rounding import LOW_PRECISION_DTYPES, NoiseKeys, element_bits, round_to

DECAY_TARGETS = ("zero", "init")
"""Values of ``LPWD(decay_target=...)`` and of a param group's ``decay_target`` key."""
GROUP_KEY = "decay_target"
"""A param group's own target (wins over the optimizer's, e.g. ``"zero"`` for a new classifier head)."""
STATE_KEY = "decay_target"
"""``state[p]`` key of θ₀, the weights a parameter decays toward."""


def check_target(value: Any, where: str) -> str:
    """``value`` if it is one of :data:`DECAY_TARGETS`, else a ``ValueError`` naming ``where``."""
    if value not in DECAY_TARGETS:
        raise ValueError(
            f"{where}={value!r} is not one of {list(DECAY_TARGETS)} ('zero': weight decay toward 0; "
            "'init': toward the weights the optimizer was built with)"
        )
    return value


@torch.no_grad()
def initial_copy(param: torch.Tensor) -> torch.Tensor:
    """θ₀ of ``param``: a detached copy in its own dtype, device and layout (a DTensor stays sharded)."""
    return param.detach().clone()


def pack(
    state_dict: dict[str, Any],
    params: list[torch.Tensor],
    anchors: Mapping[torch.Tensor, torch.Tensor],
) -> dict[str, Any]:
    """``state_dict`` with θ₀ as ``state[i]["decay_target"]`` of each parameter (index i in group order).

    The base's own entries are copied, never changed: torch's ``state_dict()`` hands out the live dicts.
    """
    if not anchors:
        return state_dict
    packed = dict(state_dict.get("state", {}))
    for index, p in enumerate(params):
        if p in anchors:
            packed[index] = {**packed.get(index, {}), STATE_KEY: anchors[p]}
    return {**state_dict, "state": packed}


def unpack(
    state_dict: dict[str, Any], params: list[torch.Tensor]
) -> tuple[dict[str, Any], dict[torch.Tensor, torch.Tensor]]:
    """(``state_dict`` without θ₀, for the base; θ₀ per parameter, cast like torch casts a state tensor).

    θ₀ stays out of the base's state: torch's Adam takes a non-empty state for an initialised one (its
    ``__setstate__`` and step read ``state["step"]``).
    """
    saved = state_dict.get("state", {})
    if not any(STATE_KEY in entry for entry in saved.values()):
        return state_dict, {}
    stripped: dict[Any, Any] = {}
    found: dict[torch.Tensor, torch.Tensor] = {}
    for index, entry in saved.items():
        rest = {key: value for key, value in entry.items() if key != STATE_KEY}
        if rest:
            stripped[index] = rest
        if STATE_KEY in entry and isinstance(index, int) and index < len(params):
            p = params[index]
            found[p] = entry[STATE_KEY].to(dtype=p.dtype, device=p.device)
    return {**state_dict, "state": stripped}, found


def _lerp_rounded_(param: torch.Tensor, anchor: torch.Tensor, factor: float, keys: NoiseKeys) -> None:
    """θ ← SR(θ₀ + f·(θ − θ₀)) for one bf16/fp16 tensor, computed in fp32 (E[θ'] is the fp32 value)."""
    local = param.to_local() if hasattr(param, "to_local") else param
    start = anchor.to_local() if hasattr(anchor, "to_local") else anchor
    if local.numel() == 0:
        return
    key = torch.tensor(keys.next_key(), dtype=torch.int32, device=local.device)
    bits = element_bits(local.numel(), key, local.device).view(local.shape)
    origin = start.float()
    value = origin + factor * (local.float() - origin)
    local.copy_(round_to(value, local.dtype, bits))


@torch.no_grad()
def toward_(
    params: list[torch.Tensor],
    anchors: list[torch.Tensor],
    factor: float,
    *,
    stochastic: bool,
    keys: NoiseKeys,
) -> None:
    """θ ← θ₀ + factor·(θ − θ₀) for every tensor: the scale pass of target ``init``.

    fp32/fp64 (and bf16/fp16 without ``stochastic``): one ``_foreach_lerp_`` with weight 1 − factor.
    bf16/fp16 with ``stochastic``: in fp32, written with one stochastic rounding keyed by ``keys`` (these
    passes are pwd's rare corrections and the decay of tensors the rounded step does not take).
    """
    if factor == 1.0 or not params:
        return
    pairs = list(zip(params, anchors, strict=True))
    exact = [(p, a) for p, a in pairs if not stochastic or p.dtype not in LOW_PRECISION_DTYPES]
    if exact:
        foreach_lerp_([p for p, _ in exact], [a for _, a in exact], 1.0 - factor)
    if len(exact) == len(params):
        return
    for p, a in pairs:
        if stochastic and p.dtype in LOW_PRECISION_DTYPES:
            _lerp_rounded_(p, a, factor, keys)
