"""Study Q6c's summary (CoLA, ``cola.sh``): the arms' paired differences to no decay in dev Matthews
correlation (primary) and dev accuracy (secondary), the loss gap, ‖θ − θ₀‖ per depth, and a plot of the paired
differences seed by seed.  ``hf-lpwd compare``'s own report (``cola/report.md``) has the MCC table by cell;
this adds the arms by name, the secondary metric and the three claims of the plan (``README.md``, "Q6c")
read as fixed there.

    .venv/bin/python -m benchmarks.study_q6.cola_summary --out benchmarks/results/study_q6/cola

Writes ``OUT/summary.md``, ``summary.json`` and ``paired_differences.png`` (with matplotlib).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.study_q6.summary import distance_table, setting_table, summarize_setting
from hf_lpwd.compare.stats import fmt_diff, paired_differences

PRIMARY, SECONDARY = "eval_matthews_correlation", "eval_accuracy"
SPD = ("lpwd_spd", "true")
CLAIMS = (  # (arm, design S or None, the claim, reading below / inside / above 0)
    ("SPD → θ₀", None, "1. SPD at λ = 1 helps (SST-2 anchor: +1.1 points)",
     ("contradicted", "not resolved", "replicated")),
    ("WD → θ₀", 1.0, "2. decay toward θ₀ at S ≤ 1 does not harm (checked at S = 1)",
     ("does not hold: harm", "holds (no harm resolved)", "holds (a gain)")),
    ("WD → 0", 0.25, "3. decay toward 0 at S = 0.25 harms (SST-2 −1.9, sentence pairs −4.6)",
     ("harm: holds", "no harm resolved", "contradicted: a gain")),
)


def reading(interval: tuple[float, float, int] | None, words: tuple[str, str, str]) -> str:
    """The plan's word for a paired 95 % interval (mean, half-width, pairs)."""
    if interval is None or interval[2] < 2:
        return "too few pairs"
    mean, half, _ = interval
    if mean + half < 0:
        return words[0]
    return words[2] if mean - half > 0 else words[1]


def find(summaries: Sequence[dict[str, Any]], arm: str, design: float | None) -> dict[str, Any] | None:
    for s in summaries:
        if s["arm"] == arm and (design is None or (s["S"] is not None and abs(s["S"] - design) < 1e-6)):
            return s
    return None


def plot(out: Path, summaries: Sequence[dict[str, Any]], reference: dict[str, Any]) -> str | None:
    """Each arm's paired MCC difference to no decay, one dot per seed, with the mean and its 95 % interval."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    arms = [s for s in summaries if s is not reference]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, s in enumerate(arms):
        diffs = paired_differences(s["metric"], reference["metric"])
        ax.scatter([i] * len(diffs), [100 * d for d in diffs], color="grey", s=14, zorder=2)
        if s["diff_to_no_decay"] is not None and s["diff_to_no_decay"][2] > 1:
            mean, half, _ = s["diff_to_no_decay"]
            ax.errorbar([i + 0.15], [100 * mean], yerr=[100 * half], fmt="o", capsize=4, color="C0", zorder=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(arms)))
    labels = [f"S = {s['S']:.3g}" if s["S"] else f"λ = {s['settings']['weight_decay']}" for s in arms]
    ax.set_xticklabels([f"{s['arm']}\n{label}" for s, label in zip(arms, labels, strict=True)], fontsize=8)
    ax.set_ylabel("dev MCC × 100, arm − no decay")
    ax.set_title("Q6c CoLA: paired differences (dots: seeds; blue: mean, 95 % interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "paired_differences.png", dpi=120)
    plt.close(fig)
    return "paired_differences.png"


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/study_q6/cola", help="cola.sh's compare folder")
    out = Path(p.parse_args(argv).out)
    primary = summarize_setting(out, SPD, PRIMARY)
    secondary = summarize_setting(out, SPD, SECONDARY)
    lines = ["# Study Q6c (CoLA): summary (written by benchmarks/study_q6/cola_summary.py)", "",
             "Dev Matthews correlation × 100 (primary) and dev accuracy (secondary); each arm − no decay, "
             "paired by seed, mean [95 % t-interval]. The plan and its readings: "
             "`benchmarks/study_q6/README.md`, \"Q6c\".", "", "## Matthews correlation (primary)", "",
             setting_table(primary, "dev MCC × 100"), "", "## Accuracy (secondary)", "",
             setting_table(secondary), "", "## The plan's three claims, read as fixed in advance", "",
             "| claim | arm − no decay, MCC × 100 [95 %] | reading |", "|---|---|---|"]
    for arm, design, claim, words in CLAIMS:
        s = find(primary, arm, design)
        interval = None if s is None else s["diff_to_no_decay"]
        shown = "not run yet" if interval is None else fmt_diff(*interval, scale=100)
        lines.append(f"| {claim} | {shown} | {reading(interval, words)} |")
    lines += ["", "## ‖θ − θ₀‖ per depth at the end (mean over seeds)", "", distance_table(primary)]
    reference = next((s for s in primary if s["arm"] == "no decay"), None)
    figure = plot(out, primary, reference) if reference is not None else None
    if figure:
        lines += ["", f"![{figure}]({figure})"]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump({"primary": primary, "secondary": secondary}, f, indent=1, default=str)
    print(f"wrote {out / 'summary.md'}")


if __name__ == "__main__":
    main()
