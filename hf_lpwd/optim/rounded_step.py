"""bf16/fp16 weights: the whole step (base update and decay) in fp32, written with one stochastic rounding.

Why.  A bf16 weight has 8 significant bits: an update below half its spacing (~2^-9·|θ|) rounds back to θ.
Adam's first updates are about ±η per coordinate, so at η = 2e-5 most of them vanish, for torch's AdamW and
for a decay rounded on its own alike.  Here one elementwise function per base computes, in fp32, from the
weights θ_t::

    AdamW / Adam   m ← β1·m + (1 − β1)·g     v ← β2·v + (1 − β2)·g²     u = m̂ / (√v̂ + ε)
    SGD            b ← μ·b + (1 − τ)·g (b = g on the first step)      u = b, or g + μ·b (Nesterov), or g
    every timing   θ' = post·(pre·θ − c·1[u ⊙ θ ≥ 0] ⊙ θ − η·u)
    toward θ₀      θ' = θ₀ + post·(pre·δ − c·1[u ⊙ δ ≥ 0] ⊙ δ − η·u),  δ = θ − θ₀  (:mod:`.target`)

(wd: pre = 1 − d_t; rwd: post = 1 − d_t; pwd: post = 1 − d_{t+1}, the fold; cautious wd: c = d_t), and writes
SR(θ') with one stochastic rounding (:func:`.rounding.round_to`), so E[θ_{t+1} | θ_t] = θ' exactly: the fp32
step from θ_t, with no fp32 master copy.  One pass per tensor: ``torch.compile``'d with dynamic shapes (the
random bits are hashed in registers, :func:`.rounding.element_bits`), up to :data:`CHUNK` tensors of one size
per call and small tensors packed into one, or the same function run eagerly where compilation is not
available.

Moments (and SGD's momentum buffer).  Created in fp32: 8 bytes per weight, as with fp32 weights, against the 4
of torch's AdamW on bf16 weights (no master copy either way).  bf16 moments did as well on the displacement
check, but a compiled kernel writing them (to nearest or stochastically) is slower on a CPU than the fp32 one
(inductor's bf16 code), and in bf16 a change (1 − β2)·(g² − v) below half an ulp of v is lost to nearest
(figures: ``benchmarks/results/bf16_step.md``).  A state that already holds bf16/fp16 moments (a checkpoint
of torch's AdamW) keeps its dtype, written stochastically.

:func:`rounded_step` returns the parameters it stepped; the rest (fp32 weights, a base it does not know, a
DTensor, a tensor subclass, amsgrad, an lr tensor) takes the base's own step, with the decay rounded alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._compat.torch import foreach_add_, foreach_copy_
from .compiled import CompiledKernel, chunk_sizes
from .functional import cautious_mask
from .rounding import LOW_PRECISION_DTYPES, NoiseKeys, element_bits, hash_bits, round_to
from .scalars import device_scalars, read_values

ADAM_BASES: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.AdamW, torch.optim.Adam)
ROUNDED_BASES: tuple[type[torch.optim.Optimizer], ...] = (*ADAM_BASES, torch.optim.SGD)
"""Bases whose whole step LPWD computes and rounds itself on bf16/fp16 weights (exactly these classes)."""

_UNSUPPORTED_FLAGS = ("amsgrad", "capturable", "differentiable")
_MAX_NUMEL = 2**31 - 1  # int32 element indices of the noise


def _timing(
    theta: torch.Tensor,
    step: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    cautious: torch.Tensor | None,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    """θ' = post·(pre·θ − c·1[u ⊙ θ ≥ 0] ⊙ θ − η·u), with ``step`` = η·u (η > 0: it has u's sign).

    Every timing, coupling and mask in one expression; ``cautious`` is ``None`` without the mask (c = 0), a
    kernel of its own: the compare and select per element cost a quarter of the step on a CPU.  Toward θ₀ =
    ``anchor`` (:mod:`.target`) the same in δ = θ − θ₀: θ' = θ₀ + post·(pre·δ − c·1[u ⊙ δ ≥ 0] ⊙ δ − η·u),
    inside the same single rounding.
    """
    origin = None if anchor is None else anchor.float()
    delta = theta if origin is None else theta - origin
    kept = pre * delta
    if cautious is not None:
        kept = kept - torch.where(cautious_mask(step, delta), cautious * delta, torch.zeros_like(delta))
    kept = kept - step
    return post * kept if origin is None else origin + post * kept


def _write(target: torch.Tensor, value: torch.Tensor, bits: torch.Tensor) -> None:
    target.copy_(round_to(value, target.dtype, bits))


def adam_rounded_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    key: torch.Tensor,
    sign: torch.Tensor,
    step_size: torch.Tensor,
    one_minus_beta1: torch.Tensor,
    beta2: torch.Tensor,
    one_minus_beta2: torch.Tensor,
    bias_correction2_sqrt: torch.Tensor,
    eps: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    cautious: torch.Tensor | None,
    anchor: torch.Tensor | None = None,
) -> None:
    """One Adam(W) step of one flat tensor, in place: θ' (see the module docstring) stochastically rounded.

    η·u = (η/(1 − β1^t))·m / (√v/√(1 − β2^t) + ε), as torch's AdamW computes it (step_size = η/(1 − β1^t) and
    the bias corrections in float64 by the caller); ``sign`` is −1 for ``maximize``.
    """
    bits = element_bits(param.numel(), key, param.device)
    g = grad.float() * sign
    m = exp_avg.float().lerp(g, one_minus_beta1)
    v = exp_avg_sq.float() * beta2 + g * g * one_minus_beta2
    step = step_size * m / (v.sqrt() / bias_correction2_sqrt + eps)
    _write(param, _timing(param.float(), step, pre, post, cautious, anchor), bits)
    more = hash_bits(bits)  # moments kept in bf16/fp16 are rounded with bits of their own
    _write(exp_avg, m, (bits >> 16) & 0xFFFF)
    _write(exp_avg_sq, v, more)


def sgd_rounded_(
    param: torch.Tensor,
    grad: torch.Tensor,
    buf: torch.Tensor,
    key: torch.Tensor,
    sign: torch.Tensor,
    lr: torch.Tensor,
    momentum: torch.Tensor,
    one_minus_dampening: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    cautious: torch.Tensor | None,
    first: bool,
    nesterov: bool,
    anchor: torch.Tensor | None = None,
) -> None:
    """One SGD step with momentum of one flat tensor, in place (``buf`` is written; b = g on the first
    step)."""
    bits = element_bits(param.numel(), key, param.device)
    g = grad.float() * sign
    b = g if first else buf.float() * momentum + g * one_minus_dampening
    u = g + momentum * b if nesterov else b
    _write(param, _timing(param.float(), lr * u, pre, post, cautious, anchor), bits)
    _write(buf, b, (bits >> 16) & 0xFFFF)


def sgd_plain_rounded_(
    param: torch.Tensor,
    grad: torch.Tensor,
    key: torch.Tensor,
    sign: torch.Tensor,
    lr: torch.Tensor,
    pre: torch.Tensor,
    post: torch.Tensor,
    cautious: torch.Tensor | None,
    anchor: torch.Tensor | None = None,
) -> None:
    """One SGD step without momentum (u = g) of one flat tensor, in place."""
    bits = element_bits(param.numel(), key, param.device)
    g = grad.float() * sign
    _write(param, _timing(param.float(), lr * g, pre, post, cautious, anchor), bits)


# The compiled entry points step a short list of tensors per call (:data:`CHUNK`): one call's Python,
# guards and dispatch cost as much as a few million weights' arithmetic, and on a CPU tensors of one size
# share one loop.  One function per base, so that each has its own compiled variants (dynamo counts them per
# function).
Tensors = list[torch.Tensor]


def adam_rounded_many_(
    params: Tensors, grads: Tensors, exp_avgs: Tensors, exp_avg_sqs: Tensors, keys: Tensors, *scalars: Any
) -> None:
    """:func:`adam_rounded_` on each tensor of the lists; ``scalars``: its scalars, then θ₀'s list or None."""
    *shared, anchors = scalars
    for i in range(len(params)):
        anchor = None if anchors is None else anchors[i]
        adam_rounded_(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], keys[i], *shared, anchor)


def sgd_rounded_many_(params: Tensors, grads: Tensors, bufs: Tensors, keys: Tensors, *scalars: Any) -> None:
    """:func:`sgd_rounded_` on each tensor of the lists; ``scalars``: its scalars, then θ₀'s list or None."""
    *shared, anchors = scalars
    for i in range(len(params)):
        anchor = None if anchors is None else anchors[i]
        sgd_rounded_(params[i], grads[i], bufs[i], keys[i], *shared, anchor)


def sgd_plain_rounded_many_(params: Tensors, grads: Tensors, keys: Tensors, *scalars: Any) -> None:
    """:func:`sgd_plain_rounded_` on each tensor of the lists; ``scalars`` as above."""
    *shared, anchors = scalars
    for i in range(len(params)):
        anchor = None if anchors is None else anchors[i]
        sgd_plain_rounded_(params[i], grads[i], keys[i], *shared, anchor)


def adam_exact_many_(*args: Any) -> None:
    """:func:`adam_rounded_many_` on fp32 weights and moments: ``round_to`` writes fp32 values as they are,
    so the noise is never read (the compiled kernel drops it).  A function of its own: dynamo counts the
    compiled variants per function, and fp32 and bf16 calls then do not share one budget."""
    adam_rounded_many_(*args)


def sgd_exact_many_(*args: Any) -> None:
    """:func:`sgd_rounded_many_` on fp32 weights (see :func:`adam_exact_many_`)."""
    sgd_rounded_many_(*args)


def sgd_plain_exact_many_(*args: Any) -> None:
    """:func:`sgd_plain_rounded_many_` on fp32 weights (see :func:`adam_exact_many_`)."""
    sgd_plain_rounded_many_(*args)


_ROUNDED = "the stochastically rounded bf16 step"
_EXACT = "the one-pass fp32 step toward θ₀"
_ADAM = (CompiledKernel(adam_rounded_many_, _ROUNDED), CompiledKernel(adam_exact_many_, _EXACT))
_SGD = (CompiledKernel(sgd_rounded_many_, _ROUNDED), CompiledKernel(sgd_exact_many_, _EXACT))
_SGD_PLAIN = (
    CompiledKernel(sgd_plain_rounded_many_, _ROUNDED),
    CompiledKernel(sgd_plain_exact_many_, _EXACT),
)
"""(kernel for bf16/fp16 weights, kernel for fp32 weights) per base."""

ONE_PASS_DEVICES: tuple[str, ...] = ("cuda",)
"""Devices where fp32 weights decayed toward θ₀ take this module's one pass (θ, g, m, v and θ₀ read, θ, m, v
written: 8/7 of AdamW's traffic) instead of the base's step and a lerp toward θ₀ (10/7), and cautious decay
its mask inside the same pass (not a pass computing u beside the fused kernel).  Not the CPU: there torch's
fused AdamW plus the lerp was faster than the compiled pass, and cautious decay has its own compiled step
(:mod:`.cautious_adamw`) (README, Performance)."""


def group_supported(base: torch.optim.Optimizer, group: dict[str, Any]) -> bool:
    """Does this group's step take the rounded path (a known base, flags this equation covers)?"""
    if type(base) not in ROUNDED_BASES or torch.is_tensor(group.get("lr")):
        return False
    return not any(group.get(flag, False) for flag in _UNSUPPORTED_FLAGS)


def _plain(param: torch.Tensor) -> bool:
    """A plain, dense, contiguous real tensor (not a DTensor or another subclass)."""
    return (
        type(param.data) is torch.Tensor
        and param.is_contiguous()
        and 0 < param.numel() <= _MAX_NUMEL
        and not param.is_complex()
    )


def param_supported(param: torch.Tensor) -> bool:
    """A plain, dense, contiguous bf16/fp16 tensor (not a DTensor or another subclass)."""
    return param.dtype in LOW_PRECISION_DTYPES and _plain(param)


def _grad_supported(param: torch.Tensor) -> bool:
    grad = param.grad
    return (
        grad is not None
        and type(grad) is torch.Tensor
        and not grad.is_sparse
        and grad.is_contiguous()
        and grad.is_floating_point()
    )


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D plain tensor on the same memory, without ``_base`` (one compiled kernel for every shape)."""
    return tensor.view(-1).detach()


def _scalars(device: torch.device, *values: float | None) -> tuple[torch.Tensor | None, ...]:
    """0-d fp32 tensors, each the one rounding of a value the caller computed in float64 (``None`` stays).

    The kernel computes in fp32 (the weights' step, as torch's AdamW on fp32 weights); fp32 operands also let
    the compiled loop keep them in registers (float64 ones cost 20 % of the step on a CPU).  ``None`` is the
    cautious factor when it is 0: the kernel without the mask (:func:`_mask`).
    """
    sent = iter(device_scalars(device, [float(v) for v in values if v is not None]))
    return tuple(None if v is None else next(sent) for v in values)


def _mask(cautious: float) -> float | None:
    """c of the cautious mask; ``None`` (the kernel without the mask) when it is 0."""
    return None if cautious == 0.0 else cautious


def _adam_state(base: torch.optim.Optimizer, group: dict[str, Any], p: torch.Tensor) -> dict[str, Any]:
    """torch's Adam(W) state keys, the step counter as torch keeps it, the moments in fp32 when new."""
    state = base.state[p]
    if len(state) == 0:
        on_device = group.get("fused", False)
        scalar_dtype = (
            torch.float32 if on_device or torch.get_default_dtype() != torch.float64 else torch.float64
        )
        state["step"] = torch.zeros((), dtype=scalar_dtype, device=p.device if on_device else "cpu")
        state["exp_avg"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    return state


def _moments_ok(param: torch.Tensor, state: dict[str, Any], names: Sequence[str]) -> bool:
    """Contiguous floating-point state; in fp32 for fp32 weights (their kernel writes it unrounded)."""
    exact = param.dtype not in LOW_PRECISION_DTYPES
    return all(
        state[name].is_contiguous()
        and state[name].is_floating_point()
        and (not exact or state[name].dtype == torch.float32)
        for name in names
    )


PACK_NUMEL = 1 << 14
"""Tensors of at most this many weights are stepped together: concatenated, one kernel call, copied back.

A kernel call costs ~60 µs of Python and dispatch on a CPU and the kernel ~1.2 ns per weight, so a layer's
biases and norms (hundreds of weights each) would cost 50× their arithmetic one by one; the copies cost
about two kernel passes over the packed weights, less than the call they save up to ~30K weights."""
_PACK_LIMIT = 1 << 24  # weights per packed call: bounds the scratch (and the noise's int32 indices)


_Member = tuple[tuple[torch.Tensor, ...], torch.Tensor | None, torch.Tensor]
"""One tensor of a call: its operands (weights, gradient, state), θ₀ or ``None``, its noise key."""


class _Calls:
    """The kernel calls of one group: each parameter's flat operands, grouped into calls that share scalars.

    ``lead``: the tensors before the noise key, in the kernel's order (the weights first, the gradient
    second, then the state the kernel writes); ``tail``: the scalars after the key (the same for every tensor
    of a call); ``anchor``: θ₀ (or ``None``), the kernel's last argument.
    """

    def __init__(self, kernels: tuple[CompiledKernel, CompiledKernel], eager: bool) -> None:
        self.kernels, self.eager = kernels, eager
        self.calls: dict[tuple[Any, ...], list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]] = {}
        self.tails: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def add(
        self,
        where: tuple[Any, ...],
        lead: tuple[torch.Tensor, ...],
        tail: tuple[Any, ...],
        anchor: torch.Tensor | None,
    ) -> None:
        """Queue one parameter; ``where`` names its scalars (same ``where``, same ``tail``)."""
        small = lead[0].numel() <= PACK_NUMEL
        dtypes = (*(t.dtype for t in lead), None if anchor is None else anchor.dtype, lead[0].device)
        key = (where, dtypes, len(self.calls)) if not small else (where, dtypes)
        self.calls.setdefault(key, []).append((lead, anchor))
        self.tails[key] = tail

    def run(self, keys: NoiseKeys) -> None:
        calls = [
            (part, self.tails[where]) for where, members in self.calls.items() for part in _parts(members)
        ]
        # One key per call of bf16/fp16 weights, drawn in this order (the bits of one kernel call per
        # tensor), sent to each device in one copy; fp32 calls read none (0 is sent).
        drawn = [
            (part[0][0][0].device, keys.next_key() if _rounded(part[0][0][0]) else 0) for part, _ in calls
        ]
        sent: dict[torch.device, list[torch.Tensor]] = {}
        for device in dict.fromkeys(device for device, _ in drawn):
            sent[device] = list(device_scalars(device, [k for d, k in drawn if d == device], torch.int32))
        alike: dict[tuple[Any, ...], tuple[tuple[Any, ...], list[_Member]]] = {}
        for part, tail in calls:
            key = sent[part[0][0][0].device].pop(0)
            if len(part) > 1:
                self._packed(part, tail, key)
                continue
            lead, anchor = part[0]
            origin = None if anchor is None else anchor.dtype
            kind = (id(tail), *(t.dtype for t in lead), origin, lead[0].numel(), lead[0].device)
            alike.setdefault(kind, (tail, []))[1].append((lead, anchor, key))
        for tail, members in alike.values():  # tensors of one size and step: CHUNK per call
            start = 0
            for size in chunk_sizes(len(members), CHUNK):
                self._call(members[start : start + size], tail)
                start += size

    def _call(self, members: list[_Member], tail: tuple[Any, ...]) -> None:
        """One kernel call over ``members`` (each its operands, θ₀ or ``None``, and its key)."""
        columns = [list(column) for column in zip(*(lead for lead, _, _ in members), strict=True)]
        anchors = None if members[0][1] is None else [anchor for _, anchor, _ in members]
        rounded, exact = self.kernels
        kernel = rounded if _rounded(columns[0][0]) else exact
        kernel(*columns, [key for _, _, key in members], *tail, anchors, eager=self.eager)

    def _packed(
        self,
        members: list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]],
        tail: tuple[Any, ...],
        key: torch.Tensor,
    ) -> None:
        """Small tensors: one call over their concatenation, the written tensors copied back."""
        lead = tuple(torch.cat(column) for column in zip(*(m[0] for m in members), strict=True))
        anchor = None if members[0][1] is None else torch.cat([m[1] for m in members])  # type: ignore[misc]
        self._call([(lead, anchor, key)], tail)
        sizes = [m[0][0].numel() for m in members]
        for slot, packed in enumerate(lead):
            if slot != 1:  # the gradient is read only
                foreach_copy_([m[0][slot] for m in members], list(packed.split(sizes)))


def _rounded(weights: torch.Tensor) -> bool:
    """Does a call on these weights round them stochastically (bf16/fp16: the rounded kernel, a noise key)
    or write fp32 as computed (the exact kernel, no key)?"""
    return weights.dtype in LOW_PRECISION_DTYPES


CHUNK = 4
"""Tensors of one size, dtype and step per compiled call, at most.  Calls take 4, 2 or 1 of them, so a base
compiles three variants; 4 gave most of the gain on a CPU (1.17–1.25× fused AdamW for 8 × 1M bf16 weights,
against 1.50 one tensor per call) while its compilation stays a few seconds."""


def _parts(
    members: list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]],
) -> list[list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]]:
    """Consecutive runs of at most ``_PACK_LIMIT`` weights (a single large tensor is a run of its own)."""
    parts: list[list[tuple[tuple[torch.Tensor, ...], torch.Tensor | None]]] = [[]]
    total = 0
    for member in members:
        numel = member[0][0].numel()
        if parts[-1] and total + numel > _PACK_LIMIT:
            parts.append([])
            total = 0
        parts[-1].append(member)
        total += numel
    return parts


def rounded_step(
    base: torch.optim.Optimizer,
    groups: Sequence[dict[str, Any]],
    factors: Sequence[tuple[float, float, float] | None],
    keys: NoiseKeys,
    eager: bool = False,
    anchors: Sequence[Mapping[torch.Tensor, torch.Tensor] | None] | None = None,
    rounded: bool = True,
    one_pass: Sequence[bool] | None = None,
) -> list[set[torch.Tensor]]:
    """Step the parameters this path supports, per group with (pre, post, cautious) = ``factors[i]``: the
    bf16/fp16 ones when ``rounded`` (stochastic rounding), and the fp32 ones on :data:`ONE_PASS_DEVICES` of
    the groups where ``one_pass[i]`` (toward θ₀, or with the cautious mask: written as computed, the same
    equation without the base's step and a second pass).

    Returns, per group, the parameters stepped (the caller steps the others through the base).  A group whose
    factors are ``None`` (not stepped in this call) is skipped.  ``anchors[i]``: θ₀ per parameter of a group
    decayed toward it (``None``: toward zero).  Large tensors take one kernel call each, small ones one call
    together (:data:`PACK_NUMEL`).
    """
    done: list[set[torch.Tensor]] = []
    adam = type(base) in ADAM_BASES
    if anchors is None:
        anchors = [None] * len(groups)
    if one_pass is None:
        one_pass = [False] * len(groups)
    for group, values, targets, exact in zip(groups, factors, anchors, one_pass, strict=True):
        stepped: set[torch.Tensor] = set()
        done.append(stepped)
        if values is None or not group_supported(base, group):
            continue
        queue = _adam_calls if adam else _sgd_calls
        taken = _candidates(group, rounded, exact)
        queue(base, group, values, targets, taken, stepped, eager).run(keys)
    return done


def one_pass_supported(param: torch.Tensor) -> bool:
    """A plain fp32 tensor on a device of :data:`ONE_PASS_DEVICES` (its step toward θ₀ taken here)."""
    return param.dtype == torch.float32 and param.device.type in ONE_PASS_DEVICES and _plain(param)


def _candidates(group: dict[str, Any], rounded: bool, exact: bool) -> list[torch.Tensor]:
    """The group's parameters this path steps (each with a dense gradient): bf16/fp16 plain tensors when
    ``rounded``, fp32 ones of :func:`one_pass_supported` when ``exact``."""
    return [
        p
        for p in group["params"]
        if _grad_supported(p)
        and ((rounded and param_supported(p)) or (exact and one_pass_supported(p)))
    ]


def _sign(group: dict[str, Any]) -> float:
    """−1 for ``maximize`` (the gradient's sign flipped inside the kernel), else 1."""
    return -1.0 if group.get("maximize", False) else 1.0


def _adam_calls(
    base: torch.optim.Optimizer,
    group: dict[str, Any],
    values: tuple[float, float, float],
    targets: Mapping[torch.Tensor, torch.Tensor] | None,
    candidates: list[torch.Tensor],
    stepped: set[torch.Tensor],
    eager: bool,
) -> _Calls:
    pre, post, cautious = values
    sign = _sign(group)
    beta1, beta2 = group["betas"]
    calls = _Calls(_ADAM, eager)
    tails: dict[tuple[Any, ...], tuple[torch.Tensor | None, ...]] = {}
    taken: list[tuple[torch.Tensor, dict[str, Any]]] = []
    for p in candidates:
        state = _adam_state(base, group, p)
        if _moments_ok(p, state, ("exp_avg", "exp_avg_sq")):
            taken.append((p, state))
    counters = [state["step"] for _, state in taken]
    if counters:
        foreach_add_(counters, 1.0)
    for (p, state), step in zip(taken, read_values(counters), strict=True):
        where = (step, p.device)
        if where not in tails:
            tails[where] = _scalars(
                p.device,
                sign,
                group["lr"] / (1.0 - beta1**step),
                1.0 - beta1,
                beta2,
                1.0 - beta2,
                (1.0 - beta2**step) ** 0.5,
                group["eps"],
                pre,
                post,
                _mask(cautious),
            )
        lead = tuple(map(_flat, (p, p.grad, state["exp_avg"], state["exp_avg_sq"])))
        calls.add(where, lead, tails[where], None if targets is None else _flat(targets[p]))
        stepped.add(p)
    return calls


def _sgd_calls(
    base: torch.optim.Optimizer,
    group: dict[str, Any],
    values: tuple[float, float, float],
    targets: Mapping[torch.Tensor, torch.Tensor] | None,
    candidates: list[torch.Tensor],
    stepped: set[torch.Tensor],
    eager: bool,
) -> _Calls:
    pre, post, cautious = values
    sign = _sign(group)
    momentum = group.get("momentum", 0.0)
    calls = _Calls(_SGD_PLAIN if momentum == 0 else _SGD, eager)
    tails: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for p in candidates:
        lead: tuple[torch.Tensor, ...] = (_flat(p), _flat(p.grad))
        first = False
        if momentum != 0:
            state = base.state[p]
            buf = state.get("momentum_buffer")
            first = buf is None
            if first:  # in fp32, like Adam's moments (torch would keep it in the gradient's dtype)
                buf = state["momentum_buffer"] = torch.empty(p.shape, dtype=torch.float32, device=p.device)
            elif not _moments_ok(p, state, ("momentum_buffer",)):
                continue
            lead = (*lead, _flat(buf))
        where = (first, p.device)
        if where not in tails:
            values = (sign, group["lr"])
            if momentum != 0:
                values += (momentum, 1.0 - group.get("dampening", 0.0))
            scalars = _scalars(p.device, *values, pre, post, _mask(cautious))
            flags = (first, bool(group.get("nesterov", False))) if momentum != 0 else ()
            tails[where] = (*scalars, *flags)
        calls.add(where, lead, tails[where], None if targets is None else _flat(targets[p]))
        stepped.add(p)
    return calls
