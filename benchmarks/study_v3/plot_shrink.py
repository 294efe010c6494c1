"""Question 3's plot against the shrink of the design: S = λ·Σ_t η_t of each cell of a ``compare`` report.

For WD runs of the Trainer's linear schedule (warm-up ceil(0.1·steps) steps) S is known from the cell's
learning_rate, max_steps and weight_decay alone; this draws the metric against S, one line per (lr, steps),
and writes ``shrink.md`` (the cells sorted by S) next to the report.  Once the runs record their own
``shrink`` (issue 19), ``hf-lpwd compare`` draws ``*_vs_shrink.png`` itself.

    .venv/bin/python -m benchmarks.study_v3.plot_shrink benchmarks/results/study_v3/q3_transfer   # repo root
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from benchmarks.common import lr_sum


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:])[0])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    metric = report["metric"]
    rows = []
    for cell in report["cells"]:
        s = cell["settings"]
        if cell["n"] == 0 or not {"learning_rate", "max_steps", "weight_decay"} <= set(s):
            continue
        lr, steps, lam = float(s["learning_rate"]), int(s["max_steps"]), float(s["weight_decay"])
        rows.append((lr, steps, lam, lam * lr_sum(lr, steps, math.ceil(0.1 * steps)), cell))
    lines = [f"# {metric} against the shrink S = λ·Σ_t η_t of the design\n", "",
             f"| S | learning_rate | max_steps | λ | {metric}: mean ± std (n) |", "|---|---|---|---|---|"]
    for lr, steps, lam, shrink, cell in sorted(rows, key=lambda r: (r[3], r[0], r[1])):
        lines.append(f"| {shrink:.3g} | {lr:g} | {steps} | {lam:g} | {cell['mean']:.4f} ± {cell['std']:.4f} "
                     f"({cell['n']}) |")
    (out / "shrink.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"wrote {out / 'shrink.md'} (no plot: matplotlib is not installed)")
        return
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    for lr, steps in sorted({(r[0], r[1]) for r in rows}):
        pts = sorted((r[3], r[4]["mean"], r[4]["std"]) for r in rows if (r[0], r[1]) == (lr, steps))
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=f"η = {lr:g}, {steps} steps")
    ax.set_xscale("log")
    ax.set_xlabel("shrink S = λ·Σ_t η_t")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against the shrink of the design (error bars: std over seeds)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{metric}_vs_design_shrink.png")
    plt.close(fig)
    print(f"wrote {out / 'shrink.md'} and {out / (metric + '_vs_design_shrink.png')}")


if __name__ == "__main__":
    main()
