"""The plots of ``hf-lpwd compare``: the metric against each numeric grid key, against the shrink S and
against the norm ratio, mean ± std over seeds (matplotlib, the ``plot`` extra).

Series that sit on the same values must stay visible: each series gets its own marker, and the series are
spread a little sideways around each x (a dodge of a few % of the axis, on a log axis a factor), so that equal
points sit side by side instead of on top of each other. """

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .grid import Axis, is_number

__all__ = ["DRIVER_KEY", "MARKERS", "dodged", "write_plots"]

DRIVER_KEY = "weight_decay"
"""In the plots against S and the norm ratio, the key that moves a run along its line (else the last numeric
key)."""
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
DODGE = 0.012
"""Sideways spread between neighbouring series: a fraction of the x range (of log10 x on a log axis)."""

Points = dict[str, list[tuple[float, float, float]]]


def _file_part(text: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", text)


def _numeric_keys(axes: Sequence[Axis], cells: Sequence[dict[str, str]]) -> list[str]:
    """Grid keys (single or linked) whose values are all numbers and that take more than one value."""
    keys = [k for a in axes for k in a.keys]
    return [k for k in keys if len({c[k] for c in cells}) > 1 and all(is_number(c[k]) for c in cells)]


def _points(summaries: Sequence[dict[str, Any]], keys: Sequence[str], along: str | None, x_of: Any) -> Points:
    """Series of (x, mean, std) points, one series per combination of the values of the keys other than
    ``along``."""
    series: Points = {}
    for s in summaries:
        x = x_of(s)
        if s["n"] == 0 or x is None:
            continue
        label = ", ".join(f"{k}={s['settings'][k]}" for k in keys if k != along) or "all cells"
        series.setdefault(label, []).append((x, s["mean"], s["std"]))
    return series


def dodged(series: Points, logx: bool) -> Points:
    """The series with series i of k moved sideways by (i − (k−1)/2) · DODGE of the x range (a factor
    10^(… · DODGE · decades) on a log axis): equal points of different series no longer coincide."""
    k = len(series)
    xs = [p[0] for pts in series.values() for p in pts]
    if k < 2 or not xs:
        return {label: sorted(pts) for label, pts in series.items()}
    if logx:
        decades = max(math.log10(max(xs) / min(xs)), 1.0)
        step = 10 ** (DODGE * decades)
        return {label: sorted((x * step ** (i - (k - 1) / 2), m, e) for x, m, e in pts)
                for i, (label, pts) in enumerate(series.items())}
    # one x for all (two cells at one S): a few % of that x, never a shift at the axis' own scale
    span = (max(xs) - min(xs)) or abs(max(xs)) or 1.0
    return {label: sorted((x + (i - (k - 1) / 2) * DODGE * span, m, e) for x, m, e in pts)
            for i, (label, pts) in enumerate(series.items())}


def write_plots(out: Path, axes: Sequence[Axis], summaries: Sequence[dict[str, Any]], metric: str
                ) -> list[str] | str:
    """The metric against each numeric grid key (one line per combination of the other keys), and against S
    and the norm ratio where known (one line per combination of the keys other than λ, which moves a run along
    its line): the file names, or the note that explains why there are none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 'Plots skipped: matplotlib is not installed (pip install "hf_lpwd[plot]").'
    keys = [k for a in axes for k in a.keys]
    numeric = _numeric_keys(axes, [s["settings"] for s in summaries])
    names = []
    for key in numeric:
        series = _points(summaries, keys, key, lambda s, k=key: float(s["settings"][k]))
        name = f"{_file_part(metric)}_vs_{_file_part(key)}.png"
        plot_series(plt, series, out / name, key, metric, f"{metric} against {key}")
        names.append(name)
    driver = DRIVER_KEY if DRIVER_KEY in numeric else (numeric[-1] if numeric else None)
    for field, what, label in (("shrink", "the shrink S", "shrink S = Σ_t d_t (largest depth)"),
                               ("norm_ratio", "the norm ratio", "norm ratio ‖θ_last‖ / ‖θ_first‖")):
        series = _points(summaries, keys, driver, lambda s, f=field: s[f])
        if sum(len(v) for v in series.values()) > 1:
            name = f"{_file_part(metric)}_vs_{field}.png"
            plot_series(plt, series, out / name, label, metric, f"{metric} against {what}")
            names.append(name)
    return names


def plot_series(plt: Any, series: Points, path: Path, xlabel: str, ylabel: str, title: str
                ) -> list[tuple[list[float], str]]:
    """One line per series through (x, mean, std) points, each with its own marker and dodged sideways,
    written atomically to ``path`` (``plt``: pyplot, Agg); returns the drawn x positions and marker of each
    series."""
    xs = [p[0] for pts in series.values() for p in pts]
    logx = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 20
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    drawn = []
    for i, (label, pts) in enumerate(dodged(series, logx).items()):
        marker = MARKERS[i % len(MARKERS)]
        line = ax.errorbar(
            [p[0] for p in pts],
            [p[1] for p in pts],
            yerr=[p[2] for p in pts],
            marker=marker,
            capsize=3,
            linewidth=1.5,
            markersize=6,
            alpha=0.85,
            label=textwrap.shorten(label, 60),
            mfc="none" if i % 2 else None,
            zorder=2 + i,
        )
        drawn.append(([float(x) for x in line.lines[0].get_xdata()], line.lines[0].get_marker()))
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 64), fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(series) > 1 or next(iter(series), "all cells") != "all cells":
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return drawn
