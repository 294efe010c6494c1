"""LPWD's decay modes against a float64 reference of the equations, and its contract as an optimizer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hf_lpwd import LPWD
from tests.reference import BETAS, EPS, AdamDirection, SGDMomentumDirection, after_update, before_forward

STEPS = 60
LAMBDAS = (0.0, 0.5, 3.0)  # per group: no decay, moderate, large (η·λ up to 0.15)


def lr_at(step: int) -> float:
    """Warm-up then cosine decay with a bump: η changes at every step, so a stale η would show."""
    warm = min(1.0, (step + 1) / 10)
    return 0.05 * warm * (0.55 + 0.45 * math.cos(math.pi * step / STEPS)) * (1.0 + 0.2 * (step % 3 == 0))


def grad_of(theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∇ of a loss whose gradient depends on θ, so gradients at decayed vs. undecayed θ differ."""
    return (theta - target) + 0.3 * theta**3 + 0.1 * torch.sin(3 * theta)


def make_problem(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    thetas = [torch.randn(37, generator=gen, dtype=torch.float64) for _ in LAMBDAS]
    targets = [torch.randn(37, generator=gen, dtype=torch.float64) * 0.5 for _ in LAMBDAS]
    return thetas, targets


# --------------------------------------------------------------------------- float64 reference
def reference(mode: str, direction_factory, thetas, targets) -> list[torch.Tensor]:
    """The brief's equations, literally, in float64 (``tests/reference.py``)."""
    thetas = [t.clone() for t in thetas]
    directions = [direction_factory() for _ in thetas]
    for step in range(STEPS):
        eta = lr_at(step)
        for i, lam in enumerate(LAMBDAS):
            theta = before_forward(mode, thetas[i], eta * lam)
            u = directions[i](grad_of(theta, targets[i]))
            thetas[i] = after_update(mode, theta, u, eta, eta * lam)
    return thetas


SCHEDULES = ("told", "untold", "by_hand")
"""How the plain loop drives η: a LambdaLR LPWD is told about (the fold predicts every step), one it
is not told about (the fold predicts the current lr, pre_step() corrects every change), or the
group's lr written by hand before each step."""


def run_lpwd(
    mode: str, base, base_kwargs: dict, thetas, targets, dtype=torch.float32, schedule: str = "told"
) -> tuple[list[torch.Tensor], LPWD]:
    params = [torch.nn.Parameter(t.to(dtype)) for t in thetas]
    groups = [{"params": [p], "weight_decay": lam} for p, lam in zip(params, LAMBDAS, strict=True)]
    opt = LPWD(groups, base=base, mode=mode, lr=lr_at(0), **base_kwargs)
    sched = None
    if schedule != "by_hand":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s) / lr_at(0))
    if schedule == "told":
        opt.set_lr_scheduler(sched, num_training_steps=STEPS)
    for step in range(STEPS):
        if schedule == "by_hand":
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        opt.pre_step()
        for p, target in zip(params, targets, strict=True):
            p.grad = grad_of(p.detach(), target.to(dtype))
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()
    if schedule != "told":
        opt.settle()  # the loop gave no num_training_steps: drop the decay folded in for step STEPS
    return [p.detach().double() for p in params], opt


ADAM_KW = {"betas": BETAS, "eps": EPS}
BASES = {
    "adamw": ("adamw", {**ADAM_KW, "foreach": False}, AdamDirection),
    "adamw-foreach": ("adamw", {**ADAM_KW, "foreach": True}, AdamDirection),
    "adamw-fused": ("adamw", {**ADAM_KW, "fused": True}, AdamDirection),
    "sgd-momentum": ("sgd", {"momentum": 0.9}, lambda: SGDMomentumDirection(0.9, False)),
    "sgd-nesterov": ("sgd", {"momentum": 0.8, "nesterov": True}, lambda: SGDMomentumDirection(0.8, True)),
    # torch.optim.Adam adds λ·θ to the gradient (L2); the generic path must run it with λ = 0.
    "generic-adam-class": (torch.optim.Adam, dict(ADAM_KW), AdamDirection),
}


@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
@pytest.mark.parametrize("base_name", list(BASES))
def test_modes_match_float64_reference(mode: str, base_name: str) -> None:
    base, kwargs, direction = BASES[base_name]
    thetas, targets = make_problem()
    expected = reference(mode, direction, thetas, targets)
    got, _ = run_lpwd(mode, base, kwargs, thetas, targets)
    for g, e in zip(got, expected, strict=True):
        rel = ((g - e).norm() / e.norm()).item()
        assert rel < 1e-5, f"{mode}/{base_name}: relative error {rel:.2e}"


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("base_name", ["adamw", "adamw-fused", "sgd-momentum"])
def test_folded_pwd_matches_unfolded_reference_however_lr_is_driven(base_name: str, schedule: str) -> None:
    """The fold is a prediction; wrong predictions (lr by hand, an untold scheduler) are corrected exactly."""
    base, kwargs, direction = BASES[base_name]
    thetas, targets = make_problem()
    expected = reference("pwd", direction, thetas, targets)
    got, opt = run_lpwd("pwd", base, kwargs, thetas, targets, schedule=schedule)
    for g, e in zip(got, expected, strict=True):
        rel = ((g - e).norm() / e.norm()).item()
        assert rel < 1e-5, f"pwd/{base_name}/{schedule}: relative error {rel:.2e}"
    decayed_groups = sum(lam > 0 for lam in LAMBDAS)
    if schedule == "told":  # only the first decay (η_0 > 0 here) needs its own pass
        assert opt.fold_corrections == decayed_groups
    else:  # η changes at every step: every step but the first is corrected
        assert opt.fold_corrections == decayed_groups * STEPS


def pwd_reference_with_lrs(thetas, targets, lrs: list[list[float]]) -> list[torch.Tensor]:
    """Unfolded pwd in float64 with AdamW's direction, at the lrs each step's groups actually had."""
    ref = [t.clone() for t in thetas]
    dirs = [AdamDirection() for _ in thetas]
    for step in range(STEPS):
        for i, lam in enumerate(LAMBDAS):
            eta = lrs[step][i]
            theta = (1 - eta * lam) * ref[i]
            ref[i] = theta - eta * dirs[i](grad_of(theta, targets[i]))
    return ref


@pytest.mark.parametrize("kind", ["warmup_cosine", "constant", "warmup_from_zero_linear"])
def test_folded_pwd_over_trainer_schedules(kind: str) -> None:
    """transformers' own schedules (LambdaLR): the fold predicts every step, final params are unfolded
    pwd's."""
    from transformers import (
        get_constant_schedule,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    thetas, targets = make_problem(4)
    params = [torch.nn.Parameter(t.float()) for t in thetas]
    groups = [{"params": [p], "weight_decay": lam} for p, lam in zip(params, LAMBDAS, strict=True)]
    opt = LPWD(groups, mode="pwd", lr=0.05, **ADAM_KW, fused=True)
    sched = {
        "warmup_cosine": lambda: get_cosine_schedule_with_warmup(opt, 7, STEPS),
        "constant": lambda: get_constant_schedule(opt),
        "warmup_from_zero_linear": lambda: get_linear_schedule_with_warmup(opt, 5, STEPS),
    }[kind]()
    lrs = [[g["lr"] for g in opt.param_groups]]
    opt.set_lr_scheduler(sched, num_training_steps=STEPS)
    for _ in range(STEPS):
        opt.pre_step()
        for p, target in zip(params, targets, strict=True):
            p.grad = grad_of(p.detach(), target.float())
        opt.step()
        sched.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    ref = pwd_reference_with_lrs(thetas, targets, lrs)
    for p, e in zip(params, ref, strict=True):
        rel = ((p.detach().double() - e).norm() / e.norm()).item()
        assert rel < 1e-5, f"{kind}: relative error {rel:.2e}"
    first_decay_needs_a_pass = lrs[0][0] > 0
    assert opt.fold_corrections == (sum(lam > 0 for lam in LAMBDAS) if first_decay_needs_a_pass else 0)


@pytest.mark.parametrize("kind", ["chained", "accelerate", "plateau"])
def test_a_scheduler_without_a_step_count_of_its_own_still_ends_at_the_last_step(kind: str) -> None:
    """``ChainedScheduler`` has no ``last_epoch``, Accelerate's ``AcceleratedScheduler`` wraps the scheduler,
    ``ReduceLROnPlateau`` counts evaluations: the step index comes from the chained / wrapped scheduler, or
    from ``steps_taken``, so the last step folds nothing (before: one decay left pending, the final weights
    one factor 1 − η·λ off, with no settle() asked for), against the float64 reference."""
    thetas, targets = make_problem(4)
    params = [torch.nn.Parameter(t.float()) for t in thetas]
    groups = [{"params": [p], "weight_decay": lam} for p, lam in zip(params, LAMBDAS, strict=True)]
    opt = LPWD(groups, mode="pwd", lr=0.05, **ADAM_KW, fused=True)
    stepper, told, steps_taken = opt, None, None
    if kind == "chained":
        sched = told = torch.optim.lr_scheduler.ChainedScheduler(
            [torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)], optimizer=opt)
    elif kind == "accelerate":
        from accelerate import Accelerator

        stepper, sched = Accelerator(cpu=True).prepare(opt, torch.optim.lr_scheduler.ExponentialLR(opt, 0.9))
        told = sched
    else:
        sched = told = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        done = [0]
        steps_taken = lambda: done[0]  # noqa: E731
    opt.set_lr_scheduler(told, num_training_steps=STEPS, steps_taken=steps_taken)
    lrs = []
    for step in range(STEPS):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.pre_step()
        for p, target in zip(params, targets, strict=True):
            p.grad = grad_of(p.detach(), target.float())
        stepper.step()
        if kind == "plateau":
            done[0] += 1
            if step % 3 == 2:
                sched.step(1.0)  # an evaluation that never improves: the lr halves
        else:
            sched.step()
    assert opt.pending_decay == {}
    ref = pwd_reference_with_lrs(thetas, targets, lrs)
    assert len({tuple(lr) for lr in lrs}) > 2  # the lr did change
    for p, e in zip(params, ref, strict=True):
        rel = ((p.detach().double() - e).norm() / e.norm()).item()
        assert rel < 1e-5, f"{kind}: relative error {rel:.2e}"


def test_model_holds_the_next_forwards_weights_between_steps() -> None:
    """After step t the weights are θ'_{t+1} = (1 − η_{t+1}λ)·θ_{t+1}: decayed with the *next* lr."""
    p = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = LPWD([p], base="sgd", mode="pwd", lr=0.1, weight_decay=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: [1.0, 0.4, 0.2][s])
    opt.set_lr_scheduler(sched, num_training_steps=3)
    opt.pre_step()  # (1 − 0.1·0.5)·2 = 1.9
    assert torch.equal(p.detach(), torch.full((3,), 2.0 * (1 - 0.05)))
    p.grad = torch.ones(3)
    opt.step()  # θ_1 = 1.9 − 0.1 = 1.8, then the decay of step 1 at η_1 = 0.04: (1 − 0.02)
    sched.step()
    torch.testing.assert_close(
        p.detach(), torch.full((3,), (1.9 - 0.1) * (1 - 0.02)), rtol=3e-7, atol=0
    )  # float32 ulps
    opt.pre_step()  # prediction right: no pass
    assert opt.fold_corrections == 1
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    opt.pre_step()
    p.grad = torch.ones(3)
    opt.step()  # the last step: no decay for a step that never comes
    expected = ((1.9 - 0.1) * 0.98 - 0.04) * (1 - 0.02 * 0.5) - 0.02  # by hand: 1.68676
    torch.testing.assert_close(p.detach(), torch.full((3,), expected), rtol=1e-6, atol=0)


def test_a_step_with_zero_lr_still_applies_the_next_decay() -> None:
    """η_t = 0 (warm-up start): the fold would divide by η' = 0, so a separate pass applies (1 − η_{t+1}λ)."""
    p = torch.nn.Parameter(torch.full((4,), 1.0))
    opt = LPWD([p], mode="pwd", lr=0.2, weight_decay=0.5, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 2))
    opt.set_lr_scheduler(sched, num_training_steps=10)
    opt.pre_step()
    assert torch.equal(p.detach(), torch.ones(4))  # η_0 = 0: factor exactly 1, no pass
    assert opt.fold_corrections == 0
    p.grad = torch.ones(4)
    opt.step()
    sched.step()
    assert torch.equal(p.detach(), torch.full((4,), 1.0 - 0.1 * 0.5))  # η_0 = 0: no update, the next decay
    opt.pre_step()
    assert opt.fold_corrections == 0


def test_lpwd_modes_differ_from_each_other() -> None:
    """Guard against an optimizer (or a reference) that cannot tell the timings apart: LPWD itself differs."""
    thetas, targets = make_problem()
    runs = {mode: run_lpwd(mode, "adamw", dict(ADAM_KW), thetas, targets)[0] for mode in ("wd", "rwd", "pwd")}
    for a, b in (("wd", "rwd"), ("wd", "pwd"), ("rwd", "pwd")):
        diff = (runs[a][2] - runs[b][2]).norm() / runs[a][2].norm()
        assert diff > 1e-3, f"{a} vs {b}: {diff:.2e}"


@pytest.mark.parametrize("variant", [{"foreach": False}, {"foreach": True}, {"fused": True}])
def test_wd_is_bitwise_torch_adamw(variant: dict) -> None:
    thetas, targets = make_problem(1)
    results = []
    for make in (
        lambda g: torch.optim.AdamW(g, lr=lr_at(0), **ADAM_KW, **variant),
        lambda g: LPWD(g, base="adamw", mode="wd", lr=lr_at(0), **ADAM_KW, **variant),
    ):
        params = [torch.nn.Parameter(t.float()) for t in thetas]
        opt = make([{"params": [p], "weight_decay": lam} for p, lam in zip(params, LAMBDAS, strict=True)])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s) / lr_at(0))
        for _ in range(STEPS):
            for p, target in zip(params, targets, strict=True):
                p.grad = grad_of(p.detach(), target.float())
            opt.step()
            sched.step()
        results.append(([p.detach().clone() for p in params], opt.state_dict()))
    (ref_params, ref_state), (got_params, got_state) = results
    for a, b in zip(ref_params, got_params, strict=True):
        assert torch.equal(a, b)
    assert ref_state["state"].keys() == got_state["state"].keys()
    for k in ref_state["state"]:
        assert ref_state["state"][k].keys() == got_state["state"][k].keys()


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_rwd_from_decayed_start_equals_pwd_decayed_weights(base: str) -> None:
    """The reviewers' observation: at constant η, rwd started from (1−ηλ)θ₀ *is* pwd, seen after its
    pre_step."""
    eta, lam = 0.03, 2.0
    thetas, targets = make_problem(2)
    theta0, target = thetas[0].float(), targets[0].float()
    kwargs = {"momentum": 0.9} if base == "sgd" else dict(ADAM_KW)
    p_pwd = torch.nn.Parameter(theta0.clone())
    p_rwd = torch.nn.Parameter(theta0 * (1 - eta * lam))
    opt_pwd = LPWD([p_pwd], base=base, mode="pwd", lr=eta, weight_decay=lam, **kwargs)
    opt_rwd = LPWD([p_rwd], base=base, mode="rwd", lr=eta, weight_decay=lam, **kwargs)
    for _ in range(STEPS):
        opt_pwd.pre_step()
        if base == "sgd":  # the same float operations in the same order: exact
            assert torch.equal(p_pwd, p_rwd)
        else:  # AdamW folds rwd into its own kernel (η', λ'): equal up to float32 rounding
            torch.testing.assert_close(p_pwd, p_rwd, rtol=2e-6, atol=1e-7)
        for p, opt in ((p_pwd, opt_pwd), (p_rwd, opt_rwd)):
            p.grad = grad_of(p.detach(), target)
            opt.step()


def test_pre_step_acts_once_per_step() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = LPWD([p], mode="pwd", lr=0.1, weight_decay=0.5)
    opt.pre_step()
    opt.pre_step()
    assert torch.equal(p.detach(), torch.full((4,), 1 - 0.1 * 0.5))
    assert opt.pre_step_pending
    p.grad = torch.zeros(4)
    opt.step()
    assert not opt.pre_step_pending
    opt.pre_step()
    assert torch.equal(p.detach(), torch.full((4,), 0.95) * 0.95)


def test_pwd_step_without_pre_step_says_how_to_fix() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = LPWD([p], mode="pwd", lr=0.1)
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match=r"pre_step\(\)"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("mode", ["wd", "rwd"])
def test_pre_step_is_a_no_op_outside_pwd(mode: str) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    LPWD([p], mode=mode, lr=0.1, weight_decay=0.5).pre_step()
    assert torch.equal(p.detach(), torch.ones(3))


@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
@pytest.mark.parametrize("base,kwargs", [("adamw", {"fused": True}), ("sgd", {"momentum": 0.9})])
def test_state_dict_round_trip_resumes_exactly(mode: str, base: str, kwargs: dict) -> None:
    thetas, targets = make_problem(3)

    def fresh():
        params = [torch.nn.Parameter(t.float()) for t in thetas]
        groups = [{"params": [p], "weight_decay": lam} for p, lam in zip(params, LAMBDAS, strict=True)]
        return params, LPWD(groups, base=base, mode=mode, lr=0.01, **kwargs)

    def train(params, opt, steps):
        for _ in range(steps):
            opt.pre_step()
            for p, target in zip(params, targets, strict=True):
                p.grad = grad_of(p.detach(), target.float())
            opt.step()

    params, opt = fresh()
    train(params, opt, 5)
    saved_params, saved_state = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    train(params, opt, 5)

    resumed_params, resumed = fresh()
    with torch.no_grad():
        for p, s in zip(resumed_params, saved_params, strict=True):
            p.copy_(s)
    resumed.load_state_dict(saved_state)
    assert resumed.state_dict()["param_groups"] == saved_state["param_groups"]
    train(resumed_params, resumed, 5)
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)
    # No state beyond the base optimizer's: same keys as the base class would keep.
    plain = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[base](
        [torch.nn.Parameter(torch.ones(1))], lr=0.1
    )
    assert set(opt.state_dict()) == set(plain.state_dict())
    assert opt.state is opt.base_optimizer.state and opt.param_groups is opt.base_optimizer.param_groups


def test_is_a_torch_optimizer_the_scheduler_drives() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = LPWD([p], mode="rwd", lr=1.0, weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.zeros(2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5
    # The zero gradient leaves only the decay: (1 - 1.0*0.1) at the lr of the first step.
    torch.testing.assert_close(p.detach(), torch.full((2,), 0.9))


# --------------------------------------------------------------------------- bad input
def test_unknown_mode_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'wd', 'rwd', 'pwd'"):
        LPWD([torch.nn.Parameter(torch.ones(1))], mode="lpwdd")


def test_unknown_base_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"\['adamw', 'adamw_torch', 'adamw_torch_fused', 'sgd'\]"):
        LPWD([torch.nn.Parameter(torch.ones(1))], base="adamx")
    with pytest.raises(ValueError, match="Optimizer subclass"):
        LPWD([torch.nn.Parameter(torch.ones(1))], base=dict)


@pytest.mark.parametrize(
    "group,match",
    [
        ({"weight_decay": -0.1}, r"param group 1 .*weight_decay=-0.1"),
        ({"lr": -1e-3}, r"param group 1 .*lr=-0.001"),
        ({"lr": float("nan")}, r"param group 1 .*lr=nan"),
        ({"lr": float("inf")}, r"param group 1 .*lr=inf"),
        ({"lr": 0.5, "weight_decay": 2.0}, r"param group 1 .*lr=0.5 and weight_decay=2.0"),
    ],
)
def test_bad_groups_are_named(group: dict, match: str) -> None:
    groups = [
        {"params": [torch.nn.Parameter(torch.ones(1))]},
        {"params": [torch.nn.Parameter(torch.ones(1))], **group},
    ]
    with pytest.raises(ValueError, match=match):
        LPWD(groups, lr=1e-3)


@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
def test_decay_factor_at_or_below_zero_is_refused_before_anything_changes(mode: str) -> None:
    """A scheduler can raise η mid-run; η·λ ≥ 1 must stop the step with params and state untouched."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = LPWD(
        [{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 4.0, "depth": 2}],
        mode=mode,
        lr=0.1,
    )
    opt.pre_step()
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    snapshot = ([a.detach().clone(), b.detach().clone()], copy.deepcopy(opt.state_dict()))
    for group in opt.param_groups:
        group["lr"] = 0.25  # 0.25 · 4.0 = 1: factor 0
    with pytest.raises(ValueError, match=r"param group 1 \(depth 2\).*lr=0.25 and weight_decay=4.0"):
        opt.pre_step()
        opt.step()
    assert torch.equal(a, snapshot[0][0]) and torch.equal(b, snapshot[0][1])
    assert str(opt.state_dict()["state"]) == str(snapshot[1]["state"])


def test_adafactor_like_group_without_lr_is_refused() -> None:
    p = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="lr=None"):
        LPWD([{"params": [p], "lr": None}], base=torch.optim.SGD, lr=0.1)


# --------------------------------------------------------------------------- contract details
def test_add_param_group_gets_lpwds_lambda_not_the_bases() -> None:
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = LPWD([p], base="sgd", mode="pwd", lr=0.1, weight_decay=0.3)  # torch's SGD default λ is 0
    assert opt.defaults["weight_decay"] == 0.3
    opt.add_param_group({"params": [q]})
    assert opt.param_groups[1]["weight_decay"] == 0.3
    opt.pre_step()
    assert torch.equal(q.detach(), torch.full((2,), 1 - 0.1 * 0.3, dtype=torch.float32))


@pytest.mark.parametrize(
    "mode,expected", [("wd", 2 - 0.1 * 2 - 0.1 * 0.5 * 2), ("rwd", (2 - 0.1 * 2) * 0.95)]
)
def test_closure_gradient_is_taken_before_any_decay(mode: str, expected: float) -> None:
    """SGD base, λ = 0.5, η = 0.1, loss ½‖θ‖²: the gradient is θ at the weights *before* the step (2),
    also for a parameter whose .grad is None until the closure runs."""
    p = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = LPWD([p], base="sgd", mode=mode, lr=0.1, weight_decay=0.5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = 0.5 * (p**2).sum()
        loss.backward()
        return loss

    assert p.grad is None
    loss = opt.step(closure)
    assert loss.item() == pytest.approx(6.0)
    torch.testing.assert_close(p.detach(), torch.full((3,), expected), rtol=1e-6, atol=0)


def test_a_step_skipped_by_the_grad_scaler_keeps_the_decay_pending_once() -> None:
    p = torch.nn.Parameter(torch.full((2,), 1.0))
    opt = LPWD([p], base="sgd", mode="pwd", lr=0.1, weight_decay=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    # step 1: an inf gradient, the scaler skips optimizer.step()
    opt.pre_step()
    scaler.scale(p.sum()).backward()
    p.grad.fill_(float("inf"))
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p.detach(), torch.full((2,), 0.95))  # decayed once, not updated
    opt.zero_grad()
    # step 2: a good gradient; pre_step() must not decay a second time
    opt.pre_step()
    scaler.scale(p.sum()).backward()
    scaler.step(opt)
    scaler.update()
    # θ = 0.95 − 0.1·1, then the fold decays for the next step at the same lr: ×0.95
    torch.testing.assert_close(p.detach(), torch.full((2,), (0.95 - 0.1) * 0.95), rtol=1e-6, atol=0)
    assert opt.fold_corrections == 1  # only the very first decay needed its own pass


def test_mixed_fp32_and_bf16_groups_on_adamw() -> None:
    """The fp32 group keeps the folded kernel bit for bit; the bf16 group takes the stochastic pass."""
    thetas, targets = make_problem(5)

    def run(with_bf16: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        torch.manual_seed(0)
        fp32 = torch.nn.Parameter(thetas[1].float())
        groups = [{"params": [fp32], "weight_decay": 0.5}]
        bf16 = None
        if with_bf16:
            bf16 = torch.nn.Parameter(thetas[2].to(torch.bfloat16))
            groups.append({"params": [bf16], "weight_decay": 3.0})
        opt = LPWD(groups, mode="pwd", lr=0.02, **ADAM_KW)
        for _ in range(STEPS):
            opt.pre_step()
            fp32.grad = grad_of(fp32.detach(), targets[1].float())
            if bf16 is not None:
                bf16.grad = grad_of(bf16.detach().float(), targets[2].float()).to(torch.bfloat16)
            opt.step()
        opt.settle()
        return fp32.detach().clone(), None if bf16 is None else bf16.detach().double()

    alone, _ = run(False)
    mixed, low = run(True)
    assert torch.equal(alone, mixed)
    ref = thetas[2].clone()
    direction = AdamDirection()
    for _ in range(STEPS):
        ref = (1 - 0.02 * 3.0) * ref
        ref = ref - 0.02 * direction(grad_of(ref, targets[2]))
    assert ((low - ref).norm() / ref.norm()).item() < 2e-2  # bf16 keeps ~3 significant digits


def test_lpwd_is_not_a_timing_and_says_how_to_get_it() -> None:
    with pytest.raises(
        ValueError, match=r"'lpwd' is the pwd timing with layer-wise groups.*lpwd_param_groups"
    ):
        LPWD([torch.nn.Parameter(torch.ones(1))], mode="lpwd")


def test_schedule_free_bases_are_refused_naming_the_reason() -> None:
    class AdamWScheduleFree(torch.optim.Optimizer):  # the shape of schedulefree's optimizers
        def __init__(self, params, lr=1e-3):
            super().__init__(params, {"lr": lr, "weight_decay": 0.0})

        def train(self):
            pass

        def eval(self):
            pass

    with pytest.raises(
        ValueError, match=r"AdamWScheduleFree is a schedule-free optimizer.*train\(\)/eval\(\)"
    ):
        LPWD([torch.nn.Parameter(torch.ones(1))], base=AdamWScheduleFree)


class _DecoupledLR(torch.optim.SGD):
    """torch-optimi's signature: ``decouple_lr`` and ``max_lr`` (decay (1 − (η/max_lr)·λ))."""

    def __init__(self, params, lr=1e-3, decouple_lr=False, max_lr=None):
        super().__init__(params, lr=lr)


OFF = {"lr": 1e-3, "relative_step": False, "scale_parameter": False}  # what --optim adafactor passes


@pytest.mark.parametrize(
    "base, kwargs, match, accepted",
    [
        (_DecoupledLR, {"decouple_lr": True, "max_lr": 1e-3}, r"_DecoupledLR with decouple_lr=True",
         {"decouple_lr": False, "max_lr": 1e-3}),
        # Adafactor's defaults: relative_step (no lr) is named first, then scale_parameter (decay ∝ RMS(θ))
        ("adafactor", {}, r"Adafactor with relative_step=True", OFF),
        ("adafactor", {"lr": 1e-3, "relative_step": False},
         r"LPWD: transformers\.optimization\.Adafactor with scale_parameter=True.*scale_parameter=False",
         OFF),
    ],
)
def test_bases_with_a_decay_rule_of_their_own_are_refused(base, kwargs: dict, match: str,
                                                          accepted: dict) -> None:
    """LPWD drops the base's decay for its timing's (1 − η·λ): a base whose own rule is another one would be
    changed without a word, so it is refused, naming the kwarg; with that kwarg off, it is accepted."""
    if base == "adafactor":
        base = pytest.importorskip("transformers").optimization.Adafactor
    param = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        LPWD([param], base=base, weight_decay=0.1, **kwargs)
    assert type(LPWD([param], base=base, weight_decay=0.1, **accepted).base_optimizer) is base


def test_trainer_optim_names_are_bases() -> None:
    fused = LPWD([torch.nn.Parameter(torch.ones(1))], base="adamw_torch_fused", lr=0.1)
    assert type(fused.base_optimizer) is torch.optim.AdamW and fused.base_optimizer.defaults["fused"] is True


@pytest.mark.parametrize("mode, frozen_in_group, warned", [("pwd", True, True), ("wd", True, False),
                                                            ("pwd", False, False)])
def test_pwd_says_it_would_decay_frozen_weights(caplog, mode: str, frozen_in_group: bool,
                                               warned: bool) -> None:
    """pwd decays every weight of a decayed group before the forward, gradient or not: a frozen weight there
    (``model.parameters()`` with part of the model frozen) gets a one-line warning naming the fix, at
    construction and in ``add_param_group``; wd / rwd skip weights without a gradient, as torch does."""
    trained = torch.nn.Parameter(torch.ones(3))
    frozen = torch.nn.Parameter(torch.ones(5), requires_grad=False)
    with caplog.at_level("WARNING", logger="hf_lpwd"):
        opt = LPWD([trained] + ([frozen] if frozen_in_group else []), mode=mode, lr=0.1, weight_decay=0.5)
        if not frozen_in_group:
            opt.add_param_group({"params": [frozen], "weight_decay": 0.0})  # undecayed: nothing to say
    notes = [r.getMessage() for r in caplog.records if r.name == "hf_lpwd"]
    assert bool(notes) == warned
    if warned:
        assert len(notes) == 1 and notes[0].startswith("LPWD(mode='pwd'): 5 weights with requires_grad=False")
        assert "add_param_group() them when you unfreeze them" in notes[0]


def test_a_weight_frozen_during_training_is_said_once_under_pwd(caplog) -> None:
    """Frozen after the optimizer was built (a callback sets requires_grad=False): pwd goes on decaying it,
    so the first pre_step() that finds it says so, once; wd says nothing (it skips weights without a
    gradient)."""
    for mode, expected in (("pwd", 1), ("wd", 0)):
        trained, later = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(4))
        opt = LPWD([trained, later], mode=mode, lr=0.1, weight_decay=0.5)
        with caplog.at_level("WARNING", logger="hf_lpwd"):
            caplog.clear()
            opt.pre_step()
            trained.grad, later.grad = torch.ones(3), torch.ones(4)
            opt.step()
            later.requires_grad_(False)
            later.grad = None
            for _ in range(3):
                opt.pre_step()
                opt.step()
        notes = [r.getMessage() for r in caplog.records if r.name == "hf_lpwd"]
        assert len(notes) == expected
        if expected:
            assert notes[0].startswith("LPWD(mode='pwd'): 4 weights with requires_grad=False")


def test_a_scheduler_that_cannot_look_ahead_gets_a_one_line_note_and_stays_exact(caplog) -> None:
    """ReduceLROnPlateau cannot say the next lr: the fold predicts it unchanged, pre_step() corrects a
    change."""
    p = torch.nn.Parameter(torch.full((2,), 1.0))
    opt = LPWD([p], base="sgd", mode="pwd", lr=0.1, weight_decay=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    with caplog.at_level("WARNING", logger="hf_lpwd"):
        opt.set_lr_scheduler(sched)
    notes = [r.getMessage() for r in caplog.records if r.name == "hf_lpwd"]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("LPWD: ReduceLROnPlateau cannot say the next step's lr")
    theta = 1.0
    for loss in (1.0, 2.0, 3.0):  # after the first step the loss never improves: lr 0.1, 0.1, then 0.05
        eta = opt.param_groups[0]["lr"]
        opt.pre_step()
        theta = theta * (1 - eta * 0.5)
        p.grad = torch.ones(2)
        opt.step()
        theta -= eta
        sched.step(loss)
    opt.settle()
    torch.testing.assert_close(p.detach(), torch.full((2,), theta), rtol=1e-6, atol=0)
    assert opt.fold_corrections == 2  # the first decay, and the third step's (lr halved after the second)


def test_pwd_under_zero3_calling_conventions_equals_one_call_per_step() -> None:
    """DeepSpeed ZeRO-3 steps one group per call (the others hold params = []) and splits a large group into
    flat sub-groups, one call each; the fold's bookkeeping must come out the same as one call per step."""
    from transformers import get_cosine_schedule_with_warmup

    thetas, targets = make_problem(6)
    lams = (0.5, 3.0)

    def build(params: list[list[torch.Tensor]]) -> tuple[LPWD, torch.optim.lr_scheduler.LambdaLR]:
        groups = [{"params": ps, "weight_decay": lam} for ps, lam in zip(params, lams, strict=True)]
        opt = LPWD(groups, mode="pwd", lr=0.03, **ADAM_KW, foreach=False)
        opt.require_pre_step = False  # as under DeepSpeed: no pass before the forward
        sched = get_cosine_schedule_with_warmup(opt, 0, STEPS)  # no warm-up: the first decay is corrected too
        opt.set_lr_scheduler(sched, STEPS)
        return opt, sched

    whole = [torch.nn.Parameter(thetas[i][:36].float()) for i in (1, 2)]
    ref_opt, ref_sched = build([[whole[0]], [whole[1]]])
    parts = [
        [torch.nn.Parameter(thetas[1][:18].float()), torch.nn.Parameter(thetas[1][18:36].float())],
        [torch.nn.Parameter(thetas[2][:36].float())],
    ]
    opt, sched = build([list(parts[0]), list(parts[1])])
    for _ in range(STEPS):
        for p, i in zip(whole, (1, 2), strict=True):
            p.grad = grad_of(p.detach(), targets[i][:36].float())
        ref_opt.step()
        ref_sched.step()
        full_a = torch.cat([p.detach() for p in parts[0]])
        grads_a = grad_of(full_a, targets[1][:36].float())
        parts[0][0].grad, parts[0][1].grad = grads_a[:18].clone(), grads_a[18:].clone()
        parts[1][0].grad = grad_of(parts[1][0].detach(), targets[2][:36].float())
        calls = [([parts[0][0]], []), ([parts[0][1]], []), ([], [parts[1][0]])]  # sub-groups, then group 1
        for a, b in calls:
            opt.param_groups[0]["params"], opt.param_groups[1]["params"] = a, b
            opt.step()
        opt.param_groups[0]["params"], opt.param_groups[1]["params"] = list(parts[0]), list(parts[1])
        sched.step()
    torch.testing.assert_close(
        torch.cat([p.detach() for p in parts[0]]), whole[0].detach(), rtol=1e-6, atol=1e-7
    )
    torch.testing.assert_close(parts[1][0].detach(), whole[1].detach(), rtol=1e-6, atol=1e-7)


def test_a_next_lr_that_would_flip_signs_is_refused_before_anything_changes() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = LPWD([{"params": [p], "weight_decay": 4.0, "depth": 1}], base="sgd", mode="pwd", lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: [1.0, 2.5][min(s, 1)])  # η_1·λ = 0.25·4 = 1
    opt.set_lr_scheduler(sched)
    opt.pre_step()
    before = p.detach().clone()
    p.grad = torch.ones(3)
    with pytest.raises(
        ValueError, match=r"param group 0 \(depth 1\) has the next step's lr=0.25 and weight_decay=4.0"
    ):
        opt.step()
    assert torch.equal(p.detach(), before) and opt.state_dict()["state"] == {}
