"""The report of ``hf-lpwd compare``: per cell mean ± std (n), paired differences to the reference, plots.

Everything here is computed from ``OUT/results.jsonl`` alone, so the report of a partial grid can be rebuilt at any
time (``--report-only``).  The statistics are :mod:`hf_lpwd.stats`'; the plots need matplotlib (the ``plot`` extra)
and are skipped with a note in the report without it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .grid import Axis, cell_name, is_number, reference_settings, settings_key
from .stats import excludes_zero, fmt_diff, mean_std, paired_differences, t_interval

__all__ = ["DIGITS", "cell_summaries", "write_report"]

REPORT_NAME = "report.md"
SUMMARY_NAME = "report.json"
DIGITS = 4
"""Decimals of every metric value in the report."""
DRIVER_KEY = "weight_decay"
"""In the plots against S and the norm ratio, the key that moves a run along its line (else the last numeric key)."""


def _values_by_seed(rows: Sequence[dict[str, Any]], settings: dict[str, str], seeds: Sequence[int], field: Any
                    ) -> dict[int, float]:
    key = settings_key(settings)
    out: dict[int, float] = {}
    for row in rows:
        if settings_key(row["settings"]) == key and int(row["seed"]) in seeds:
            value = field(row)
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[int(row["seed"])] = float(value)
    return out


def _mean_or_none(values: dict[int, float]) -> float | None:
    return statistics.fmean(values.values()) if values else None


def cell_summaries(axes: Sequence[Axis], cells: Sequence[dict[str, str]], seeds: Sequence[int],
                   reference: dict[str, tuple[str, ...]], metric: str,
                   rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: the metric per seed, mean ± std, and the paired difference to its reference cell."""
    seeds = list(seeds)
    out = []
    for settings in cells:
        values = _values_by_seed(rows, settings, seeds, lambda r: r["metrics"].get(metric))
        mean, std, n = mean_std([values[s] for s in sorted(values)])
        ref = reference_settings(settings, axes, reference)
        entry: dict[str, Any] = {
            "cell": cell_name(settings), "settings": settings, "n": n, "mean": mean, "std": std,
            "values": {str(s): v for s, v in sorted(values.items())},
            "norm_ratio": _mean_or_none(_values_by_seed(rows, settings, seeds, lambda r: r.get("norm_ratio"))),
            "shrink": _mean_or_none(_values_by_seed(rows, settings, seeds, lambda r: r.get("shrink"))),
            "seconds": _mean_or_none(_values_by_seed(rows, settings, seeds, lambda r: r.get("seconds"))),
            "reference": ref, "is_reference": ref == settings,
        }
        if not entry["is_reference"]:
            ref_values = _values_by_seed(rows, ref, seeds, lambda r: r["metrics"].get(metric))
            d_mean, half, pairs = t_interval(paired_differences(values, ref_values))
            entry["diff"] = {"n": pairs, "mean": d_mean, "half_width": half,
                             "low": d_mean - half, "high": d_mean + half, "excludes_zero": excludes_zero(d_mean, half)}
        out.append(entry)
    return out


def _fmt(value: float | None, digits: int = DIGITS) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _reference_sentence(axes: Sequence[Axis], reference: dict[str, tuple[str, ...]]) -> str:
    named = ", ".join(f"{name}={'+'.join(v)}" for name, v in reference.items())
    others = [a.name for a in axes if a.name not in reference]
    if not others:
        return f"every cell is compared with the cell {named}"
    return f"every cell is compared with the cell at {named} and its own {', '.join(others)}"


def markdown_table(axes: Sequence[Axis], summaries: Sequence[dict[str, Any]], metric: str) -> str:
    """One row per cell: its settings, mean ± std (n), the paired difference to its reference, norm ratio, S."""
    with_norm = any(s["norm_ratio"] is not None for s in summaries)
    with_shrink = any(s["shrink"] is not None for s in summaries)
    head = [a.name for a in axes] + [f"{metric}: mean ± std (n)", "− reference: mean [95 % t-interval] (pairs)"]
    head += ["norm ratio"] * with_norm + ["shrink S"] * with_shrink
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        row = ["+".join(s["settings"][k] for k in a.keys) for a in axes]
        row.append("–" if s["n"] == 0 else f"{_fmt(s['mean'])} ± {_fmt(s['std'])} ({s['n']})")
        if s["is_reference"]:
            row.append("reference")
        else:
            d = s["diff"]
            text = fmt_diff(d["mean"], d["half_width"], d["n"], 1.0, DIGITS)
            row.append(text if d["n"] < 2 else f"{text} ({d['n']})")
        if with_norm:
            row.append(_fmt(s["norm_ratio"], 3))
        if with_shrink:
            row.append("–" if s["shrink"] is None else f"{s['shrink']:.3g}")  # spans 1e-5 (harmless) to > 1
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _machines(rows: Sequence[dict[str, Any]]) -> str:
    seen = []
    for row in rows:
        m = row.get("machine") or {}
        text = (f"{m.get('host')} ({m.get('cpu')}, {m.get('cores')} cores, threads per run: {m.get('threads')}; "
                f"Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
                f"hf_lpwd {m.get('hf_lpwd')})")
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "–"


def write_report(out: Path, axes: Sequence[Axis], cells: Sequence[dict[str, str]], seeds: Sequence[int],
                 reference: dict[str, tuple[str, ...]], metric: str, rows: Sequence[dict[str, Any]],
                 command: Sequence[str]) -> None:
    """Write ``OUT/report.md``, ``OUT/report.json`` and the plots from the finished runs of this grid."""
    summaries = cell_summaries(axes, cells, seeds, reference, metric, rows)
    wanted = {settings_key(c) for c in cells}
    used = [r for r in rows if settings_key(r["settings"]) in wanted and int(r["seed"]) in set(seeds)]
    total = len(cells) * len(seeds)
    missing = [f"{s['cell']} seeds {sorted(set(seeds) - {int(k) for k in s['values']})}" for s in summaries
               if s["n"] < len(seeds)]
    seconds = [float(r["seconds"]) for r in used if isinstance(r.get("seconds"), (int, float))]
    parts = [
        f"# hf-lpwd compare: {metric}\n\n",
        f"Command: `{shlex.join(command)}`\n\n",
        "Grid: " + "; ".join(f"`{a.name}` ∈ {{{', '.join(a.label(v) for v in a.values)}}}" for a in axes)
        + f"; seeds {', '.join(map(str, seeds))} (seed s runs with `--seed s --data_seed s` in every cell: the "
        "differences are paired).\n\n",
        f"Reference: {_reference_sentence(axes, reference)}.\n\n",
        f"Runs: {len(used)} of {total} finished"
        + (f" (missing: {'; '.join(missing)})" if missing else "")
        + (f"; {sum(seconds) / 3600:.2f} h of run time, {statistics.fmean(seconds):.0f} s per run on average"
           if seconds else "") + f". Machines: {_machines(used)}.\n\n",
        markdown_table(axes, summaries, metric),
        f"\n{metric}: mean ± sample std over seeds (n seeds). Difference to the reference: paired over the seeds both "
        "cells finished, mean [95 % t-interval, n − 1 degrees of freedom]; * marks an interval that excludes 0. ",
    ]
    if any(s["norm_ratio"] is not None for s in summaries):
        parts.append("Norm ratio: ‖θ‖ at the last logged step / at the first (all trainable parameters, from the "
                     "`lpwd/weight_norm/depth_DD` logs), mean over seeds. ")
    if any(s["shrink"] is not None for s in summaries):
        parts.append("Shrink S: the run's largest per-depth S_d = Σ_t d_t (log-shrink of a weight no gradient moves), "
                     "mean over seeds. ")
    parts.append("\n")
    plots = write_plots(out, axes, summaries, metric)
    if isinstance(plots, str):
        parts.append(f"\n{plots}\n")
    elif plots:
        parts.append("\n## Plots (error bars: std over seeds)\n\n")
        parts.extend(f"![{name}]({name})\n\n" for name in plots)
    (out / REPORT_NAME).write_text("".join(parts), encoding="utf-8")
    summary = {"metric": metric, "command": list(command), "seeds": list(seeds),
               "grid": [{"keys": list(a.keys), "values": [list(v) for v in a.values]} for a in axes],
               "reference": {k: list(v) for k, v in reference.items()}, "runs_finished": len(used),
               "runs_total": total, "cells": summaries}
    (out / SUMMARY_NAME).write_text(json.dumps(_json_safe(summary), indent=1, sort_keys=True), encoding="utf-8")


def _json_safe(value: Any) -> Any:
    """nan / inf → null, so that the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- plots
def _file_part(text: str) -> str:
    return re.sub(r"[^\w.+-]+", "_", text)


def _numeric_keys(axes: Sequence[Axis], cells: Sequence[dict[str, str]]) -> list[str]:
    """Grid keys (single or linked) whose values are all numbers and that take more than one value."""
    keys = [k for a in axes for k in a.keys]
    return [k for k in keys if len({c[k] for c in cells}) > 1 and all(is_number(c[k]) for c in cells)]


def _points(summaries: Sequence[dict[str, Any]], keys: Sequence[str], along: str | None,
            x_of: Any) -> dict[str, list[tuple[float, float, float]]]:
    """Series of (x, mean, std) points, one series per combination of the values of the keys other than ``along``."""
    series: dict[str, list[tuple[float, float, float]]] = {}
    for s in summaries:
        x = x_of(s)
        if s["n"] == 0 or x is None:
            continue
        label = ", ".join(f"{k}={s['settings'][k]}" for k in keys if k != along) or "all cells"
        series.setdefault(label, []).append((x, s["mean"], s["std"]))
    return series


def write_plots(out: Path, axes: Sequence[Axis], summaries: Sequence[dict[str, Any]], metric: str
                ) -> list[str] | str:
    """The metric against each numeric grid key (one line per combination of the other keys), and against S and the
    norm ratio where known (one line per combination of the keys other than λ, which moves a run along its line):
    the file names, or the note that explains why there are none."""
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
        _plot(plt, series, out / name, key, metric, f"{metric} against {key}")
        names.append(name)
    driver = DRIVER_KEY if DRIVER_KEY in numeric else (numeric[-1] if numeric else None)
    for field, what, label in (("shrink", "the shrink S", "shrink S = Σ_t d_t (largest depth)"),
                               ("norm_ratio", "the norm ratio", "norm ratio ‖θ_last‖ / ‖θ_first‖")):
        series = _points(summaries, keys, driver, lambda s, f=field: s[f])
        if sum(len(v) for v in series.values()) > 1:
            name = f"{_file_part(metric)}_vs_{field}.png"
            _plot(plt, series, out / name, label, metric, f"{metric} against {what}")
            names.append(name)
    return names


def _plot(plt: Any, series: dict[str, list[tuple[float, float, float]]], path: Path, xlabel: str, ylabel: str,
          title: str) -> None:
    """One line per series through (x, mean, std) points, written atomically to ``path`` (``plt``: pyplot, Agg)."""
    xs = [p[0] for pts in series.values() for p in pts]
    logx = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 20
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for label, pts in series.items():
        pts = sorted(pts)
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    linewidth=1.5, markersize=5, label=textwrap.shorten(label, 60))
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
