"""LPWD on a CUDA device: step costs, the rounding's cost, a Trainer run, and CPU/CUDA agreement.

(a) Optimizer step, ``LPWD`` (``pre_step()`` + ``step()``) in modes pwd / rwd / wd, pwd independent and
    cautious wd against torch's fused AdamW, on ≥ 1B fp32 parameters (Llama-shaped 2-D tensors) and on the
    same shapes in bf16 (LPWD's bf16 groups take the rounded whole step).  Both optimizers own separate
    parameters and states and share the fixed gradients; they alternate A B, B A, ... after a warm-up, each
    call timed with CUDA events; medians.
(b) The bf16 stochastic-rounding pass (``hf_lpwd.rounding.scale_``) per 1M parameters against a plain fused
    bf16 AdamW step per 1M parameters (same alternation).
(c) A ~100M-parameter Llama built from a config (random init, random tokens), bf16 mixed precision, 30 steps
    of ``LPWDTrainer`` (lpwd) against the stock ``Trainer`` (``adamw_torch_fused``): median step time
    (CUDA-synchronised callback timestamps, first 5 steps dropped, runs alternated twice) and
    ``torch.cuda.max_memory_allocated``.
(d) The same tiny Llama trained 10 steps with lpwd by ``LPWDTrainer`` on CPU and on CUDA (fp32, TF32 off):
    final parameters equal within rtol=1e-4, atol=1e-5 (cuBLAS and MKL sum in other orders; Adam maps
    gradient differences of ~1e-6 relative to update differences of the same order, times lr=3e-3).
(e) The rounded bf16 step (issue 27: update + decay in fp32, one stochastic rounding,
    ``hf_lpwd.optim.rounded_step``) on ≥ 1B bf16 parameters, compiled and eager, against torch's fused AdamW
    on the same bf16 weights, and the optimizer state bytes per weight.
(f) fp32 decay toward θ₀ on CUDA (wd, rwd, pwd, cautious wd, and cautious wd toward 0: one compiled pass
    per call, ``rounded_step.ONE_PASS_DEVICES``; SPD: its compiled reductions, the selection read once)
    against the same run on the CPU (the base's step, then a lerp; cautious: the CPU's compiled step): 30
    steps of a quadratic whose gradient depends on θ, warm-up + cosine, worst relative error of a tensor.

Writes ``benchmarks/results/gpu.md``.  Without a CUDA device it says so and exits 2; ``--cpu-half`` runs the
CPU half of (d) alone (what can be checked on a machine without one)::

    PYTHONPATH=. HF_HUB_OFFLINE=1 python -m benchmarks.gpu_check [--parts abcde] [--params-billions 1.0]
    PYTHONPATH=. HF_HUB_OFFLINE=1 python -m benchmarks.gpu_check --cpu-half
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, machine
from hf_lpwd import LPWD  # noqa: E402

LR, WEIGHT_DECAY, WARMUP = 1e-3, 0.1, 3
RESULTS = RESULTS_DIR / "gpu.md"
# ``--smoke`` runs (a), (b) and (e) on the CPU at toy widths, so the script is checked before device time is
# spent on it; every figure of a smoke run is meaningless.
DEVICE = "cuda"
WIDTHS = {"hidden": 4096, "inter": 11008}
D_RTOL, D_ATOL = 1e-4, 1e-5


# --------------------------------------------------------------------------- timing
def cuda_alternate(
    a: Callable[[], object], b: Callable[[], object], steps: int
) -> tuple[float, float, float]:
    """Median ms of ``a`` and ``b`` (CUDA events around each call) and the median paired ratio a_i / b_i."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(WARMUP + steps):
        order = ((a, times[0]), (b, times[1])) if i % 2 == 0 else ((b, times[1]), (a, times[0]))
        for fn, out in order:
            if DEVICE == "cpu":
                t0 = time.perf_counter()
                fn()
                elapsed = (time.perf_counter() - t0) * 1e3
            else:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                elapsed = start.elapsed_time(end)
            if i >= WARMUP:
                out.append(elapsed)
    paired = statistics.median(x / y for x, y in zip(times[0], times[1], strict=True))
    return statistics.median(times[0]), statistics.median(times[1]), paired


def llama_shapes(params_billions: float) -> list[tuple[int, ...]]:
    """2-D/1-D tensors of Llama decoder layers (7B-like widths), as many layers as reach
    ``params_billions``."""
    hidden, inter = WIDTHS["hidden"], WIDTHS["inter"]
    layer = [(hidden, hidden)] * 4 + [(inter, hidden), (inter, hidden), (hidden, inter), (hidden,), (hidden,)]
    per_layer = sum(torch.Size(s).numel() for s in layer)
    layers = max(1, round(params_billions * 1e9 / per_layer))
    return layer * layers


def empty_cache() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def make_params(shapes, grads, dtype, seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    params = []
    for shape, grad in zip(shapes, grads, strict=True):
        p = torch.nn.Parameter(torch.randn(shape, device=DEVICE, generator=gen, dtype=dtype) * 0.02)
        p.grad = grad
        params.append(p)
    return params


def bf16_lpwd(shapes: list[tuple[int, ...]], grads: list[torch.Tensor]) -> LPWD:
    """LPWD wd on fresh bf16 weights of ``shapes`` (fused AdamW base): the rounded whole step."""
    params = make_params(shapes, grads, torch.bfloat16, 1)
    return LPWD(params, base="adamw", mode="wd", lr=LR, weight_decay=WEIGHT_DECAY, fused=True)


def lpwd_step(opt: LPWD) -> Callable[[], None]:
    def run() -> None:
        opt.pre_step()
        opt.step()

    return run


def part_a(params_billions: float, steps: int) -> list[str]:
    shapes = llama_shapes(params_billions)
    numel = sum(torch.Size(s).numel() for s in shapes)
    lines = [
        f"### (a) Optimizer step vs fused AdamW, {numel / 1e9:.2f}B parameters in {len(shapes)} tensors",
        "",
        "| dtype | mode | LPWD ms | fused AdamW ms | ratio of medians | median paired ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        grads = [torch.randn(s, device=DEVICE, generator=gen, dtype=dtype) * 1e-3 for s in shapes]
        for mode, rule in (
            ("wd", {}),
            ("rwd", {}),
            ("pwd", {}),
            ("pwd", {"lr_coupling": "independent"}),
            ("wd", {"cautious": True}),
            ("wd", {"decay_target": "init"}),
            ("rwd", {"decay_target": "init", "spd": True}),
        ):
            if rule.get("spd") and dtype != torch.float32:
                continue
            lam = WEIGHT_DECAY * LR if rule.get("lr_coupling") == "independent" else WEIGHT_DECAY
            lam = 1.0 if rule.get("spd") else lam  # SPD's λ is a fraction of the projection, not lr-coupled
            ours = LPWD(
                make_params(shapes, grads, dtype, 1),
                base="adamw",
                mode=mode,
                lr=LR,
                weight_decay=lam,
                fused=True,
                **rule,
            )
            label = " ".join([mode, *(f"{k}={v}" if v is not True else k for k, v in rule.items())])
            ref = torch.optim.AdamW(
                make_params(shapes, grads, dtype, 1), lr=LR, weight_decay=WEIGHT_DECAY, fused=True
            )
            t_ours, t_ref, paired = cuda_alternate(lpwd_step(ours), ref.step, steps)
            lines.append(
                f"| {str(dtype).removeprefix('torch.')} | {label} | {t_ours:.2f} | {t_ref:.2f} | "
                f"{t_ours / t_ref:.3f} | {paired:.3f} |"
            )
            print(lines[-1], flush=True)
            del ours, ref
            gc.collect()
            empty_cache()
        del grads
        gc.collect()
        empty_cache()
    return lines


def part_b(steps: int, millions: int = 256) -> list[str]:
    from hf_lpwd.rounding import scale_

    width = WIDTHS["hidden"]
    shapes = [(width, width)] * max(1, round(millions * 1e6 / width**2))
    numel = sum(torch.Size(s).numel() for s in shapes)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    grads = [torch.randn(s, device=DEVICE, generator=gen, dtype=torch.bfloat16) * 1e-3 for s in shapes]
    params = make_params(shapes, grads, torch.bfloat16, 2)
    ref = torch.optim.AdamW(
        make_params(shapes, grads, torch.bfloat16, 3), lr=LR, weight_decay=WEIGHT_DECAY, fused=True
    )
    t_sr, t_adam, paired = cuda_alternate(
        lambda: scale_(params, 1.0 - LR * WEIGHT_DECAY, stochastic=True), ref.step, steps
    )
    per = numel / 1e6
    lines = [
        "### (b) bf16 stochastic-rounding pass vs a fused bf16 AdamW step",
        "",
        f"{numel / 1e6:.0f}M bf16 parameters: `scale_(..., stochastic=True)` {t_sr / per * 1e3:.2f} µs per "
        "1M "
        ""
        ""
        f"parameters, fused AdamW step {t_adam / per * 1e3:.2f} µs per 1M; ratio {t_sr / t_adam:.3f} "
        f"(median paired {paired:.3f}).",
    ]
    print(lines[-1], flush=True)
    return lines


def part_e(params_billions: float, steps: int) -> list[str]:
    shapes = llama_shapes(params_billions)
    numel = sum(torch.Size(s).numel() for s in shapes)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    grads = [torch.randn(s, device=DEVICE, generator=gen, dtype=torch.bfloat16) * 1e-3 for s in shapes]
    ref = torch.optim.AdamW(
        make_params(shapes, grads, torch.bfloat16, 1), lr=LR, weight_decay=WEIGHT_DECAY, fused=True
    )
    lines = [
        f"### (e) The rounded bf16 step vs fused AdamW on the same bf16 weights, {numel / 1e9:.2f}B "
        "parameters",
        "",
        "| rounded step | LPWD ms | fused AdamW ms | median paired ratio | state bytes / weight |",
        "|---|---:|---:|---:|---:|",
    ]
    for kernel in ("compiled", "eager"):
        ours = bf16_lpwd(shapes, grads)
        ours.rounding_kernel = kernel
        t_ours, t_ref, paired = cuda_alternate(
            lpwd_step(ours), ref.step, steps if kernel == "compiled" else 3
        )
        state = sum(
            t.numel() * t.element_size()
            for st in ours.state.values()
            for t in st.values()
            if torch.is_tensor(t)
        )
        lines.append(f"| {kernel} | {t_ours:.2f} | {t_ref:.2f} | {paired:.3f} | {state / numel:.1f} |")
        print(lines[-1], flush=True)
        del ours
        gc.collect()
        empty_cache()
    return lines


# --------------------------------------------------------------------------- Trainer runs
def llama_100m():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, size: int, length: int, vocab: int, seed: int = 0) -> None:
        self.ids = torch.randint(0, vocab, (size, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.ids[i],
        }


def trainer_run(kind: str, steps: int, out: str) -> tuple[list[float], int, int]:
    """Per-step seconds, peak allocated bytes and parameter count of one 30-step run."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_lpwd import LPWDTrainer, LPWDTrainingArguments

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, *args, **kwargs):
            torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    common = dict(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=3e-4,
        weight_decay=0.1,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        bf16=True,
        optim="adamw_torch_fused",
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    model = llama_100m().cuda()
    numel = sum(p.numel() for p in model.parameters())
    timer = StepTimer()
    data = RandomTokens(8 * steps, 512, model.config.vocab_size)
    if kind == "lpwd":
        trainer = LPWDTrainer(
            model=model,
            args=LPWDTrainingArguments(weight_decay_mode="lpwd", **common),
            train_dataset=data,
            callbacks=[timer],
        )
    else:
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[timer]
        )
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated()
    del trainer, model
    gc.collect()
    empty_cache()
    return timer.times, peak, numel


def part_c(steps: int = 30, rounds: int = 2, skip: int = 5) -> list[str]:
    times: dict[str, list[float]] = {"stock": [], "lpwd": []}
    peaks: dict[str, list[int]] = {"stock": [], "lpwd": []}
    numel = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for kind in ("stock", "lpwd") if r % 2 == 0 else ("lpwd", "stock"):
                t, peak, numel = trainer_run(kind, steps, tmp)
                times[kind] += t[skip:]
                peaks[kind].append(peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(v) for k, v in peaks.items()}
    lines = [
        f"### (c) bf16 Trainer run, Llama {numel / 1e6:.0f}M parameters (random init), batch 8 × 512 tokens, "
        f"{steps} steps × {rounds} runs each (first {skip} steps of each run dropped)",
        "",
        "| trainer | median step ms | max_memory_allocated GiB |",
        "|---|---:|---:|",
        f"| Trainer (adamw_torch_fused) | {med['stock'] * 1e3:.1f} | {peak['stock'] / 2**30:.2f} |",
        f"| LPWDTrainer (lpwd) | {med['lpwd'] * 1e3:.1f} | {peak['lpwd'] / 2**30:.2f} |",
        "",
        f"Step time ratio {med['lpwd'] / med['stock']:.3f}, memory ratio {peak['lpwd'] / peak['stock']:.3f}.",
    ]
    print("\n".join(lines), flush=True)
    return lines


def tiny_run(device: str, steps: int = 10) -> dict[str, torch.Tensor]:
    """The tiny Llama of tests/scripts/train_distributed.py, lpwd, ``steps`` steps on ``device``; final
    params."""
    from transformers import LlamaForCausalLM, set_seed

    from hf_lpwd import LPWDTrainer, LPWDTrainingArguments
    from tests.scripts.train_distributed import tiny_config
    from tests.tiny import TokenDataset

    set_seed(0)
    model = LlamaForCausalLM(tiny_config())
    with tempfile.TemporaryDirectory() as tmp:
        args = LPWDTrainingArguments(
            output_dir=tmp,
            weight_decay_mode="lpwd",
            weight_decay=0.5,
            learning_rate=3e-3,
            max_steps=steps,
            per_device_train_batch_size=8,
            lr_scheduler_type="linear",
            warmup_steps=1,
            max_grad_norm=1.0,
            save_strategy="no",
            report_to="none",
            use_cpu=device == "cpu",
            disable_tqdm=True,
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            lpwd_log_layer_norms=False,
        )
        trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(128, seed=1, causal_lm=True))
        trainer.train()
        assert next(trainer.model.parameters()).device.type == device, "trained on the wrong device"
        return {n: p.detach().float().cpu().clone() for n, p in trainer.model.named_parameters()}


F_CASES: list[tuple[str, dict, bool]] = [
    ("wd", {"mode": "wd"}, True),
    ("rwd", {"mode": "rwd"}, True),
    ("pwd", {"mode": "pwd"}, True),
    ("wd cautious", {"mode": "wd", "cautious": True}, False),
    ("wd cautious, toward 0", {"mode": "wd", "cautious": True, "decay_target": "zero"}, False),
    ("rwd SPD λ=1", {"mode": "rwd", "spd": True, "weight_decay": 1.0}, True),
]
"""(label, LPWD settings, held to F_RTOL).  Cautious decay is not: its mask 1[u ⊙ (θ − θ₀) ≥ 0] flips where
u is within rounding of 0 (m ≈ 0), and each flip moves that weight by d·(θ − θ₀), so two correct
implementations part there (on the CPU, the one pass against the two: ~1e-4 in one tensor of seven)."""
F_RTOL = 1e-5


def toward_init_run(device: str, rule: dict, steps: int = 30) -> tuple[list[torch.Tensor], LPWD]:
    """LPWD toward θ₀ on ``device`` from fixed weights: g = 0.5·(θ − target) + a fixed noise per step."""
    from transformers import get_cosine_schedule_with_warmup

    shapes = [(256, 512), (256, 512), (512,), (1024, 256), (96,), (96,), (96,)]
    gen = torch.Generator().manual_seed(0)
    starts = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    targets = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    noise = [[torch.randn(s, generator=gen) * 1e-3 for s in shapes] for _ in range(steps)]
    params = [torch.nn.Parameter(t.to(device)) for t in starts]
    kwargs = {"weight_decay": 30.0, "decay_target": "init", **rule}
    opt = LPWD(params, base="adamw", lr=3e-3, fused=True, **kwargs)
    sched = get_cosine_schedule_with_warmup(opt, 3, steps)
    opt.set_lr_scheduler(sched, num_training_steps=steps)
    for step in range(steps):
        opt.pre_step()
        for p, target, n in zip(params, targets, noise[step], strict=True):
            p.grad = 0.5 * (p.detach() - target.to(device)) + n.to(device)
        opt.step()
        sched.step()
    return [p.detach().cpu().double() for p in params], opt


def part_f(steps: int = 30) -> list[str]:
    from hf_lpwd.optim import rounded_step

    lines = [
        f"### (f) fp32 toward θ₀ on {DEVICE} vs the CPU, {steps} steps",
        "",
        f"Tolerance: worst ‖Δ‖/‖θ_CPU‖ of a tensor < {F_RTOL:g}.",
        "",
        "| rule | worst relative error | weights off by > 1e-6 | one pass taken | within |",
        "|---|---:|---:|---|---|",
    ]
    devices = rounded_step.ONE_PASS_DEVICES
    for label, rule, held in F_CASES:
        cpu, _ = toward_init_run("cpu", rule, steps)
        if DEVICE == "cpu":  # a smoke run: the one pass forced onto the CPU, against the CPU's two passes
            rounded_step.ONE_PASS_DEVICES = (*devices, "cpu")
        try:
            got, opt = toward_init_run(DEVICE, rule, steps)
            first = opt.param_groups[0]["params"][0]
            taken = rounded_step.one_pass_supported(first) and not rule.get("spd")
        finally:
            rounded_step.ONE_PASS_DEVICES = devices
        worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(got, cpu, strict=True))
        off = sum(int(((a - b).abs() > 1e-6).sum()) for a, b in zip(got, cpu, strict=True))
        total = sum(a.numel() for a in cpu)
        within = ("yes" if worst < F_RTOL else "NO") if held else "not held (mask flips)"
        lines.append(f"| {label} | {worst:.2e} | {off} of {total} | {'yes' if taken else 'no'} | {within} |")
        print(lines[-1], flush=True)
    return lines


def part_d(steps: int = 10) -> list[str]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu, cuda = tiny_run("cpu", steps), tiny_run("cuda", steps)
    worst_abs = max((cpu[n] - cuda[n]).abs().max().item() for n in cpu)
    worst_rel = max(((cpu[n] - cuda[n]).abs() / cpu[n].abs().clamp_min(1e-3)).max().item() for n in cpu)
    ok = all(torch.allclose(cuda[n], cpu[n], rtol=D_RTOL, atol=D_ATOL) for n in cpu)
    lines = [
        f"### (d) Tiny Llama, lpwd, {steps} steps: CUDA vs CPU",
        "",
        f"Max |Δ| {worst_abs:.3g}, max |Δ|/max(|θ|, 1e-3) {worst_rel:.3g}; within rtol={D_RTOL:g}, "
        f"atol={D_ATOL:g}: {'yes' if ok else 'NO'}.",
    ]
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="abcdef", help="which of a-f to run (default all)")
    parser.add_argument("--params-billions", type=float, default=1.0, help="(a): model size, default 1.0")
    parser.add_argument("--steps", type=int, default=20, help="(a), (b): timed calls per optimizer")
    parser.add_argument(
        "--cpu-half", action="store_true", help="run only the CPU half of (d) (no CUDA needed)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run (a), (b), (e) on the CPU at toy widths: checks the script, measures nothing",
    )
    parser.add_argument("--out", default=str(RESULTS), help=f"the report (default {RESULTS})")
    parser.add_argument("--no-write", action="store_true", help="write no report")
    args = parser.parse_args()
    if args.cpu_half:
        params = tiny_run("cpu")
        print(
            f"(d) CPU half: 10 lpwd steps, {sum(p.numel() for p in params.values())} parameters, "
            f"all finite: {all(torch.isfinite(p).all() for p in params.values())}"
        )
        return
    if args.smoke:
        DEVICE = "cpu"
        WIDTHS.update(hidden=128, inter=344)
        if set(args.parts) - set("abef"):
            parser.error("--smoke runs only parts a, b, e and f (c and d need CUDA)")
    elif not torch.cuda.is_available():
        print(
            "gpu_check.py needs a CUDA device and torch.cuda.is_available() is False; nothing was measured. "
            "(--cpu-half runs the CPU half of (d), --smoke checks (a), (b), (e) on the CPU.)",
            file=sys.stderr,
        )
        sys.exit(2)
    card = "CPU smoke run (no figure means anything)" if args.smoke else torch.cuda.get_device_name()
    print(f"{card}; {machine()}", flush=True)
    millions = 0.1 if args.smoke else 256
    runners = {
        "a": lambda: part_a(args.params_billions, args.steps),
        "b": lambda: part_b(args.steps, millions),
        "c": part_c,
        "d": part_d,
        "e": lambda: part_e(args.params_billions, args.steps),
        "f": part_f,
    }
    command = "PYTHONPATH=. HF_HUB_OFFLINE=1 python -m benchmarks.gpu_check " + " ".join(sys.argv[1:])
    cuda = "" if args.smoke else f", CUDA {torch.version.cuda}"
    header = (
        f"# LPWD on a GPU ({card})\n\nMachine: {card}{cuda}; {machine()}; torch {torch.__version__}.  \n"
        f"Command: `{command.strip()}`\n\n"
    )
    sections: list[str] = []
    failed = False
    for part in args.parts:
        # One part's failure (an API the device's library versions lack, say) is reported in its section
        # and the other parts still run: device time is scarce.
        try:
            sections.append("\n".join(runners[part]()))
        except Exception:  # noqa: BLE001 - reported, then the exit status says so
            failed = True
            sections.append(f"### ({part}) failed\n\n```\n{traceback.format_exc()}```")
            print(sections[-1], file=sys.stderr, flush=True)
        if not args.no_write:  # after every part, so a run stopped at its time limit keeps what it measured
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(header + "\n\n".join(sections) + "\n", encoding="utf-8")
    if not args.no_write:
        print(f"wrote {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
