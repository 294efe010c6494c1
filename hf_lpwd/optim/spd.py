"""Selective Projection Decay (SPD) as plain functions: decay toward θ₀, per tensor, only where selected.

Tian, Huang & Kira, "Rethinking Weight Decay for Robust Fine-Tuning of Foundation Models" (NeurIPS 2024, arXiv
2411.01713), read in the authors' public code, github.com/GT-RIPL/Selective-Projection-Decay ``adamSPD.py``
(commit b377695, the repository's only commit; line numbers below are that file's).  The paper's full text was
not reachable from this machine; its abstract and published summaries state the same condition
c_t = −g_tᵀ(θ_{t−1} − θ₀), "regularize when c_t < 0", and the deviation ratio r_t with a hyper-parameter λ.

In the project's notation (θ the weights before the step, θ₀ the anchor, u_t the base optimizer's update
direction, η_t the lr, g_t the raw gradient), for every tensor (a "layer" in the paper is one parameter
tensor: the loop at adamSPD.py:111 handles each ``param`` on its own)::

    θ̃   = θ − η_t·u_t                                   the base's step            (adamSPD.py:140-141)
    c_t = −⟨g_t, θ − θ₀⟩                                 selection condition        (adamSPD.py:145)
    r_t = clip((‖θ̃ − θ₀‖ − ‖θ − θ₀‖) / ‖θ̃ − θ₀‖, 0, 1)    deviation ratio            (adamSPD.py:152-155)
    θ ← θ̃ − λ·r_t·(θ̃ − θ₀)   if c_t < 0, else θ ← θ̃       the decay                  (adamSPD.py:146-148)

Selection: c_t < 0 means the descent direction −g_t points against the layer's progress θ − θ₀ (their
"inconsistent loss reduction"); a layer whose progress agrees with its gradient (c_t ≥ 0) moves freely.  The
ratio is the fraction of θ̃'s deviation that is *new* this step: with λ = 1 the decay projects θ̃ back onto
the sphere ‖θ − θ₀‖ = ‖θ_{t−1} − θ₀‖ (the deviation of a selected layer never grows), λ < 1 goes part of the
way; a step that shrinks the deviation has r_t clipped to 0 and is not decayed (r_t ≤ 1 always, so
the upper clip never acts).  Note that a selected layer
is decayed only when the base's update u_t nonetheless grows its deviation (for plain SGD, u = g, this needs
a step long enough to overshoot); with Adam, momentum and the per-coordinate scaling make u_t and g_t
disagree often.

**Timing and target.**  The decay multiplies the deviation *after* the base step, θ̃ − θ₀ (adamSPD.py:148),
and r_t needs θ̃: in this project's terms that is the ``rwd`` timing, θ ← θ₀ + (1 − d_t)·(θ − η_t·u_t − θ₀)
with d_t = λ·r_t.  ``wd`` is refused, not offered as a variant: its form θ̃ − λ·r_t·(θ − θ₀) (the pre-step
deviation decayed) differs from the published rule only by the second-order term λ·r_t·η_t·u_t, yet it
would need θ − θ₀ of every tensor kept across the base step (a copy of the decayed weights, or a pass that
computes u_t first): a cost for a rule nobody published.  ``pwd`` decays before the forward, when θ̃ does
not exist (:func:`check_spd`).  Target: ``init`` (θ₀, the weights the optimizer was built with) is the
paper's; target ``zero`` (anchors 0) is their LoRA form (README: ``pre=None``, see **LoRA** below) and,
for a full model, selective decay toward 0.

**Strength.**  λ is dimensionless, in [0, 1], and is *not* multiplied by the lr (adamSPD.py:148 uses
``weight_decay`` alone): r_t already scales with the step, since ‖θ̃ − θ₀‖ − ‖θ − θ₀‖ ≤ η_t·‖u_t‖.  So
none of the project's lr couplings applies to it: d_t = λ·r_t, and a layer-wise profile can only scale λ
within [0, 1].

**Differences from AdamSPD** (what these functions do that their optimizer does not, or the other way):

* Their base is Adam (no decoupled decay of its own, amsgrad optional); here u_t is any base's direction.
* Their hyper-parameter is the group's ``weight_decay`` (default 0, adamSPD.py:8), used as λ above; the usual
  AdamW values (0.01–0.1) mean a weak SPD here, λ = 1 the full projection.
* θ̃ = θ₀ with a selected layer gives 0/0 = NaN in their ratio (adamSPD.py:154); here r_t = 0 (no deviation, so
  nothing to decay).
* Their condition and norms are computed in the parameter's dtype; here in at least fp32 (θ − θ₀, the
  products and the sums of bf16 weights are not rounded to bf16's 8 bits).
* They branch on ``condition < 0.0`` in Python (a host sync per tensor on a GPU); here every tensor's
  condition is read in one transfer per step (one sync on a GPU), and an unselected tensor skips ‖θ̃ − θ₀‖
  and the lerp (5 of its streams) on every device.
* Their anchors are a deep copy of the parameters in the parameters' dtype (README), ``None`` meaning zeros
  of the parameter's shape, allocated every step (adamSPD.py:144).

**LoRA** (``pre = None`` in their README: the anchors are 0).  With ΔW = s·B·A (B: out×r, A: r×in, s the
adapter's scaling) and G = ∂L/∂ΔW, the adapters' gradients are g_A = s·Bᵀ·G and g_B = s·G·Aᵀ, so
⟨g_A, A⟩ = ⟨g_B, B⟩ = ⟨G, s·B·A⟩ = ⟨G, ΔW⟩: the condition of A toward 0 and of B toward 0 are *exactly* ΔW's
condition toward 0, and A and B are selected together.  The decay is not ΔW's: AdamSPD decays A and B each
toward 0 with its own ratio (of ‖A‖ and of ‖B‖), so ΔW is scaled by (1 − λ·r_A)(1 − λ·r_B), not by ΔW's
(1 − λ·r_ΔW).  So "SPD decays ΔW toward 0" is, in the project's terms, per-tensor SPD on A and on B with
anchors **0** (not θ₀: A starts at a random A₀, and target θ₀ would pull A toward A₀, B toward B₀ = 0) — the
condition exact, the strength per factor.  An exact ΔW-level SPD is also representable at no memory cost:
ΔW is linear in B, so scaling B̃ alone by (1 − λ·r_ΔW) scales ΔW̃ = s·B̃·Ã by it; r_ΔW needs ‖s·B·A‖, which
:func:`lora_delta_norm` gets from two r×r Gram matrices without forming B·A.  At the start B = 0, so ΔW = 0,
g_A = 0 and both conditions are 0: nothing is selected until B has moved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .._compat.torch import foreach_copy_
from .compiled import CompiledKernel, chunk_sizes
from .scalars import device_scalars, read_values

SPD_TIMING = "rwd"
"""The timing SPD is defined on: the decay scales the deviation after the base step (adamSPD.py:148)."""

SPD_TARGETS = ("init", "zero")
"""The targets SPD decays toward: θ₀ (the paper's, the pretrained weights) or 0 (their LoRA form)."""


def _keyword(name: str) -> str:
    """How a keyword caller names a setting: by its name (the Trainer passes its flags instead)."""
    return name


def check_spd(values: Mapping[str, Any], label: Callable[[str], str] = _keyword) -> None:
    """Refuse every setting SPD does not define, naming it as ``label(name)`` names it (the single place).

    ``values``: ``mode`` (a timing, or ``lpwd``), and where known ``lr_coupling``, ``decay_timescale``,
    ``weight_decay`` (λ) and ``cautious``.  SPD's λ is a fraction of the step's new deviation, not
    multiplied by the lr, so the lr couplings and the timescale (which sets an lr-coupled λ) do not apply.
    """
    spd, mode = label("spd"), label("mode")
    timing = "pwd" if values["mode"] == "lpwd" else values["mode"]
    if timing != SPD_TIMING:
        why = (
            "pwd decays before the forward, when the stepped weights θ̃ that the ratio needs do not exist"
            if timing == "pwd"
            else "the published rule decays the deviation after the base step, θ̃ − θ₀ (adamSPD.py:148); "
            "wd's pre-step form would need a copy of every θ − θ₀ across the step"
        )
        layerwise = values["mode"] == "lpwd"
        profile = f" with {label('layerwise')}=true for the layer-wise profile" if layerwise else ""
        raise ValueError(
            f"{spd}=true is defined on the timing {SPD_TIMING!r} only, not {values['mode']!r} ({why}): "
            f"set {mode}={SPD_TIMING!r}{profile}"
        )
    if values.get("cautious"):
        raise ValueError(
            f"{spd}=true and {label('cautious')}=true are two values of the decay's mask (SPD selects whole "
            "tensors, cautious decay coordinates): turn one of them off"
        )
    coupling = values.get("lr_coupling", "coupled")
    if coupling != "coupled":
        raise ValueError(
            f"{label('lr_coupling')}={coupling!r} with {spd}=true: SPD's λ ({label('weight_decay')}) is a "
            "fraction of the step's new deviation, not multiplied by the lr, so no lr coupling applies; "
            f"leave {label('lr_coupling')} at 'coupled'"
        )
    if values.get("decay_timescale") is not None:
        raise ValueError(
            f"{label('decay_timescale')} with {spd}=true: the timescale sets an lr-coupled λ, but SPD's λ is "
            f"a fraction in [0, 1], not multiplied by the lr; give {label('weight_decay')} instead"
        )
    if values.get("weight_decay") is not None:
        check_spd_strength(values["weight_decay"], f"{label('weight_decay')} with {spd}=true")


def check_spd_strength(strength: float, label: str = "weight_decay") -> None:
    """λ in [0, 1]: 1 is the full projection onto the previous deviation; above 1 the decay overshoots θ₀'s
    sphere, below 0 it pushes away from θ₀."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(
            f"SPD's strength ({label}) must be in [0, 1], got {strength}: SPD's λ is a fraction, not "
            "multiplied by the lr; 1 projects a selected layer back to its previous deviation from θ₀, "
            "smaller values part of the way"
        )


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """Complex tensors as their real components (torch's optimizers treat them so), in at least fp32."""
    if torch.is_complex(tensor):
        tensor = torch.view_as_real(tensor)
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def deviation(param: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
    """θ − θ₀ in at least fp32 (real components for complex tensors); θ itself toward 0 (``anchor`` None)."""
    return _real(param) if anchor is None else _real(param) - _real(anchor)


@torch.no_grad()
def selection_condition(grad: torch.Tensor, param: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """c_t = −⟨g_t, θ − θ₀⟩ as a 0-d tensor (adamSPD.py:145); the tensor is decayed where c_t < 0."""
    return -torch.sum(_real(grad) * deviation(param, anchor))


def ratio_from_norms(stepped_norm: torch.Tensor, previous_norm: torch.Tensor) -> torch.Tensor:
    """r_t = clip((‖θ̃ − θ₀‖ − ‖θ − θ₀‖)/‖θ̃ − θ₀‖, 0, 1) (adamSPD.py:152-155); 0 where ‖θ̃ − θ₀‖ = 0."""
    safe = torch.where(stepped_norm > 0, stepped_norm, torch.ones_like(stepped_norm))
    ratio = ((stepped_norm - previous_norm) / safe).clamp(0.0, 1.0)
    return torch.where(stepped_norm > 0, ratio, torch.zeros_like(ratio))


@torch.no_grad()
def deviation_ratio(stepped: torch.Tensor, param: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """r_t of the step θ → θ̃ (``param`` → ``stepped``) toward ``anchor``: see :func:`ratio_from_norms`."""
    return ratio_from_norms(
        torch.linalg.vector_norm(deviation(stepped, anchor)),
        torch.linalg.vector_norm(deviation(param, anchor)),
    )


def spd_update(
    theta: torch.Tensor,
    anchor: torch.Tensor,
    grad: torch.Tensor,
    u: torch.Tensor,
    lr: float,
    strength: float,
) -> torch.Tensor:
    """The equation, literally (out of place): θ̃ = θ − η·u; θ̃ − λ·r·(θ̃ − θ₀) if c < 0, else θ̃."""
    stepped = theta - lr * u
    if selection_condition(grad, theta, anchor) < 0:
        return stepped - strength * deviation_ratio(stepped, theta, anchor) * (stepped - anchor)
    return stepped


# ----------------------------------------------------------------------------- in place, around a base step
Anchors = Sequence[torch.Tensor | None]
"""θ₀ per tensor; ``None`` for a tensor decayed toward 0 (SPD's LoRA form: no zeros allocated)."""

CHUNK = 1 << 18
"""Elements of θ − θ₀ formed at a time (1 MiB in fp32): a whole-tensor temporary of a large embedding costs
more in fresh pages than the reductions themselves (benchmarks/optimizer_step.py, SPD rows)."""


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return (torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor).reshape(-1)


_COMPILED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _compiled_stats(
    theta: torch.Tensor, origin: torch.Tensor | None, g: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """The compiled reduction for plain real fp32/bf16/fp16 tensors; ``None`` for the rest (DTensor, complex,
    fp64, a failed compilation), which take :func:`_chunked_stats`."""
    given = [t for t in (theta, origin, g) if t is not None]
    if _MEASURE_ROWS.failed or not all(
        type(t.data) is torch.Tensor and t.dtype in _COMPILED_DTYPES and t.numel() > 0 for t in given
    ):
        return None
    row = [None if t is None else t.detach().reshape(1, -1) for t in (theta, origin, g)]
    condition, norm = _MEASURE_ROWS(*row)
    return None if condition is None else condition[0], norm[0]


def _measure_rows(
    thetas: torch.Tensor, origins: torch.Tensor | None, grads: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(c_t, ‖θ − θ₀‖) of each row of (k, n) tensors in fp32, one reduction pass (compiled: no temporary);
    θ₀ = 0 where ``origins`` is None (no zeros allocated), no c_t without ``grads`` (after the step)."""
    dev = thetas.float() if origins is None else thetas.float() - origins.float()
    norms = torch.sqrt((dev * dev).sum(dim=1))
    return (None if grads is None else -(grads.float() * dev).sum(dim=1)), norms


def _decayed_rows(
    thetas: torch.Tensor, origins: torch.Tensor | None, previous: torch.Tensor, strength: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d = λ·r_t per row, the rows θ̃ − d·(θ̃ − θ₀)) of (k, n) selected tensors θ̃, given ‖θ − θ₀‖ per row."""
    dev = thetas.float() if origins is None else thetas.float() - origins.float()
    decay = strength * ratio_from_norms(torch.sqrt((dev * dev).sum(dim=1)), previous)
    return decay, (thetas.float() - decay[:, None] * dev).to(thetas.dtype)


def _measure_many(
    thetas: list[torch.Tensor], origins: list[torch.Tensor] | None, grads: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`_measure_rows` of each tensor of the lists (1-D, of one size), each its own row."""
    conditions, norms = [], []
    for i in range(len(thetas)):
        origin = None if origins is None else origins[i][None]
        condition, norm = _measure_rows(thetas[i][None], origin, grads[i][None])
        conditions.append(condition[0])
        norms.append(norm[0])
    return conditions, norms


def _decay_many_(
    thetas: list[torch.Tensor],
    origins: list[torch.Tensor] | None,
    previous: list[torch.Tensor],
    strength: torch.Tensor,
) -> list[torch.Tensor]:
    """:func:`_decayed_rows` of each tensor of the lists, written in place; returns the d."""
    decays = []
    for i in range(len(thetas)):
        origin = None if origins is None else origins[i][None]
        decay, written = _decayed_rows(thetas[i][None], origin, previous[i][None], strength)
        thetas[i].copy_(written[0])
        decays.append(decay[0])
    return decays


SPD_CHUNK = 4
"""Tensors of one size per compiled call of the measure and of the decay: a call's Python and dispatch cost
as much as ~100K weights' reduction on a CPU, and a model's layers repeat their shapes."""
SMALL_NUMEL = 1 << 14
"""Tensors of one size of at most this many weights (biases, norms, LoRA adapters) are stacked into one
(k, n) call, whatever k: the copy costs less than the calls it saves."""
_MEASURE = CompiledKernel(_measure_many, "SPD's per-tensor reduction")
_DECAY = CompiledKernel(_decay_many_, "SPD's decay")
_MEASURE_ROWS = CompiledKernel(_measure_rows, "SPD's per-tensor reduction")
_DECAY_ROWS = CompiledKernel(_decayed_rows, "SPD's decay")


def _batchable(*tensors: torch.Tensor | None) -> bool:
    """Plain, contiguous, non-empty real fp32/bf16/fp16 tensors on one device: the compiled calls' inputs."""
    given = [t for t in tensors if t is not None]
    return all(
        type(t.data) is torch.Tensor
        and t.dtype in _COMPILED_DTYPES
        and t.numel() > 0
        and t.is_contiguous()
        and t.device == given[0].device
        for t in given
    )


def _calls(indices: list[int], *columns: Sequence[torch.Tensor | None]) -> list[tuple[bool, list[int]]]:
    """``indices`` grouped by the size, dtypes and device of their tensors (one entry of each column): (True,
    the group) for small tensors stacked in one call, else (False, a call) for calls of :data:`SPD_CHUNK`,
    then halves."""
    alike: dict[tuple[Any, ...], list[int]] = {}
    for i in indices:
        given = [column[i] for column in columns]
        kind = tuple(None if t is None else (t.numel(), t.dtype, t.device) for t in given)
        alike.setdefault(kind, []).append(i)
    calls = []
    for members in alike.values():
        if len(members) > 1 and columns[0][members[0]].numel() <= SMALL_NUMEL:  # type: ignore[union-attr]
            calls.append((True, members))
            continue
        start = 0
        for size in chunk_sizes(len(members), SPD_CHUNK):
            calls.append((False, members[start : start + size]))
            start += size
    return calls


def _flat_list(tensors: Sequence[torch.Tensor], call: list[int]) -> list[torch.Tensor]:
    return [tensors[i].detach().view(-1) for i in call]


def _rows(tensors: Sequence[torch.Tensor], call: list[int]) -> torch.Tensor:
    """The (k, n) stack of the tensors of ``call`` (a copy)."""
    return torch.stack(_flat_list(tensors, call))


def deviation_stats(
    param: torch.Tensor, anchor: torch.Tensor | None, grad: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(−⟨g, θ − θ₀⟩ or None without ``grad``, ‖θ − θ₀‖) as fp32 0-d tensors, reading θ, θ₀ and g once.

    Plain tensors: one compiled reduction (no temporary); otherwise θ − θ₀ is formed :data:`CHUNK` elements
    at a time in one reused buffer.
    """
    compiled = _compiled_stats(param, anchor, grad)
    if compiled is not None:
        return compiled
    origin = None if anchor is None else _flat(anchor)
    return _chunked_stats(_flat(param), origin, None if grad is None else _flat(grad))


def _chunked_stats(
    theta: torch.Tensor, origin: torch.Tensor | None, g: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    wide = theta.dtype in (torch.float32, torch.float64)
    if origin is None and wide and (g is None or g.dtype == theta.dtype):  # toward 0: θ itself, no copy
        return (None if g is None else -torch.dot(g, theta)), torch.sqrt(torch.dot(theta, theta))
    dtype = theta.dtype if wide else torch.float32
    buffer = torch.empty(min(CHUNK, theta.numel()), dtype=dtype, device=theta.device)
    products, squares = [], []
    for start in range(0, theta.numel(), CHUNK):
        stop = min(start + CHUNK, theta.numel())
        dev = buffer[: stop - start]
        if origin is None:
            dev.copy_(theta[start:stop])
        else:
            # add(alpha=-1) rather than sub: twice as fast into an out= buffer on this CPU (torch 2.13)
            torch.add(theta[start:stop].to(dtype), origin[start:stop].to(dtype), alpha=-1, out=dev)
        if g is not None:
            products.append(torch.dot(g[start:stop].to(dtype), dev))
        squares.append(torch.dot(dev, dev))
    condition = None if g is None else -torch.stack(products).sum() if products else buffer.new_zeros(())
    return condition, torch.sqrt(torch.stack(squares).sum() if squares else buffer.new_zeros(()))


@torch.no_grad()
def spd_measure(
    params: Sequence[torch.Tensor], anchors: Anchors, grads: Sequence[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Before the base step: (c_t, ‖θ − θ₀‖) per tensor, fp32 0-d tensors (θ − θ₀ formed once per tensor).

    The base step overwrites θ (and may change the gradient), so both are taken first.
    """
    _same_lengths(params=params, anchors=anchors, grads=grads)
    count = len(params)
    conditions: list[Any] = [None] * count
    norms: list[Any] = [None] * count
    batched = [i for i in range(count) if _batchable(params[i], anchors[i], grads[i])]
    for stacked, call in _calls(batched, params, anchors, grads):
        gather = _rows if stacked else _flat_list
        origins = None if anchors[call[0]] is None else gather(anchors, call)  # type: ignore[arg-type]
        kernel = _MEASURE_ROWS if stacked else _MEASURE
        got = kernel(gather(params, call), origins, gather(grads, call))
        if stacked:
            got = tuple(values.unbind(0) for values in got)
        for i, condition, norm in zip(call, *got, strict=True):
            conditions[i], norms[i] = condition, norm
    for i in range(count):
        if conditions[i] is None:
            conditions[i], norms[i] = deviation_stats(params[i], anchors[i], grads[i])
    return conditions, norms


@torch.no_grad()
def spd_decays(
    params: Sequence[torch.Tensor],
    anchors: Anchors,
    conditions: Sequence[torch.Tensor],
    previous_norms: Sequence[torch.Tensor],
    strength: float,
) -> list[torch.Tensor]:
    """After the base step (``params`` hold θ̃): d_t = λ·r_t·1[c_t < 0] per tensor, 0-d tensors, nothing
    written.

    The conditions are read in one transfer (:func:`selected`); an unselected tensor (c_t ≥ 0) skips the pass
    over θ̃ − θ₀ (d_t = 0 without it).
    """
    _same_lengths(params=params, anchors=anchors, conditions=conditions, previous_norms=previous_norms)
    chosen = selected(conditions)
    decays = []
    for param, anchor, previous, take in zip(params, anchors, previous_norms, chosen, strict=True):
        if not take:
            decays.append(torch.zeros_like(previous))
            continue
        decays.append(strength * ratio_from_norms(deviation_stats(param, anchor)[1], previous))
    return decays


def selected(conditions: Sequence[torch.Tensor]) -> list[bool]:
    """c_t < 0 per tensor, read on the host in one transfer per device (one sync per step on a GPU, which
    is cheaper than the pass over θ̃ − θ₀ and the lerp every unselected tensor would otherwise take)."""
    return [value < 0 for value in read_values(conditions)]


@torch.no_grad()
def decay_toward_(param: torch.Tensor, anchor: torch.Tensor | None, decay: torch.Tensor) -> None:
    """θ ← θ − d·(θ − θ₀) = lerp(θ, θ₀, d) in place (θ ← (1 − d)·θ toward 0), ``d`` a 0-d tensor.

    On the CPU reading d is free: a tensor with d = 0 is skipped (left bitwise θ̃); on an accelerator the
    lerp runs with d as a tensor (no host sync; weight 0 leaves θ̃ bitwise as it is too).
    """
    if param.device.type == "cpu" and float(decay) == 0.0:
        return
    target = torch.view_as_real(param) if torch.is_complex(param) else param
    weight = decay.to(device=target.device, dtype=target.dtype)
    if anchor is None:
        target.mul_(1 - weight)
        return
    target.lerp_(torch.view_as_real(anchor) if torch.is_complex(anchor) else anchor, weight)


@torch.no_grad()
def spd_decay_(
    params: Sequence[torch.Tensor],
    anchors: Anchors,
    conditions: Sequence[torch.Tensor],
    previous_norms: Sequence[torch.Tensor],
    strength: float,
) -> list[torch.Tensor]:
    """After the base step (``params`` hold θ̃): θ ← θ̃ − λ·r_t·1[c_t < 0]·(θ̃ − θ₀) in place, per tensor.

    ``conditions`` and ``previous_norms`` are :func:`spd_measure`'s, taken before the step.  Returns each
    tensor's applied decay d_t = λ·r_t·1[c_t < 0] (0-d tensors).  A tensor with d_t = 0 is left bitwise as it
    is (:func:`decay_toward_`).  θ₀ must have θ's dtype (``lerp``'s requirement).  On bf16/fp16 weights a
    decay written with round-to-nearest is mostly lost (λ·r_t·(θ̃ − θ₀) is far below half an ulp of θ):
    :class:`~hf_lpwd.LPWD` writes it with stochastic rounding instead (:func:`spd_decays` then its own pass).
    """
    check_spd_strength(strength)
    _same_lengths(params=params, anchors=anchors, conditions=conditions, previous_norms=previous_norms)
    decays = [torch.zeros_like(previous) for previous in previous_norms]
    chosen = [i for i, take in enumerate(selected(conditions)) if take]
    batched = [i for i in chosen if _batchable(params[i], anchors[i])]
    weights: dict[torch.device, torch.Tensor] = {}  # λ as a 0-d tensor: one compiled kernel for every λ
    for stacked, call in _calls(batched, params, anchors, previous_norms):
        device = params[call[0]].device
        if device not in weights:
            weights[device] = device_scalars(device, [strength])[0]
        anchored = anchors[call[0]] is not None
        previous = [previous_norms[i] for i in call]
        if stacked:
            origins = _rows(anchors, call) if anchored else None  # type: ignore[arg-type]
            got, written = _DECAY_ROWS(_rows(params, call), origins, torch.stack(previous), weights[device])
            foreach_copy_(_flat_list(params, call), list(written.unbind(0)))
            got = got.unbind(0)
        else:
            origins = _flat_list(anchors, call) if anchored else None  # type: ignore[arg-type]
            got = _DECAY(_flat_list(params, call), origins, previous, weights[device])
        for i, decay in zip(call, got, strict=True):
            decays[i] = decay
    for i in sorted(set(chosen) - set(batched)):  # DTensor, complex, fp64: the eager lerp
        previous = previous_norms[i]
        decays[i] = strength * ratio_from_norms(deviation_stats(params[i], anchors[i])[1], previous)
        decay_toward_(params[i], anchors[i], decays[i])
    return decays


@torch.no_grad()
def spd_step_(
    params: Sequence[torch.Tensor],
    anchors: Anchors,
    grads: Sequence[torch.Tensor],
    updates: Sequence[torch.Tensor],
    lr: float,
    strength: float,
) -> list[torch.Tensor]:
    """One whole SPD step in place given the base's directions u_t: measure, θ ← θ − η·u, decay.

    What :class:`LPWD` would do around its base step, with the base step written out; returns the d_t.
    """
    check_spd_strength(strength)
    _same_lengths(params=params, updates=updates)
    conditions, norms = spd_measure(params, anchors, grads)
    for param, update in zip(params, updates, strict=True):
        param.add_(update, alpha=-lr)
    return spd_decay_(params, anchors, conditions, norms, strength)


# ----------------------------------------------------------------------------- LoRA
@torch.no_grad()
def lora_delta_norm(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """‖s·B·A‖_F without forming B·A: ‖BA‖² = tr(Aᵀ·Bᵀ·B·A) = Σ (BᵀB) ⊙ (AAᵀ), two r×r Gram matrices.

    A: r×in, B: out×r (PEFT's ``lora_A.weight`` and ``lora_B.weight``).  What an exact ΔW-level ratio r_ΔW
    would read (see the module docstring); O((in + out)·r²) work, r² memory.
    """
    gram_a = _real(lora_a) @ _real(lora_a).transpose(0, 1)
    gram_b = _real(lora_b).transpose(0, 1) @ _real(lora_b)
    return abs(scaling) * torch.sum(gram_a * gram_b).clamp_min(0.0).sqrt()


def _same_lengths(**lists: Sequence[object]) -> None:
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"SPD: one entry per parameter tensor in each list, got lengths {lengths}")
