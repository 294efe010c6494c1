"""Beyond the paper: pretrain a small Llama from scratch on Tiny Shakespeare with the 2 × 2 ablation over a λ
grid.

Modes: wd (AdamW), pwd, lwd (AdamW's timing with LPWD's layer-wise λ), lpwd; seeds are paired (seed s gives
the same initialisation, data order and dropout in every mode).  A character-level tokenizer is built in the
script (the sorted set of characters of the whole text, 65 for Tiny Shakespeare; no Hub tokenizer).  The model
is a ``LlamaForCausalLM`` from a ``LlamaConfig`` (default: 4 blocks, hidden 96, 4 heads, MLP 256, untied head:
~0.5M parameters), trained with ``LPWDTrainer`` on non-overlapping blocks of the first 90 % of the text and
evaluated on the last 10 %: validation perplexity per character, exp(mean next-character cross-entropy) over
all validation blocks, plus (``--curve-every``) a perplexity curve on the first validation blocks during
training.  Same learning rate and schedule for every mode.

Each finished run is appended to ``<out-dir>/pretrain_lm_runs.jsonl``; a rerun with the same settings skips
those runs (resume), then rewrites ``pretrain_lm.md``, ``pretrain_lm.json`` and ``pretrain_lm.png``::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pretrain_lm  # ~1 min a run (repo root)
    ... -m benchmarks.pretrain_lm --lambdas 1 --seeds 0 --steps 5 --out-dir /tmp/x    # a quick check
    ... -m benchmarks.pretrain_lm --report-only                                       # tables, plot

The earlier runs (6 blocks, hidden 128, 200 steps, η = 2e-3, wd vs lpwd) stay in the JSONL under their own
settings key: ``--report-only --steps 200 --lr 2e-3 --hidden 128 --layers 6 --intermediate 352 --curve-every
0``."""

from __future__ import annotations

import argparse
import json
import math
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
    lr_sum,
    machine,
    markdown_table,
    mean_decay_multiplier,
    paired,
    parse_floats,
    parse_ints,
    parse_strs,
    plot_sweep,
    prepare_sweep,
    quiet_training,
    read_jsonl,
    run_grid,
    summarize,
    t_interval,
    train_model,
)

NAME = "pretrain_lm"
TASK = "shakespeare"
DEFAULT_LAMBDAS = "0.05,3,10"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--modes", default="wd,pwd,lwd,lpwd", help="comma-separated: " + ", ".join(MODE_ORDER))
    p.add_argument("--lambdas", default=DEFAULT_LAMBDAS, help="comma-separated λ grid (weight_decay)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (init, data order)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block-size", type=int, default=64, help="characters per training / validation block")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate η (linear warm-up and decay)")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--hidden", type=int, default=96)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=256)
    p.add_argument(
        "--eval-chars",
        type=int,
        default=0,
        help="validate on the first N characters of the held-out 10 %% (0: all)",
    )
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument(
        "--curve-every",
        type=int,
        default=100,
        help="also record validation perplexity every N steps (0: off)",
    )
    p.add_argument("--curve-blocks", type=int, default=64, help="validation blocks used for that curve")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with text/tinyshakespeare/input.txt (default: <repo>/../shared/data)",
    )
    p.add_argument(
        "--out-dir", default=str(RESULTS_DIR), help="where the JSONL, JSON, Markdown and PNG files go"
    )
    p.add_argument(
        "--report-only", action="store_true", help="only rebuild the table, JSON and plot from the JSONL"
    )
    return p.parse_args(argv)


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": "tinyshakespeare, char-level, first 90% train / last 10% validation",
        "steps": args.steps, "batch_size": args.batch_size, "block_size": args.block_size,
        "lr": args.lr, "warmup_ratio": args.warmup_ratio, "schedule": "linear", "optim": "adamw_torch_fused",
        "hidden": args.hidden, "layers": args.layers, "heads": args.heads, "intermediate": args.intermediate,
        "eval_chars": args.eval_chars,
    } | ({"curve_every": args.curve_every, "curve_blocks": args.curve_blocks} if args.curve_every else {})


def warmup_steps(args: argparse.Namespace) -> int:
    return math.ceil(args.steps * args.warmup_ratio)


# ---------------------------------------------------------------------------------------------- data
def load_text(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    text = (root / "text" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    if args.eval_chars:
        val = val[: args.eval_chars]
    b = args.block_size
    train_blocks = train[: len(train) // b * b].view(-1, b)
    val_blocks = val[: len(val) // b * b].view(-1, b)
    return {"vocab": chars, "train": [{"input_ids": row, "labels": row} for row in train_blocks],
            "val": val_blocks, "train_chars": len(train), "val_chars": len(val)}


def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    ids = torch.stack([r["input_ids"] for r in rows])
    return {"input_ids": ids, "labels": ids}


def make_model(args: argparse.Namespace, vocab_size: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=max(256, args.block_size), tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------------------------------------- one run
def evaluate(model: Any, val_blocks: Any, batch_size: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(val_blocks), batch_size):
            ids = val_blocks[start:start + batch_size]
            logits = model(input_ids=ids).logits[:, :-1].float()
            target = ids[:, 1:]
            nll += float(
                F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="sum")
            )
            count += target.numel()
    loss = nll / count
    return {"val_loss": loss, "val_ppl": math.exp(loss)}


def make_curve(val_blocks: Any, every: int, batch_size: int) -> Any:
    """A Trainer callback recording the validation perplexity on ``val_blocks`` every ``every`` steps
    (``.points``)."""
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        points: list[tuple[int, float]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.global_step % every == 0 and model is not None:
                self.points.append(
                    (state.global_step, round(evaluate(model, val_blocks, batch_size)["val_ppl"], 4))
                )
                model.train()

    curve = Curve()
    curve.points = []
    return curve


def one_run(mode: str, lam: float, seed: int, args: argparse.Namespace,
            data: dict[str, Any]) -> dict[str, Any]:
    from transformers import set_seed

    t0 = time.perf_counter()
    set_seed(seed)
    model = make_model(args, len(data["vocab"]))
    n_params = sum(p.numel() for p in model.parameters())
    decayed = [p for p in model.parameters() if p.ndim > 1]
    norm0 = global_norm(decayed)
    curve = make_curve(data["val"][: args.curve_blocks], args.curve_every, args.eval_batch_size)
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
        collator=collate,
        callbacks=[curve] if args.curve_every else None,
    )
    t2 = time.perf_counter()
    metrics = evaluate(model, data["val"], args.eval_batch_size)
    t3 = time.perf_counter()
    return {
        "task": TASK,
        "mode": mode,
        "lambda": lam,
        "seed": seed,
        **metrics,
        "train_loss": float(result.training_loss),
        "params": n_params,
        "weight_norm_ratio": global_norm(decayed) / norm0,
        "mean_decay_multiplier": mean_decay_multiplier(optimizer, lam),
        "curve": curve.points,
        "seconds_setup": round(t1 - t0, 2),
        "seconds_train": round(t2 - t1, 2),
        "seconds_eval": round(t3 - t2, 2),
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
    summary = summarize(runs, "val_ppl")
    cells = by_cell(runs, "val_ppl")
    lams = sorted({k[2] for k in summary})
    modes = [m for m in MODE_ORDER if any(k[1] == m for k in summary)]
    others = [m for m in modes if m != "wd"]
    parts = [
        "# Small Llama pretrained from scratch on Tiny Shakespeare: the 2 × 2 ablation\n\n",
        "Written by `benchmarks/pretrain_lm.py` (see benchmarks/README.md). Settings: "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f"; {runs[0]['params']:,} parameters; settings key `{key}`.\n\n",
        f"Σ_t η_t = {total:.4g}. Runs: {len(runs)}; mean time per run "
        f"{sum(r['seconds'] for r in runs) / len(runs):.1f} s "
        f"(train {sum(r['seconds_train'] for r in runs) / len(runs):.1f} s, eval "
        f"{sum(r['seconds_eval'] for r in runs) / len(runs):.1f} s); {machine()}.\n\n",
        "## Validation perplexity per character (lower is better)\n\n",
        markdown_table(
            summary,
            TASK,
            "validation perplexity",
            digits=3,
            best="min",
            lambda_note={lam: f"{lam * total:.3g}" for lam in lams},
        ),
        "\n## Paired difference to WD (perplexity; negative = better than WD), mean [95 % t-interval over "
        "seeds]\n\n",
        "| λ | " + " | ".join(f"{MODE_STYLE[m]['label']} − WD" for m in others) + " |\n",
        "|" + "---|" * (1 + len(others)) + "\n",
    ]
    diffs = []
    for lam in lams:
        row = [fmt_lambda(lam)]
        for m in others:
            mean, half, n = t_interval(paired(cells, (m, lam), ("wd", lam)))
            row.append(fmt_diff(mean, half, n, 1.0, 3))
            diffs.append({"mode": m, "lambda": lam, "diff": mean, "half_width": half, "n": n})
        parts.append("| " + " | ".join(row) + " |\n")
    norm = summarize(runs, "weight_norm_ratio")
    parts.append(
        "\n‖W_end‖/‖W_init‖ of the weight matrices (mean over seeds):\n\n| λ | " + " | ".join(modes) + " |\n"
    )
    parts.append("|" + "---|" * (1 + len(modes)) + "\n")
    for lam in lams:
        parts.append(
            f"| {fmt_lambda(lam)} | "
            + " | ".join(
                f"{norm[(TASK, m, lam)]['mean']:.3f}" if (TASK, m, lam) in norm else "–" for m in modes
            )
            + " |\n"
        )
    curves = [r for r in runs if r.get("curve")]
    if curves:
        parts.append(
            f"\nValidation perplexity during training (first {args.curve_blocks} validation blocks), "
            "mean over seeds, by step:\n\n"
        )
        steps = sorted({p[0] for r in curves for p in r["curve"]})
        parts.append(
            "| mode | λ | " + " | ".join(str(s) for s in steps) + " |\n|" + "---|" * (2 + len(steps)) + "\n"
        )
        for m in modes:
            for lam in lams:
                rs = [dict(r["curve"]) for r in curves if r["mode"] == m and float(r["lambda"]) == lam]
                if rs:
                    parts.append(
                        f"| {m} | {fmt_lambda(lam)} | "
                        + " | ".join(
                            f"{sum(c[s] for c in rs if s in c) / max(1, sum(s in c for c in rs)):.3f}"
                            for s in steps
                        )
                        + " |\n"
                    )
    png = out_dir / f"{NAME}.png"
    plot_sweep(
        summary,
        TASK,
        png,
        "validation perplexity (char)",
        f"Llama {runs[0]['params'] / 1e6:.2f}M on Tiny Shakespeare: {args.steps} steps × {args.batch_size}×"
        f"{args.block_size}, η={args.lr:g}, {len({r['seed'] for r in runs})} seeds",
    )
    parts.append(f"\n![validation perplexity]({png.name})\n")
    (out_dir / f"{NAME}.md").write_text("".join(parts), encoding="utf-8")
    cell_stats = [{"mode": m, "lambda": lam, **c} for (_, m, lam), c in sorted(summary.items())]
    (out_dir / f"{NAME}.json").write_text(
        json.dumps({"settings": settings, "settings_key": key, "lr_sum": total, "cells": cell_stats,
                    "paired_vs_wd": diffs, "runs": runs}, indent=1, sort_keys=True), encoding="utf-8")
    print(f"wrote {out_dir / (NAME + '.md')}, {out_dir / (NAME + '.json')} and {png}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    modes = parse_strs(args.modes, list(MODE_ORDER))
    lambdas, seeds = parse_floats(args.lambdas), parse_ints(args.seeds)
    settings = run_settings(args)
    out_dir, key = prepare_sweep(args.lr, lambdas, args.out_dir, settings)
    if args.report_only:
        import torch

        torch.set_num_threads(args.threads)  # for the machine line of the report
        write_report(args, key, settings, out_dir)
        return

    quiet_training(args.threads)
    data = load_text(data_dir(args.data_dir), args)

    def describe(row: dict[str, Any]) -> str:
        return (
            f"{row['mode']:>4} λ={fmt_lambda(row['lambda']):>6} seed={row['seed']}: "
            f"val ppl={row['val_ppl']:.3f} train loss={row['train_loss']:.3f} "
            f"‖W‖ ratio={row['weight_norm_ratio']:.3f} curve={row['curve']}"
        )

    total = lr_sum(args.lr, args.steps, warmup_steps(args))
    cells = [(m, lam, s) for s in seeds for lam in lambdas for m in modes]
    run_grid(
        NAME,
        out_dir,
        key,
        settings,
        cells,
        lambda r: (r["mode"], float(r["lambda"]), int(r["seed"])),
        lambda m, lam, s: one_run(m, lam, s, args, data),
        describe,
        f"vocab {len(data['vocab'])} chars, {data['train_chars']:,} train / {data['val_chars']:,} validation "
        f"chars; Σ η_t = {total:.4g}",
    )
    write_report(args, key, settings, out_dir)


if __name__ == "__main__":
    main()
