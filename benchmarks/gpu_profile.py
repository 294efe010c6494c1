"""Where a CUDA optimizer step's time goes: the rounded bf16 step and the one-pass step toward θ₀.

(1) The kernel alone: one (11008, 4096) tensor stepped by the compiled Adam kernel of
    ``hf_lpwd.optim.rounded_step`` (bf16 weights rounded stochastically; fp32 weights toward θ₀, one pass)
    against torch's fused AdamW on the same tensor (plus one ``lerp_`` toward θ₀ for the fp32 case, what LPWD
    runs today), CUDA events, alternated, medians, and the bandwidth each reaches (bytes each must move).
(2) ``LPWD.step`` on ~1B parameters under ``torch.profiler``: bf16 toward 0 and toward θ₀ (the rounded
    step), fp32 toward θ₀ (the one pass) and fp32 SPD toward θ₀: the CUDA kernels by total time, and the
    host-side waits (``aten::item``, ``cudaStreamSynchronize``, copies) per step.

Diagnostic, not a claim: the claims are ``gpu_check.py``'s ratios.  Needs a CUDA device::

    PYTHONPATH=. python -m benchmarks.gpu_profile [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import LR, WEIGHT_DECAY, cuda_alternate, llama_shapes
from hf_lpwd import LPWD
from hf_lpwd.optim.rounded_step import _ADAM

SHAPE = [11008, 4096]
STEPS = 20


def _kernel_args(theta, grad, m, v, key, anchor=None):
    scalars = [
        torch.tensor(x, dtype=torch.float32, device=gpu_check.DEVICE)
        for x in (1.0, LR / (1 - 0.9), 0.1, 0.999, 0.001, (1 - 0.999) ** 0.5, 1e-8, 1 - LR * 0.1, 1.0)
    ]
    return ([theta], [grad], [m], [v], [key], *scalars, None, None if anchor is None else [anchor])


def _call(args):
    rounded, exact = _ADAM  # bf16 weights: the rounded kernel; fp32: the exact one (noise unused)
    kernel = rounded if args[0][0].dtype == torch.bfloat16 else exact
    return lambda: kernel(*args)


def _torch_step(adamw, ref, anchor):
    """torch's fused AdamW step, then (toward θ₀) the lerp LPWD runs after it today."""

    def run() -> None:
        adamw.step()
        if anchor is not None:
            ref.data.lerp_(anchor, 1e-4)

    return run


def kernel_alone() -> list[str]:
    gen = torch.Generator(device=gpu_check.DEVICE).manual_seed(0)
    n = SHAPE[0] * SHAPE[1]
    lines = [
        "## (1) The kernel alone, one 11008 × 4096 tensor",
        "",
        "| case | ours ms | torch ms | ratio | ours GB/s | torch GB/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    key = torch.tensor(7, dtype=torch.int32, device=gpu_check.DEVICE)
    for dtype, anchored in ((torch.bfloat16, False), (torch.float32, True), (torch.float32, False)):
        grad = torch.randn(n, device=gpu_check.DEVICE, generator=gen, dtype=dtype) * 1e-3
        theta = (torch.randn(n, device=gpu_check.DEVICE, generator=gen) * 0.02).to(dtype)
        anchor = theta.clone() if anchored else None
        m = torch.zeros(n, device=gpu_check.DEVICE)
        v = torch.zeros(n, device=gpu_check.DEVICE)
        args = _kernel_args(theta, grad, m, v, key, anchor)
        ref = torch.nn.Parameter(theta.clone())
        ref.grad = grad
        ref_anchor = theta.clone()
        adamw = torch.optim.AdamW([ref], lr=LR, weight_decay=0.0 if anchored else WEIGHT_DECAY, fused=True)

        ours = _call(args)
        theirs = _torch_step(adamw, ref, ref_anchor if anchored else None)
        t_ours, t_ref, paired = cuda_alternate(ours, theirs, STEPS)
        size = torch.tensor([], dtype=dtype).element_size()
        ours_bytes = n * (3 * size + 16 + (size if anchored else 0))  # θ r/w, g; m, v r/w (fp32); θ₀
        ref_bytes = n * (3 * size + 4 * size + (3 * size if anchored else 0))  # fused: moments in θ's dtype
        name = f"{str(dtype).removeprefix('torch.')}{' toward θ₀' if anchored else ''}"
        lines.append(
            f"| {name} | {t_ours:.3f} | {t_ref:.3f} | {paired:.3f} | {ours_bytes / t_ours / 1e6:.0f} | "
            f"{ref_bytes / t_ref / 1e6:.0f} |"
        )
        print(lines[-1], flush=True)
    return lines


PROFILED = {
    "bf16 wd": (torch.bfloat16, {}),
    "bf16 wd toward θ₀": (torch.bfloat16, {"decay_target": "init"}),
    "fp32 wd toward θ₀": (torch.float32, {"decay_target": "init"}),
    "fp32 rwd SPD toward θ₀": (torch.float32, {"mode": "rwd", "spd": True, "decay_target": "init"}),
}


def profiled_step(label: str, billions: float) -> list[str]:
    dtype, rule = PROFILED[label]
    shapes = llama_shapes(billions)
    gen = torch.Generator(device=gpu_check.DEVICE).manual_seed(0)
    grads = [torch.randn(s, device=gpu_check.DEVICE, generator=gen, dtype=dtype) * 1e-3 for s in shapes]
    params = gpu_check.make_params(shapes, grads, dtype, 1)
    settings = {"mode": "wd", "weight_decay": 1.0 if rule.get("spd") else WEIGHT_DECAY, **rule}
    opt = LPWD(params, base="adamw", lr=LR, fused=True, **settings)
    for _ in range(3):
        opt.pre_step()
        opt.step()
    cuda = gpu_check.DEVICE == "cuda"
    if cuda:
        torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, *([torch.profiler.ProfilerActivity.CUDA] if cuda else [])]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            opt.pre_step()
            opt.step()
        if cuda:
            torch.cuda.synchronize()
    order = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=order, row_limit=15, max_name_column_width=70)
    waits = [
        f"{e.key}: {e.count / 3:.0f} per step, {e.cpu_time_total / 3 / 1e3:.2f} ms host per step"
        for e in prof.key_averages()
        if any(w in e.key for w in ("item", "Synchronize", "Memcpy", "local_scalar", "copy_", "cat"))
    ]
    del opt, params, grads
    gpu_check.empty_cache()
    return [f"## (2) LPWD.step, {label}, 1B parameters, 3 steps profiled", "", "```", table, *waits, "```"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="write the report here too")
    parser.add_argument(
        "--smoke", action="store_true", help="(1) on the CPU at a toy size: checks the script"
    )
    args = parser.parse_args()
    if args.smoke:
        gpu_check.DEVICE = "cpu"
        gpu_check.WIDTHS.update(hidden=128, inter=344)
        SHAPE[:] = [64, 64]
    elif not torch.cuda.is_available():
        sys.exit("gpu_profile.py needs a CUDA device")
    card = "CPU smoke" if args.smoke else torch.cuda.get_device_name()
    lines = [f"# {card}, torch {torch.__version__}", "", *kernel_alone(), ""]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    for label in PROFILED:  # a smoke run profiles the CPU at toy widths: checks the script only
        lines += profiled_step(label, 0.001 if args.smoke else 1.0)
        print("\n".join(lines[-5:]), flush=True)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
