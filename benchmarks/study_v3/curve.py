"""Print the evaluation curve of every run of a ``compare`` output folder, from its ``trainer_state.json``.

The pilots train once with ``--eval_strategy steps`` to see where the metric plateaus; the ``eval_loss`` of
each evaluation is printed with its exp (the perplexity of a language model).

    .venv/bin/python -m benchmarks.study_v3.curve benchmarks/results/study_v3/q5_scratch_pilot   # repo root
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:])[0])
    for state in sorted(out.glob("runs/*/seed*/trainer_state.json")):
        history = json.loads(state.read_text(encoding="utf-8"))["log_history"]
        print(state.parent.relative_to(out))
        for entry in history:
            if "eval_loss" in entry:
                extra = "".join(
                    f", {k} {v:.4f}"
                    for k, v in entry.items()
                    if k.startswith("eval_")
                    and k
                    not in ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
                )
                print(
                    f"  step {entry['step']}: eval_loss {entry['eval_loss']:.4f} "
                    f"(exp {math.exp(entry['eval_loss']):.3f})"
                    f"{extra}"
                )


if __name__ == "__main__":
    main()
