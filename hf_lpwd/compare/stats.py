"""Paired statistics over seeds: the one home of the numbers that ``hf-lpwd compare`` and ``benchmarks/``
report.

Seed s gives every cell the same initialisation, data order and dropout, so two cells are compared through the
per-seed differences d_s = a_s − b_s.  Their mean d̄ and the 95 % t-interval d̄ ± t_{0.975, n−1} · sd(d) / √n
(sd the sample standard deviation) say whether the difference is larger than the seed-to-seed noise.

The Student-t quantile is computed here (no scipy in the core package): the t distribution's tail is a
regularized incomplete beta function, P(T > t) = ½ · I_{ν/(ν+t²)}(ν/2, ½), evaluated by its continued fraction
and inverted by bisection to machine precision. """

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "excludes_zero",
    "fmt_diff",
    "fmt_value",
    "mean_std",
    "paired_differences",
    "t_interval",
    "t_quantile",
]


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated with the modified Lentz method (converges for x <
    (a+1)/(a+b+2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return h


def _regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` > 0 degrees of freedom (e.g. t_{0.975, 4} = 2.7764451...).

    For p ≥ 0.75 it solves the upper tail ½ · I_{ν/(ν+t²)}(ν/2, ½) = 1 − p, nearer the centre the central mass
    I_{t²/(ν+t²)}(½, ν/2) = 2p − 1 (each side keeps its target free of cancellation), by bisection on t.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie in (0, 1)")
    if not df > 0:
        raise ValueError(f"df={df} must be > 0")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p >= 0.75:
        target = 1.0 - p  # exact in floating point for p in [0.5, 1]

        def above(t: float) -> bool:  # t lies above the quantile: its upper tail is below the target
            return 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t)) < target
    else:
        target = 2.0 * p - 1.0

        def above(t: float) -> bool:  # the central mass P(|T| < t) exceeds the target
            return _regularized_beta(0.5, df / 2.0, t * t / (df + t * t)) > target
    lo, hi = 0.0, 1.0
    while not above(hi):  # bracket the root
        lo, hi = hi, hi * 2.0
    for _ in range(2100):  # bisection: both sides are monotonic in t; stops when the bracket is one ulp wide
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if above(mid):
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample standard deviation, n); the std is 0 for one value, and both are nan for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    return statistics.fmean(values), (statistics.stdev(values) if n > 1 else 0.0), n


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """(mean, half width of the ``level`` t-interval, n): mean ± t_{(1+level)/2, n−1} · sd / √n; half width
    nan for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, 1
    return mean, t_quantile((1.0 + level) / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n), n


def paired_differences(a: Mapping[Any, float], b: Mapping[Any, float]) -> list[float]:
    """a_s − b_s for every seed s that both cells have, in seed order."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def excludes_zero(mean: float, half: float) -> bool:
    """The interval mean ± half lies entirely on one side of 0 (False when it is undefined)."""
    return math.isfinite(mean) and math.isfinite(half) and (mean - half > 0 or mean + half < 0)


def fmt_value(value: float, digits: int, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals (``+`` before a positive one when ``signed``); a value that rounds
    to zero prints as ``0.00…``, never ``-0.00…`` or ``+0.00…``."""
    text = f"{value:{'+' if signed else ''}.{digits}f}"
    return text.lstrip("+-") if float(text) == 0 else text


def fmt_diff(mean: float, half: float, n: int, scale: float = 1.0, digits: int = 1) -> str:
    """``+1.2 [-0.3, +2.7]``, with `` *`` where the interval excludes 0; ``+1.2 (n=1)`` without an
    interval."""
    if n == 0 or not math.isfinite(mean):
        return "–"
    if not math.isfinite(half):
        return f"{fmt_value(mean * scale, digits, True)} (n={n})"
    lo, hi = (mean - half) * scale, (mean + half) * scale
    star = " *" if lo > 0 or hi < 0 else ""
    return (f"{fmt_value(mean * scale, digits, True)} [{fmt_value(lo, digits, True)}, "
            f"{fmt_value(hi, digits, True)}]{star}")
