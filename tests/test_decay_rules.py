"""The decay rules (lr coupling × timing, cautious decay, the timescale) against a float64 reference.

The reference writes the issue's equations literally: d_t = η_t·λ (coupled), (η_t/η̄)·λ (independent),
(η_t²/η̄)·λ (corrected), with η̄ each group's own base lr (LLRD groups of different lrs), over a warm-up +
cosine schedule from transformers; wd θ − η·u − d·θ, rwd (1 − d)(θ − η·u), pwd (1 − d)·θ before the gradient,
cautious θ − η·u − d·1[u⊙θ ≥ 0]⊙θ.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from hf_lpwd import LPWD
from hf_lpwd.optim import functional as F
from tests.reference import BETAS, EPS, AdamDirection, SGDMomentumDirection, after_update, before_forward

STEPS, WARMUP = 40, 6
PEAK = 0.04
LLRD = (1.0, 0.7, 0.49)  # lr multiplier per group: three different base lrs η̄
LAMBDAS = (0.0, 1.5, 4.0)


def schedule(step: int) -> float:
    """transformers' warm-up + cosine, written out (the reference must not call the code it checks)."""
    if step < WARMUP:
        return step / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def grad_of(theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (theta - target) + 0.3 * theta**3 + 0.1 * torch.sin(3 * theta)


BASES = {
    "adamw": ({"betas": BETAS, "eps": EPS, "fused": True}, AdamDirection),
    "adamw-foreach": ({"betas": BETAS, "eps": EPS, "foreach": True}, AdamDirection),
    "sgd": ({"momentum": 0.9}, SGDMomentumDirection),
}
RULE = {
    "coupled": lambda lam, eta, base: eta * lam,
    "independent": lambda lam, eta, base: eta / base * lam,
    "corrected": lambda lam, eta, base: eta**2 / base * lam,
}


def lambdas(coupling: str) -> tuple[float, ...]:
    """λ per group; independent's λ is a per-step decay at the peak (d = λ there), so it is ~PEAK× smaller."""
    return tuple(lam * PEAK for lam in LAMBDAS) if coupling == "independent" else LAMBDAS


def problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    thetas = [torch.randn(29, generator=gen, dtype=torch.float64) for _ in LAMBDAS]
    targets = [0.5 * torch.randn(29, generator=gen, dtype=torch.float64) for _ in LAMBDAS]
    return thetas, targets


def reference(mode: str, coupling: str, cautious: bool, direction, thetas, targets):
    thetas = [t.clone() for t in thetas]
    dirs = [direction() for _ in thetas]
    for step in range(STEPS):
        for i, (mult, lam) in enumerate(zip(LLRD, lambdas(coupling), strict=True)):
            base_lr = PEAK * mult
            eta = base_lr * schedule(step)
            d = RULE[coupling](lam, eta, base_lr)
            theta = before_forward(mode, thetas[i], d)
            u = dirs[i](grad_of(theta, targets[i]))
            thetas[i] = after_update(mode, theta, u, eta, d, cautious)
    return thetas


def run(mode: str, coupling: str, cautious: bool, base_kwargs: dict, thetas, targets):
    params = [torch.nn.Parameter(t.float()) for t in thetas]
    groups = [
        {"params": [p], "weight_decay": lam, "lr_multiplier": mult}
        for p, lam, mult in zip(params, lambdas(coupling), LLRD, strict=True)
    ]
    base = "sgd" if "momentum" in base_kwargs else "adamw"
    opt = LPWD(groups, base=base, mode=mode, lr=PEAK, lr_coupling=coupling, cautious=cautious, **base_kwargs)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    opt.set_lr_scheduler(sched, num_training_steps=STEPS)
    for _ in range(STEPS):
        opt.pre_step()
        for p, target in zip(params, targets, strict=True):
            p.grad = grad_of(p.detach(), target.float())
        opt.step()
        sched.step()
    return [p.detach().double() for p in params], opt


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
@pytest.mark.parametrize("coupling", list(RULE))
def test_each_coupling_and_timing_matches_float64(coupling: str, mode: str, base: str) -> None:
    base_kwargs, direction = BASES[base]
    thetas, targets = problem()
    got, opt = run(mode, coupling, False, base_kwargs, thetas, targets)
    want = reference(mode, coupling, False, direction, thetas, targets)
    for g, w in zip(got, want, strict=True):
        rel = ((g - w).norm() / w.norm()).item()
        assert rel < 1e-5, f"{coupling}/{mode}/{base}: relative error {rel:.2e}"
    if mode == "pwd":  # a warm-up from lr 0: every decay, the first included, was folded in
        assert opt.fold_corrections == 0


CAUTIOUS_CASES = [(base, "compiled") for base in BASES] + [("adamw", "eager"), ("adamw-foreach", "eager")]
"""On AdamW the compiled one-pass kernel (default) and the eager mask pass; SGD always takes the eager
path."""


@pytest.mark.parametrize("base, kernel", CAUTIOUS_CASES)
@pytest.mark.parametrize("coupling", list(RULE))
def test_cautious_wd_matches_float64(coupling: str, base: str, kernel: str) -> None:
    base_kwargs, direction = BASES[base]
    thetas, targets = problem(1)
    got, _ = run("wd", coupling, True, {**base_kwargs, "cautious_kernel": kernel}, thetas, targets)
    want = reference("wd", coupling, True, direction, thetas, targets)
    plain = reference("wd", coupling, False, direction, thetas, targets)
    for g, w in zip(got, want, strict=True):
        rel = ((g - w).norm() / w.norm()).item()
        assert rel < 1e-5, f"cautious {coupling}/{base}: relative error {rel:.2e}"
    # The mask matters on this problem: cautious is far from plain wd where λ > 0.
    assert ((want[2] - plain[2]).norm() / plain[2].norm()).item() > 1e-3


def test_couplings_differ_as_the_equations_say_at_zero_gradient() -> None:
    """Built at η̄ = 0.02, stepped at η = 0.01 (lr set by hand), zero gradient: the weight shrinks by (1 −
    d)^k."""
    base_lr, eta, k = 0.02, 0.01, 5
    lam = {
        "coupled": 3.0,
        "independent": 0.06,
        "corrected": 3.0,
    }  # independent's λ is the per-step decay at η̄
    expected = {
        "coupled": eta * 3.0,
        "independent": eta / base_lr * 0.06,
        "corrected": eta**2 / base_lr * 3.0,
    }
    for coupling, d in expected.items():
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        opt = LPWD([p], mode="wd", lr=base_lr, weight_decay=lam[coupling], lr_coupling=coupling)
        opt.param_groups[0]["lr"] = eta
        for _ in range(k):
            p.grad = torch.zeros_like(p)
            opt.step()
        torch.testing.assert_close(p.detach(), torch.full((4,), (1 - d) ** k, dtype=torch.float64))


def test_independent_decay_does_not_follow_the_peak_lr() -> None:
    """The same λ at two peak lrs: coupled shrinks 10× more at 10× the lr, independent the same."""
    shrink = {}
    for coupling in ("coupled", "independent"):
        for peak in (1e-3, 1e-2):
            p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
            opt = LPWD(
                [p],
                mode="pwd",
                lr=peak,
                weight_decay=0.1 if coupling == "independent" else 10.0,
                lr_coupling=coupling,
            )
            for _ in range(3):
                opt.pre_step()
                p.grad = torch.zeros_like(p)
                opt.step()
            opt.settle()
            shrink[coupling, peak] = -math.log(p.item()) / 3
    assert shrink["coupled", 1e-2] == pytest.approx(-math.log(1 - 0.1), rel=1e-12)
    assert shrink["coupled", 1e-3] == pytest.approx(-math.log(1 - 0.01), rel=1e-12)
    assert shrink["independent", 1e-2] == pytest.approx(shrink["independent", 1e-3], rel=1e-12)


@pytest.mark.parametrize("mode", ["wd", "rwd", "cautious"])
def test_plain_functions_are_one_optimizer_step_and_the_reference(mode: str) -> None:
    """F.wd_update / F.rwd_update / the cautious mask against the float64 reference, and against what one LPWD
    step does (SGD base without momentum, float64 weights: u = g exactly)."""
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(64, generator=gen, dtype=torch.float64)
    g = torch.randn(64, generator=gen, dtype=torch.float64)
    lr, lam = 0.1, 2.0
    if mode == "cautious":
        got = torch.where(F.cautious_mask(g, theta), theta - lr * g - lr * lam * theta, theta - lr * g)
        want = after_update("wd", theta, g, lr, lr * lam, cautious=True)
    else:
        got = {"wd": F.wd_update, "rwd": F.rwd_update}[mode](theta, g, lr, lr * lam)
        want = after_update(mode, theta, g, lr, lr * lam)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
    assert not torch.allclose(want, theta - lr * g)  # the decay term is there: λ matters
    p = torch.nn.Parameter(theta.clone())
    opt = LPWD(
        [p],
        base="sgd",
        mode="wd" if mode == "cautious" else mode,
        cautious=mode == "cautious",
        lr=lr,
        weight_decay=lam,
    )
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), want, rtol=1e-15, atol=1e-15)


def test_the_lr_couplings_and_rewrites_against_their_equations() -> None:
    """d_t per coupling and the timescale's λ written from the issue's equations; the AdamW rewrites (η', λ')
    give (1 − η'λ')θ − η'u = the timing's step, in float64 on random tensors."""
    assert F.decay_per_step("coupled", 2.0, 0.01, 0.02) == pytest.approx(0.01 * 2.0, rel=1e-15)
    assert F.decay_per_step("independent", 2.0, 0.01, 0.02) == pytest.approx(0.01 / 0.02 * 2.0, rel=1e-15)
    assert F.decay_per_step("corrected", 2.0, 0.01, 0.02) == pytest.approx(0.01**2 / 0.02 * 2.0, rel=1e-15)
    assert F.weight_decay_for_timescale("coupled", 500.0, 1e-3) == pytest.approx(1 / (1e-3 * 500), rel=1e-15)
    assert F.weight_decay_for_timescale("independent", 500.0, 1e-3) == pytest.approx(1 / 500, rel=1e-15)
    gen = torch.Generator().manual_seed(4)
    theta, u = (
        torch.randn(16, generator=gen, dtype=torch.float64),
        torch.randn(16, generator=gen, dtype=torch.float64),
    )
    lr_, lam_ = F.rwd_on_adamw(0.1, 0.3)
    torch.testing.assert_close((1 - lr_ * lam_) * theta - lr_ * u, after_update("rwd", theta, u, 0.1, 0.03))
    lr_, lam_ = F.pwd_fold_on_adamw(0.1, 0.97)
    torch.testing.assert_close(
        (1 - lr_ * lam_) * theta - lr_ * u, 0.97 * after_update("pwd", theta, u, 0.1, 0.03)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"lr_coupling": "sqrt"},
            r"lr_coupling='sqrt' is not one of \['coupled', 'independent', 'corrected'\]",
        ),
        (
            {"mode": "pwd", "cautious": True},
            r"cautious=true needs the wd timing.*pwd decays before the forward",
        ),
        ({"mode": "rwd", "cautious": True}, r"cautious=true needs the wd timing.*rwd decays"),
        ({"mode": "wd", "cautious": True, "base": torch.optim.RMSprop}, r"RMSprop is not one of them"),
        ({"mode": "wd", "lr_coupling": "independent", "lr": 0.0}, r"base lr \(initial_lr\) 0.0.*lr > 0"),
    ],
)
def test_bad_rule_settings_are_refused_naming_the_setting(kwargs: dict, match: str) -> None:
    p = torch.nn.Parameter(torch.ones(2))
    kwargs = {"lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        LPWD([p], weight_decay=0.1, **kwargs)
