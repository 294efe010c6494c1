"""What LPWD costs end to end: one Trainer training step of LPWDTrainer (lpwd) against the stock Trainer
(AdamW).

Both trainers fine-tune the pretrained MiniLM-L6 BERT (two copies of the same initial weights, same λ, same lr
schedule, ``--optim adamw_torch_fused``) on the same SST-2 batches (batch 32, truncated at 64 tokens, padded
to the
longest sentence of the batch as ``DataCollatorWithPadding`` does; ``--padding max_length`` pads to 64).  A
step is what
the Trainer's inner loop does per optimizer step::

    trainer.training_step(model, batch)        # LPWDTrainer: pre_step() (the layer-wise pre-weight decay)
    first
    trainer.accelerator.clip_grad_norm_(...)  # max_grad_norm=1.0, as the Trainer does (--no-clip leaves it
    out)
    trainer.optimizer.step(); trainer.lr_scheduler.step(); model.zero_grad()

Time: the two trainers alternate step by step (A B A B ...) on the same batch after ``--warmup`` steps each,
so that
drifts of a shared machine hit both alike; the table gives the median step time of each, the ratio of the
medians and
the median of the per-step ratios (each step's pair ran on the same batch, seconds apart).  The load average
and the
share of 2 CPUs the process got are printed: other processes make the absolute times meaningless, the ratios
less so.

Memory: peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) of separate subprocesses, one trainer
each, after
``--memory-steps`` steps, alternating (A B A B, ``--memory-repeats`` each).  PyTorch's CPU allocator keeps no
peak
statistics, so the peak RSS of the whole process (Python, torch, the model, activations, gradients and
optimizer
state) is what is compared; the growth over the RSS just before training is shown too.  The optimizer-state
bytes are
the sum of ``nbytes`` of the tensors in ``optimizer.state``.

Optimizer-only ratios come from ``benchmarks/optimizer_step.py`` (run as a subprocess with ``--no-write``).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python -m benchmarks.train_step [--steps 30] [--warmup 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, data_dir, load_average, load_glue, machine, minilm_path

HERE = Path(__file__).resolve()
TIME_TARGET, MEMORY_TARGET = 1.02, 1.01
LABELS = {"stock": "Trainer (AdamW fused)", "lpwd": "LPWDTrainer (lpwd)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--steps", type=int, default=30, help="timed steps per trainer (median taken)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per trainer first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--padding", choices=("longest", "max_length"), default="longest")
    p.add_argument("--weight-decay", type=float, default=0.01, help="λ of both trainers")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--no-clip", action="store_true", help="leave out the gradient clipping")
    p.add_argument("--memory-steps", type=int, default=5, help="steps of each memory subprocess")
    p.add_argument("--memory-repeats", type=int, default=2, help="subprocesses per trainer (A B A B)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument(
        "--skip-optimizer-step", action="store_true", help="do not run benchmarks/optimizer_step.py"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out-dir", default=str(RESULTS_DIR))
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--memory-worker", choices=tuple(LABELS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("hf_lpwd").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_batches(args: argparse.Namespace, tokenizer: Any, count: int) -> list[dict[str, Any]]:
    """``count`` SST-2 training batches (sentences in file order from a fixed offset: reproducible)."""
    from transformers import DataCollatorWithPadding

    sentences, labels = load_glue("sst2", "train", data_dir(args.data_dir))
    collator = DataCollatorWithPadding(tokenizer, padding=args.padding, max_length=args.max_length)
    batches = []
    for i in range(count):
        lo = 1000 + i * args.batch_size
        enc = tokenizer(sentences[lo : lo + args.batch_size], truncation=True, max_length=args.max_length)
        rows = [{k: enc[k][j] for k in enc} | {"labels": labels[lo + j]} for j in range(args.batch_size)]
        batches.append(collator(rows))
    return batches


def build_trainer(kind: str, model: Any, args: argparse.Namespace, out: str, total_steps: int) -> Any:
    from transformers import Trainer, TrainingArguments

    from hf_lpwd import LPWDTrainer, LPWDTrainingArguments

    common = dict(
        output_dir=os.path.join(out, kind),
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        optim="adamw_torch_fused",
        lr_scheduler_type="linear",
        warmup_steps=2,
        max_steps=total_steps,
        per_device_train_batch_size=args.batch_size,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    if kind == "stock":
        trainer = Trainer(model=model, args=TrainingArguments(**common))
    else:
        trainer = LPWDTrainer(
            model=model,
            args=LPWDTrainingArguments(weight_decay_mode="lpwd", lpwd_log_layer_norms=False, **common),
        )
    trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)
    trainer.current_gradient_accumulation_steps = (
        1  # set by Trainer.train()'s loop for each accumulation group
    )
    return trainer


def step_fn(trainer: Any, clip: bool) -> Any:
    model = trainer.model

    def step(batch: dict[str, Any]) -> float:
        loss = trainer.training_step(model, batch)
        if clip:
            trainer.accelerator.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        return float(loss)

    return step


def optimizer_state_bytes(optimizer: Any) -> int:
    import torch

    return sum(
        v.nbytes for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)
    )


def load_model() -> Any:
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)


def rss_mib() -> float:
    """Current resident set size (MiB) from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------------------------- memory worker
def memory_worker(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    quiet()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    batches = make_batches(args, tokenizer, args.memory_steps)
    model = load_model()
    with tempfile.TemporaryDirectory(prefix="train_step_") as out:
        trainer = build_trainer(args.memory_worker, model, args, out, args.memory_steps + 10)
        step = step_fn(trainer, not args.no_clip)
        before = rss_mib()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for batch in batches:
            step(batch)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        print(
            json.dumps(
                {
                    "kind": args.memory_worker,
                    "peak_rss_mib": peak,
                    "rss_before_train_mib": before,
                    "peak_before_train_mib": peak_before,
                    "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
                }
            )
        )


def run_memory(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in LABELS}
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(args.memory_repeats):
        for kind in LABELS:
            cmd = (
                [
                    sys.executable,
                    str(HERE),
                    "--memory-worker",
                    kind,
                    "--memory-steps",
                    str(args.memory_steps),
                    "--threads",
                    str(args.threads),
                    "--batch-size",
                    str(args.batch_size),
                    "--max-length",
                    str(args.max_length),
                    "--padding",
                    args.padding,
                    "--weight-decay",
                    str(args.weight_decay),
                    "--lr",
                    str(args.lr),
                ]
                + (["--no-clip"] if args.no_clip else [])
                + (["--data-dir", args.data_dir] if args.data_dir else [])
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"memory worker {kind} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[kind].append(row)
            print(
                f"  memory {kind:>5}: peak RSS {row['peak_rss_mib']:.1f} MiB (RSS before training "
                f"{row['rss_before_train_mib']:.1f} MiB)",
                flush=True,
            )
    out: dict[str, Any] = {"runs": results}
    for kind, rows in results.items():
        out[kind] = {
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in rows),
            "growth_mib": statistics.median(r["peak_rss_mib"] - r["rss_before_train_mib"] for r in rows),
            "optimizer_state_bytes": rows[0]["optimizer_state_bytes"],
        }
    out["peak_ratio"] = out["lpwd"]["peak_rss_mib"] / out["stock"]["peak_rss_mib"]
    out["growth_ratio"] = out["lpwd"]["growth_mib"] / out["stock"]["growth_mib"]
    return out


# ---------------------------------------------------------------------------------------------- timing
def run_timing(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    n = args.warmup + args.steps
    batches = make_batches(args, tokenizer, n)
    tokens = [int(b["input_ids"].shape[1]) for b in batches]
    base = load_model()
    models = {"stock": base, "lpwd": copy.deepcopy(base)}
    times: dict[str, list[float]] = {k: [] for k in LABELS}
    losses: dict[str, list[float]] = {k: [] for k in LABELS}
    with tempfile.TemporaryDirectory(prefix="train_step_") as out:
        trainers = {k: build_trainer(k, models[k], args, out, n + 10) for k in LABELS}
        steps = {k: step_fn(t, not args.no_clip) for k, t in trainers.items()}
        print(
            f"{n} steps each ({args.warmup} warm-up), batch {args.batch_size}, padded lengths "
            f"{min(tokens)}..{max(tokens)} (median {statistics.median(tokens)}); load {load_average()}",
            flush=True,
        )
        load_start = load_average()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i, batch in enumerate(batches):
            # Alternate which trainer goes first so that neither always runs right after the other's step.
            order = ("stock", "lpwd") if i % 2 == 0 else ("lpwd", "stock")
            for kind in order:
                start = time.perf_counter()
                losses[kind].append(steps[kind](batch))
                elapsed = time.perf_counter() - start
                if i >= args.warmup:
                    times[kind].append(elapsed)
            if i >= args.warmup and (i - args.warmup) % 10 == 9:
                print(
                    f"  step {i + 1}/{n}: stock {times['stock'][-1] * 1e3:.0f} ms, lpwd "
                    f"{times['lpwd'][-1] * 1e3:.0f} ms; load {load_average()}",
                    flush=True,
                )
        cpu_share = (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * args.threads)
        state_bytes = {k: optimizer_state_bytes(t.optimizer) for k, t in trainers.items()}
        state_tensors = {k: sum(len(s) for s in t.optimizer.state.values()) for k, t in trainers.items()}
        params = sum(p.numel() for p in base.parameters())
    med = {k: statistics.median(v) for k, v in times.items()}
    pair_ratios = [a / b for a, b in zip(times["lpwd"], times["stock"], strict=True)]
    torch.set_num_threads(args.threads)
    return {
        "median_s": med,
        "mean_s": {k: statistics.fmean(v) for k, v in times.items()},
        "ratio_of_medians": med["lpwd"] / med["stock"],
        "median_pair_ratio": statistics.median(pair_ratios),
        "pair_ratio_quartiles": statistics.quantiles(pair_ratios, n=4)
        if len(pair_ratios) > 1
        else pair_ratios,
        "times_s": times,
        "first_losses": {k: v[:3] for k, v in losses.items()},
        "optimizer_state_bytes": state_bytes,
        "optimizer_state_tensors": state_tensors,
        "params": params,
        "tokens_per_batch_median": statistics.median(tokens),
        "load_start": load_start,
        "load_end": load_average(),
        "cpu_share": cpu_share,
    }


def run_optimizer_step(args: argparse.Namespace) -> str:
    script = HERE.parent / "optimizer_step.py"
    if not script.is_file():
        return "benchmarks/optimizer_step.py does not exist (yet): optimizer-only ratios not measured."
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(script), "--no-write", "--threads", str(args.threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    text = proc.stdout.strip()
    if proc.returncode != 0:
        text += f"\n(optimizer_step.py exited with {proc.returncode}: {proc.stderr.strip()[-1500:]})"
    return text


# ---------------------------------------------------------------------------------------------- report
def report(
    args: argparse.Namespace, timing: dict[str, Any], memory: dict[str, Any] | None, opt_text: str
) -> str:
    def verdict(ratio: float, target: float) -> str:
        return f"{'ok' if ratio <= target else 'MISSED'} (target ≤ {target:.2f})"

    med = timing["median_s"]
    sb = timing["optimizer_state_bytes"]
    lines = [
        "# Training step cost: LPWDTrainer (lpwd) vs the stock Trainer (AdamW fused)\n",
        "Written by `benchmarks/train_step.py` (see benchmarks/README.md) on "
        f"{time.strftime('%Y-%m-%d %H:%M')}. "
        f"{machine()}.\n",
        f"MiniLM-L6 ({timing['params'] / 1e6:.1f}M parameters), SST-2 batches of {args.batch_size}, "
        "truncated "
        ""
        "at "
        f"{args.max_length} tokens, padding={args.padding} (median padded length "
        f"{timing['tokens_per_batch_median']}), "
        f"λ={args.weight_decay:g}, lr={args.lr:g}, clipping "
        f"{'off' if args.no_clip else 'on (max_grad_norm 1.0)'}; "
        f"{args.steps} timed steps each after {args.warmup} warm-up, alternating A B A B.\n",
        f"Load average (1/5/15 min) at start {timing['load_start']}, at end {timing['load_end']}; this "
        "process got "
        f"{timing['cpu_share'] * 100:.0f}% of {args.threads} CPUs during the timed loop.\n",
        "| | Trainer (AdamW fused) | LPWDTrainer (lpwd) | ratio | verdict |",
        "|---|---|---|---|---|",
        f"| step time, median | {med['stock'] * 1e3:.1f} ms | {med['lpwd'] * 1e3:.1f} ms | "
        f"{timing['ratio_of_medians']:.3f} | {verdict(timing['ratio_of_medians'], TIME_TARGET)} |",
        "| step time, median of per-step ratios (quartiles "
        f"{', '.join(f'{q:.3f}' for q in timing['pair_ratio_quartiles'])}) "
        f"| | | {timing['median_pair_ratio']:.3f} | {verdict(timing['median_pair_ratio'], TIME_TARGET)} |",
    ]
    if memory is not None:
        lines += [
            f"| peak RSS (median of {args.memory_repeats} subprocesses, {args.memory_steps} steps) | "
            f"{memory['stock']['peak_rss_mib']:.1f} MiB | {memory['lpwd']['peak_rss_mib']:.1f} MiB | "
            f"{memory['peak_ratio']:.4f} | {verdict(memory['peak_ratio'], MEMORY_TARGET)} |",
            f"| RSS growth during training | {memory['stock']['growth_mib']:.1f} MiB | "
            f"{memory['lpwd']['growth_mib']:.1f} MiB "
            f"| {memory['growth_ratio']:.4f} | informational |",
        ]
    lines.append(
        f"| optimizer state | {sb['stock']:,} B ({timing['optimizer_state_tensors']['stock']} tensors) | "
        f"{sb['lpwd']:,} B ({timing['optimizer_state_tensors']['lpwd']} tensors) | "
        f"{sb['lpwd'] / sb['stock']:.4f} | "
        f"{'identical' if sb['lpwd'] == sb['stock'] else 'DIFFERENT'} |"
    )
    lines += [
        "",
        "## Optimizer step only (`benchmarks/optimizer_step.py --no-write`)",
        "",
        "```",
        opt_text,
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        memory_worker(args)
        return
    import torch

    torch.set_num_threads(args.threads)
    quiet()
    print(f"train_step: {machine()}; load {load_average()}", flush=True)
    timing = run_timing(args)
    print(
        f"time: stock {timing['median_s']['stock'] * 1e3:.1f} ms, lpwd "
        f"{timing['median_s']['lpwd'] * 1e3:.1f} "
        ""
        "ms, "
        f"ratio of medians {timing['ratio_of_medians']:.3f}, median per-step ratio "
        f"{timing['median_pair_ratio']:.3f}",
        flush=True,
    )
    memory = None if args.skip_memory else run_memory(args)
    opt_text = "skipped (--skip-optimizer-step)" if args.skip_optimizer_step else run_optimizer_step(args)
    text = report(args, timing, memory, opt_text)
    print(text)
    if not args.no_write:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_step.md").write_text(text, encoding="utf-8")
        payload = {
            "settings": {k: v for k, v in vars(args).items() if k != "memory_worker"},
            "machine": machine(),
            "timing": timing,
            "memory": memory,
            "optimizer_step_output": opt_text,
        }
        (out / "train_step.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        print(f"wrote {out / 'train_step.md'} and {out / 'train_step.json'}")


if __name__ == "__main__":
    main()
