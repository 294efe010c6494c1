"""The report of ``hf-lpwd compare``: per cell mean ± std (n), paired differences to the reference, plots.

Everything here is computed from ``OUT/results.jsonl`` (and the plan), so the report of a partial grid can be
rebuilt at any time (``--report-only``).  The statistics are :mod:`hf_lpwd.compare.stats`'; the plots
(:mod:`hf_lpwd.compare.plots`) need matplotlib (the ``plot`` extra) and are skipped with a note without it.
Cells that cannot say much are flagged in words: all seeds at one value, no difference to the reference at any
seed, or several cells at the same constant (a model that predicts one class whatever its input). """

from __future__ import annotations

import json
import math
import re
import shlex
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .grid import Axis, cell_name, reference_settings, settings_key
from .outputs import KEPT_BY_DEFAULT, KEPT_WITH_WEIGHTS
from .plots import write_plots
from .stats import excludes_zero, fmt_diff, fmt_value, mean_std, paired_differences, t_interval

__all__ = ["DIGITS", "REPORT_NAME", "SUMMARY_NAME", "cell_summaries", "degenerate_notes", "write_report"]

REPORT_NAME = "report.md"
SUMMARY_NAME = "report.json"
DIGITS = 4
"""Decimals of every metric value in the report."""


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
    """Per cell: the metric per seed, mean ± std, the paired difference to its reference cell, and its
    flags."""
    seeds = list(seeds)
    out = []
    for settings in cells:
        values = _values_by_seed(rows, settings, seeds, lambda r: r["metrics"].get(metric))
        mean, std, n = mean_std([values[s] for s in sorted(values)])
        ref = reference_settings(settings, axes, reference)
        entry: dict[str, Any] = {
            "cell": cell_name(settings),
            "settings": settings,
            "n": n,
            "mean": mean,
            "std": std,
            "values": {str(s): v for s, v in sorted(values.items())},
            "norm_ratio": _mean_or_none(
                _values_by_seed(rows, settings, seeds, lambda r: r.get("norm_ratio"))
            ),
            "shrink": _mean_or_none(_values_by_seed(rows, settings, seeds, lambda r: r.get("shrink"))),
            "seconds": _mean_or_none(_values_by_seed(rows, settings, seeds, lambda r: r.get("seconds"))),
            "reference": ref,
            "is_reference": ref == settings,
            "flags": [],
        }
        if n >= 2 and len(set(values.values())) == 1:
            entry["flags"].append(f"all {n} seeds gave {fmt_value(mean, DIGITS)}")
        if not entry["is_reference"]:
            ref_values = _values_by_seed(rows, ref, seeds, lambda r: r["metrics"].get(metric))
            diffs = paired_differences(values, ref_values)
            d_mean, half, pairs = t_interval(diffs)
            entry["diff"] = {"n": pairs, "mean": d_mean, "half_width": half,
                             "low": d_mean - half, "high": d_mean + half,
                             "excludes_zero": excludes_zero(d_mean, half)}
            if pairs >= 2 and all(d == 0 for d in diffs):
                entry["flags"].append(f"equal to its reference at all {pairs} seeds")
        out.append(entry)
    constants = Counter(s["mean"] for s in out if s["n"] >= 2 and s["std"] == 0)
    for s in out:
        if s["n"] >= 2 and s["std"] == 0 and constants[s["mean"]] >= 2:
            s["flags"].append(f"{constants[s['mean']]} cells sit at this one value: a constant prediction?")
    return out


def degenerate_notes(summaries: Sequence[dict[str, Any]], metric: str) -> str:
    """The words under the table for the flagged cells ('' when none is)."""
    flagged = [s for s in summaries if s["flags"]]
    if not flagged:
        return ""
    lines = [
        "\n## Degenerate cells\n\n",
        f"These cells cannot show a difference: their {metric} did not move with the seed, or not away from "
        "the reference. A model that predicts one class whatever its input scores the share of that class "
        "(e.g. the majority class's accuracy) at every seed; check the learning rate, λ and the number of "
        "steps before reading their differences.\n\n",
    ]
    lines += [f"- {s['cell']}: {'; '.join(s['flags'])}\n" for s in flagged]
    return "".join(lines)


def _fmt(value: float | None, digits: int = DIGITS) -> str:
    return "–" if value is None or not math.isfinite(value) else fmt_value(value, digits)


def table_digits(summaries: Sequence[dict[str, Any]]) -> int:
    """Decimals that show two significant digits of the smallest spread or difference in the table (at
    least :data:`DIGITS`, at most 10): a loss difference of 3e-6 must not print as +0.0000 [−0.0000,
    +0.0000]."""
    sizes = [abs(v) for s in summaries for v in (s.get("std"), *(
        (s["diff"].get("mean"), s["diff"].get("half_width")) if s.get("diff") else ()))
        if isinstance(v, (int, float)) and math.isfinite(v) and v != 0]
    if not sizes:
        return DIGITS
    return min(max(DIGITS, 1 - math.floor(math.log10(min(sizes)))), 10)


def _reference_sentence(axes: Sequence[Axis], reference: dict[str, tuple[str, ...]]) -> str:
    named = ", ".join(f"{name}={'+'.join(v)}" for name, v in reference.items())
    others = [a.name for a in axes if a.name not in reference]
    if not others:
        return f"every cell is compared with the cell {named}"
    return f"every cell is compared with the cell at {named} and its own {', '.join(others)}"


def markdown_table(axes: Sequence[Axis], summaries: Sequence[dict[str, Any]], metric: str) -> str:
    """One row per cell: its settings, mean ± std (n), the paired difference to its reference, norm ratio, S,
    and a flag column when a cell is degenerate."""
    with_norm = any(s["norm_ratio"] is not None for s in summaries)
    with_shrink = any(s["shrink"] is not None for s in summaries)
    with_flags = any(s["flags"] for s in summaries)
    head = [a.name for a in axes] + [
        f"{metric}: mean ± std (n)",
        "− reference: mean [95 % t-interval] (pairs)",
    ]
    head += ["norm ratio"] * with_norm + ["shrink S"] * with_shrink + ["flag"] * with_flags
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    digits = table_digits(summaries)
    for s in summaries:
        row = ["+".join(s["settings"][k] for k in a.keys) for a in axes]
        if s["n"] < 2:  # one seed has no spread: not ± 0
            row.append("–" if s["n"] == 0 else f"{_fmt(s['mean'], digits)} (1)")
        else:
            row.append(f"{_fmt(s['mean'], digits)} ± {_fmt(s['std'], digits)} ({s['n']})")
        if s["is_reference"]:
            row.append("reference")
        else:
            d = s["diff"]
            text = fmt_diff(d["mean"], d["half_width"], d["n"], 1.0, digits)
            row.append(text if d["n"] < 2 else f"{text} ({d['n']})")
        if with_norm:
            row.append(_fmt(s["norm_ratio"], 3))
        if with_shrink:
            row.append("–" if s["shrink"] is None else f"{s['shrink']:.3g}")  # spans 1e-5 (harmless) to > 1
        if with_flags:
            row.append("degenerate" if s["flags"] else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _machines(rows: Sequence[dict[str, Any]]) -> str:
    seen = []
    for row in rows:
        m = row.get("machine") or {}
        text = (
            f"{m.get('host')} ({m.get('cpu')}, {m.get('cores')} cores, threads per run: {m.get('threads')}; "
            f"Python {m.get('python')}, torch {m.get('torch')}, transformers {m.get('transformers')}, "
            f"hf_lpwd {m.get('hf_lpwd')})"
        )
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "–"


def _norms_sentence(used: Sequence[dict[str, Any]]) -> str:
    """What the norm-ratio column shows, or why it is empty (the runs' own notes)."""
    missing = [r for r in used if r.get("norm_ratio") is None]
    notes = Counter(r.get("norms_note") or "the run's logs hold no per-depth norms" for r in missing)
    why = "; ".join(f"{note} ({count} of {len(used)} runs)" for note, count in notes.most_common())
    if len(missing) == len(used):
        return f"Norm ratio: no run logged per-depth weight norms, so the column is left out: {why}. "
    text = ("Norm ratio: ‖θ‖ at the last logged step / at the first (all trainable parameters, from the "
            "`lpwd/weight_norm/depth_DD` logs), mean over seeds. ")
    return text + (f"Missing for some runs: {why}. " if missing else "")


def _kept_sentence(used: Sequence[dict[str, Any]]) -> str:
    kept = {bool(r.get("kept_weights")) for r in used if "kept_weights" in r}
    if not kept:
        return ""
    if kept == {True}:
        return f"Outputs: {KEPT_WITH_WEIGHTS}.\n\n"
    if kept == {False}:
        return f"Outputs: {KEPT_BY_DEFAULT}.\n\n"
    return ("Outputs: some runs kept their weights (--keep-weights), the others only their JSON files and "
            "log.\n\n")


def write_report(out: Path, axes: Sequence[Axis], cells: Sequence[dict[str, str]], seeds: Sequence[int],
                 reference: dict[str, tuple[str, ...]], metric: str, rows: Sequence[dict[str, Any]],
                 command: Sequence[str]) -> list[Path]:
    """Write ``OUT/report.md``, ``OUT/report.json`` and the plots from the finished runs of this grid; returns
    their paths (report.md first)."""
    summaries = cell_summaries(axes, cells, seeds, reference, metric, rows)
    wanted = {settings_key(c) for c in cells}
    used = [r for r in rows if settings_key(r["settings"]) in wanted and int(r["seed"]) in set(seeds)]
    total = len(cells) * len(seeds)
    finished = {(settings_key(r["settings"]), int(r["seed"])) for r in used}
    missing = [f"{s['cell']} seeds {unrun}" for s in summaries
               if (unrun := [x for x in seeds if (settings_key(s["settings"]), x) not in finished])]
    lacking = [f"{s['cell']} seeds {without}" for s in summaries
               if (without := [x for x in seeds if (settings_key(s["settings"]), x) in finished
                               and str(x) not in s["values"]])]
    seconds = [float(r["seconds"]) for r in used if isinstance(r.get("seconds"), (int, float))]
    parts = [
        f"# hf-lpwd compare: {metric}\n\n",
        f"Command: `{shlex.join(command)}`\n\n",
        "Grid: "
        + "; ".join(f"`{a.name}` ∈ {{{', '.join(a.label(v) for v in a.values)}}}" for a in axes)
        + f"; seeds {', '.join(map(str, seeds))} (seed s runs with `--seed s --data_seed s` in every cell: "
        "the differences are paired).\n\n",
        f"Reference: {_reference_sentence(axes, reference)}.\n\n",
        f"Runs: {len(used)} of {total} finished"
        + (f" (missing: {'; '.join(missing)})" if missing else "")
        + (f" ({metric} not a finite number in: {'; '.join(lacking)})" if lacking else "")
        + (
            f"; {sum(seconds) / 3600:.2f} h of run time, {statistics.fmean(seconds):.0f} s per run on average"
            if seconds
            else ""
        )
        + f". Machines: {_machines(used)}.\n\n",
        _kept_sentence(used),
        markdown_table(axes, summaries, metric),
        f"\n{metric}: mean ± sample std over seeds (n seeds). Difference to the reference: paired over the "
        "seeds both cells finished, mean [95 % t-interval, n − 1 degrees of freedom]; * marks an interval "
        "that excludes 0. ",
    ]
    if used:
        parts.append(_norms_sentence(used))
    if any(s["shrink"] is not None for s in summaries):
        parts.append(
            "Shrink S: the run's largest per-depth S_d = Σ_t d_t (log-shrink of a weight no gradient "
            "moves), mean over seeds. "
        )
    parts.append("\n")
    parts.append(degenerate_notes(summaries, metric))
    earlier_plots = _plots_of_report(out / REPORT_NAME)
    plots = write_plots(out, axes, summaries, metric)
    if isinstance(plots, str):
        parts.append(f"\n{plots}\n")
    elif plots:
        parts.append(
            "\n## Plots (error bars: std over seeds; series side by side where their values are equal)\n\n"
        )
        parts.extend(f"![{name}]({name})\n\n" for name in plots)
    (out / REPORT_NAME).write_text("".join(parts), encoding="utf-8")
    for name in earlier_plots - set(plots if isinstance(plots, list) else []):  # another metric's, say
        (out / name).unlink(missing_ok=True)
    summary = {"metric": metric, "command": list(command), "seeds": list(seeds),
               "grid": [{"keys": list(a.keys), "values": [list(v) for v in a.values]} for a in axes],
               "reference": {k: list(v) for k, v in reference.items()}, "runs_finished": len(used),
               "runs_total": total, "cells": summaries}
    (out / SUMMARY_NAME).write_text(
        json.dumps(_json_safe(summary), indent=1, sort_keys=True), encoding="utf-8"
    )
    return [out / REPORT_NAME, out / SUMMARY_NAME] + (
        [out / name for name in plots] if isinstance(plots, list) else []
    )


def _plots_of_report(path: Path) -> set[str]:
    """The plot files an earlier report in this folder showed (``![name](name)``, a file of the folder)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return set()
    return set(re.findall(r"^!\[[^\]\n]*\]\(([^()/\\\n]+\.png)\)$", text, flags=re.M))


def _json_safe(value: Any) -> Any:
    """nan / inf → null, so that the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
