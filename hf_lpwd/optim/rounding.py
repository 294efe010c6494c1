"""Writing fp32 values to bf16/fp16 weights without losing small changes: stochastic rounding.

Why.  A bf16 weight has 8 significant bits: the spacing of bf16 numbers around θ is between 2^-8·|θ| and
2^-7·|θ|, so θ·(1 − η·λ) rounds (to nearest) back to θ whenever η·λ·|θ| is below half that spacing, i.e. for
every θ once η·λ < 2^-9 (fp16: 11 bits, η·λ < 2^-12).  A decay of η·λ = 1e-5 per step then does nothing at
all, however many steps are taken.

Stochastic rounding keeps the *expected* value exact.  The product x = θ·f is computed in fp32 and written as
one of its two neighbours x⁻ ≤ x ≤ x⁺ in the low precision format, x⁺ with probability p = (x − x⁻)/(x⁺ − x⁻),
so

    E[SR(x)] = x⁻ + p·(x⁺ − x⁻) = x,        Var[SR(x)] = p·(1 − p)·(x⁺ − x⁻)² ≤ |x − θ|·(x⁺ − x⁻),

and after K steps E[θ_K] = f^K·θ_0: the decay accumulates at the right rate.  The last inequality (θ itself is
one of the two neighbours) says the noise is small: per step its variance is at most η·λ·|θ|·ulp, far below
the ulp²/4 of a rounding that lands half way.

How.  bf16 is the upper half of an fp32 word, so rounding down is clearing the 16 low bits, and adding a
uniform integer u ∈ [0, 2^16) to the word first rounds up exactly when u ≥ 2^16 − (dropped bits), i.e. with
probability (dropped bits)/2^16 = p.  fp16 normal numbers are fp32 numbers whose 13 low mantissa bits are zero
(and whose exponent is in range), so the same trick drops 13 bits; fp16 subnormals (|x| < 2^-14, fixed spacing
2^-24) are first shifted by ±2^-14 into [2^-14, 2^-13), where the normal spacing is also 2^-24, rounded there
and shifted back — both shifts exact up to 2^-37, i.e. 2^-13 of an fp16 ulp.  The probability therefore has
the full resolution of the fp32 value: all 16 (bf16) / 13 (fp16) random bits are needed, since a decay of η·λ
= 1e-5 moves θ by ~2^-9 of an ulp per step and coarser noise would round that to zero again.

Randomness.  Called without ``keys`` the bits come from torch's generator of the tensor's device (the global
one unless a ``generator`` is passed), drawn as 64-bit words (four 16-bit draws each).  LPWD passes ``keys``
(a :class:`NoiseKeys`): then the bits of element i of a tensor are a hash of (i XOR k), with k a fresh 32-bit
key per tensor and call, derived from a seed and a counter.  That noise needs no generator state beyond two
integers, which ``LPWD.state_dict()`` carries (a resumed run draws the very same bits), costs no pass over
memory inside a compiled step (the bits are computed in registers), and does not consume the global generator
(dropout and shuffling stay those of a run with fp32 weights).  The hash is a bijection of 32-bit words, so
within one call every element gets distinct bits; over calls, the key is a 64-bit mix of the counter, so the
bits of one element are independent from step to step.

Why not a compensation (Kahan) buffer.  Keeping the rounding error c = x − RN(x) of every weight in a second
bf16 tensor and adding it back at the next step is deterministic and needs no random bits, but it is a second
copy of the weights: +2 bytes per parameter of memory, read and written at every step, and optimizer state
that checkpoints would have to carry — the state LPWD promises not to add. On a GPU, where random bits are
nearly free, stochastic rounding is also the cheaper one (``benchmarks/bf16_decay.py`` measures the rounded
pass).

Caveats.  The bit tricks pass ±inf through and keep NaNs NaN, except a NaN whose upper payload bits are all
set, which the carry may turn into ±0 or ±inf (never produced by arithmetic on IEEE inputs, whose default NaN
is 0x7FC00000 / 0xFFC00000).  A value above the largest finite number may round to inf, as round-to-nearest
would.

For fp32 / fp64 weights this module is a single ``torch._foreach_mul_`` pass, bit for bit.
"""

from __future__ import annotations

import torch

from .._compat.torch import foreach_mul_
from .compiled import CompiledKernel

LOW_PRECISION_DTYPES: frozenset[torch.dtype] = frozenset({torch.bfloat16, torch.float16})

_FP16_TINY = 2.0**-14  # smallest normal fp16; below it the spacing is a fixed 2^-24
_DROPPED_BITS = {torch.bfloat16: 16, torch.float16: 13}  # fp32 mantissa bits the format lacks


_M64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """A 64-bit mix of ``value`` (Steele et al.'s SplitMix64 finaliser): keys from consecutive counters
    share no structure."""
    value = (value + 0x9E3779B97F4A7C15) & _M64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _M64
    return value ^ (value >> 31)


class NoiseKeys:
    """Where the rounding's bits come from: a seed and a counter, one fresh 32-bit key per rounded tensor.

    The whole state is two integers (:meth:`state_dict`), so a checkpoint restores the exact bits, and ranks
    that start from the same seed draw the same keys (DDP replicas stay bitwise equal).
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & _M64
        self.count = 0

    def next_key(self) -> int:
        """The next key, as a signed 32-bit integer (what an int32 tensor holds)."""
        self.count += 1
        key = _splitmix64(self.seed ^ _splitmix64(self.count)) & 0xFFFFFFFF
        return key - (1 << 32) if key >= 1 << 31 else key

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.count = int(state["seed"]), int(state["count"])


def hash_bits(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash of an int32 tensor (xorshift-multiply rounds, all in int32).

    Shifts are logical (masked after torch's arithmetic shift) and products wrap modulo 2^32: the output's 16
    low (or high) bits are uniform over the 2^16 patterns when the inputs are distinct.
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * 0x5BD1E995
    return x ^ ((x >> 16) & 0xFFFF)


def element_bits(numel: int, key: torch.Tensor, device: torch.device, start: int = 0) -> torch.Tensor:
    """32 hashed bits per element: hash(i XOR key) for flat indices i = start .. start + numel − 1."""
    index = torch.arange(start, start + numel, device=device, dtype=torch.int32)
    return hash_bits(index ^ key)


def round_to(value: torch.Tensor, dtype: torch.dtype, bits: torch.Tensor) -> torch.Tensor:
    """fp32 ``value`` stochastically rounded to ``dtype`` with uniform random int32 ``bits`` (low 16 used).

    A pure function (no in-place op), so ``torch.compile`` fuses it into the step that computes ``value``.
    fp32 / fp64 targets take ``value`` as it is.  See the module docstring for the bit trick and the fp16
    subnormal shift.
    """
    if dtype not in _DROPPED_BITS:
        return value.to(dtype)
    dropped = _DROPPED_BITS[dtype]
    noise = bits & ((1 << dropped) - 1)  # uniform in [0, 2^dropped)
    if dtype == torch.bfloat16:
        rounded = ((value.view(torch.int32) + noise) & -(1 << dropped)).view(torch.float32)
        return rounded.to(dtype)  # exact: the value is representable now
    offset = torch.where(value.abs() < _FP16_TINY, torch.sign(value) * _FP16_TINY, torch.zeros_like(value))
    shifted = value + offset  # exact (see the module docstring)
    rounded = ((shifted.view(torch.int32) + noise) & -(1 << dropped)).view(torch.float32)
    return (rounded - offset).to(dtype)


def scale_rounded_(target: torch.Tensor, factor: torch.Tensor, key: torch.Tensor) -> None:
    """target ← SR(factor·target) for a flat contiguous bf16/fp16 tensor, noise keyed by ``key``."""
    bits = element_bits(target.numel(), key, target.device)
    target.copy_(round_to(target.float() * factor, target.dtype, bits))


_SCALE_KERNEL = CompiledKernel(scale_rounded_, "the stochastically rounded decay pass")


def _scale_with_keys_(tensors: list[torch.Tensor], factor: float, keys: NoiseKeys, eager: bool) -> None:
    """The decay pass with hashed noise: one (compiled) pass per tensor, noise from ``keys``."""
    scalars: dict[torch.device, torch.Tensor] = {}
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # DTensor shards scale locally
        if local.numel() == 0:
            continue
        if local.device not in scalars:
            scalars[local.device] = torch.tensor(factor, dtype=torch.float64, device=local.device)
        key = torch.tensor(keys.next_key(), dtype=torch.int32, device=local.device)
        flat = local.view(-1).detach() if local.is_contiguous() else local.contiguous().view(-1)
        _SCALE_KERNEL(flat, scalars[local.device], key, eager=eager)
        if not local.is_contiguous():
            local.copy_(flat.view(local.shape))


def _chunk_elements(device: torch.device) -> int:
    """Elements rounded per chunk: bounds the fp32 scratch (6 bytes/element with the noise).

    On CPU a chunk that fits the L2 cache keeps the six passes over it out of main memory; on an accelerator
    each pass is a kernel launch, so the chunk must be large enough to hide launches.
    """
    return 1 << 18 if device.type == "cpu" else 1 << 24


def _random_int16(
    numel: int, device: torch.device, generator: torch.Generator | None, words: torch.Tensor | None = None
) -> torch.Tensor:
    """``numel`` independent uniform int16 values (all 2^16 patterns), from ⌈numel/4⌉ 64-bit draws.

    ``words`` (int64, at least ⌈numel/4⌉ long) is reused as the buffer when given.
    """
    count = (numel + 3) // 4
    words = torch.empty(count, dtype=torch.int64, device=device) if words is None else words[:count]
    words.random_(-(2**63), None, generator=generator)  # the full 64-bit range: every bit uniform
    return words.view(torch.int16)[:numel]


def stochastic_round_(
    target: torch.Tensor,
    value: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    words: torch.Tensor | None = None,
) -> None:
    """Write ``value`` (fp32, same shape) into the bf16/fp16 tensor ``target`` with unbiased stochastic
    rounding.

    ``value`` is used as scratch and holds the rounded values afterwards; ``words`` is an optional
    int64 scratch buffer for the random bits (see :func:`_random_int16`).  The result is always one
    of the two representable neighbours of each value, the upper one with probability proportional
    to the distance from the lower one (see the module docstring).
    """
    if target.dtype not in _DROPPED_BITS:
        raise TypeError(f"stochastic_round_: target must be bfloat16 or float16, got {target.dtype}")
    if value.dtype != torch.float32 or value.shape != target.shape:
        raise TypeError("stochastic_round_: value must be a float32 tensor of the target's shape")
    if value.numel() == 0:
        return
    dropped = _DROPPED_BITS[target.dtype]
    offset = None
    if target.dtype == torch.float16:
        # Subnormal range: shift by ±2^-14 so that the 13-bit truncation below has the 2^-24 spacing.
        offset = torch.sign(value).mul_(_FP16_TINY)
        offset.masked_fill_(value.abs() >= _FP16_TINY, 0.0)
        value.add_(offset)
    bits = value.view(torch.int32)
    noise = _random_int16(value.numel(), value.device, generator, words).view(value.shape)
    if dropped == 16:
        bits.add_(noise).add_(1 << 15)  # + uniform integer in [0, 2^16)
    else:
        bits.add_(noise.bitwise_and_((1 << dropped) - 1))  # + uniform integer in [0, 2^dropped)
    # Clear the dropped bits (sign-magnitude: truncation toward zero on the magnitude, for both signs).
    bits.bitwise_and_(-(1 << dropped))
    if offset is not None:
        value.sub_(offset)  # exact: both are multiples of 2^-24 below 2^-13
    target.copy_(value)  # exact: every value is now representable in the target dtype


def _stochastic_scale_(tensors: list[torch.Tensor], factor: float, generator: torch.Generator | None) -> None:
    """tensor ← SR(factor·tensor) for bf16/fp16 tensors of one device, in chunks through reused scratch.

    The fp32 values and the random words go through two buffers of at most one chunk each, allocated once per
    call: the scratch stays bounded (6 bytes per chunk element) and, on CPU, in cache.
    """
    locals_ = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # DTensor shards scale locally
    locals_ = [t for t in locals_ if t.numel() > 0]
    if not locals_:
        return
    device = locals_[0].device
    chunk = _chunk_elements(device)
    size = min(chunk, max(t.numel() for t in locals_))
    buffer = torch.empty(size, dtype=torch.float32, device=device)
    words = torch.empty((size + 3) // 4, dtype=torch.int64, device=device)
    for local in locals_:
        numel = local.numel()
        if not local.is_contiguous():
            stochastic_round_(local, local.float().mul_(factor), generator)
            continue
        flat = local.view(-1)
        for start in range(0, numel, chunk):
            part = flat[start : start + chunk]
            value = buffer[: part.numel()]
            value.copy_(part).mul_(factor)  # exact widening, then the product in fp32
            stochastic_round_(part, value, generator, words=words)


@torch.no_grad()
def scale_(
    params: list[torch.Tensor],
    factor: float,
    stochastic: bool = True,
    generator: torch.Generator | None = None,
    *,
    keys: NoiseKeys | None = None,
    eager: bool = False,
) -> None:
    """θ ← factor·θ for every tensor, stochastically rounded for bf16/fp16 when ``stochastic``.

    fp32/fp64 tensors (and every tensor when ``stochastic`` is False) take one ``_foreach_mul_`` pass, exactly
    as without this module.  The random bits come from ``keys`` (hashed, one compiled pass per tensor;
    ``eager`` skips the compilation) when given, else from ``generator`` (on the tensors' device) or torch's
    global generator.
    """
    if not stochastic:
        foreach_mul_(params, factor)
        return
    exact = [p for p in params if p.dtype not in LOW_PRECISION_DTYPES]
    if exact:
        foreach_mul_(exact, factor)
    if len(exact) == len(params):
        return
    low = [p for p in params if p.dtype in LOW_PRECISION_DTYPES]
    if keys is not None:
        _scale_with_keys_(low, factor, keys, eager)
        return
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in low:
        by_device.setdefault(p.device, []).append(p)
    for tensors in by_device.values():
        _stochastic_scale_(tensors, factor, generator)
