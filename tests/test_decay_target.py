"""The decay's target ``init``: every timing × coupling, cautious decay and bf16 toward θ₀, against float64.

The reference (``tests/reference.py``) writes the issue's equations literally: wd θ − η·u − d·(θ − θ₀),
rwd θ₀ + (1 − d)(θ − η·u − θ₀), pwd θ₀ + (1 − d)(θ − θ₀) before the gradient, cautious mask
1[u ⊙ (θ − θ₀) ≥ 0], with θ₀ the weights the optimizer was built with, over the warm-up + cosine schedule
and LLRD groups of ``test_decay_rules``, after the first step that moves (step 0's lr is 0) and the last.
Then the setting (flag, config, card), the new head of a fine-tuned classifier, and PEFT LoRA.
"""

from __future__ import annotations

import copy
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from hf_lpwd import LPWD, LPWDConfig, LPWDTrainer, LPWDTrainingArguments
from hf_lpwd.optim import functional as F
from hf_lpwd.optim.target import STATE_KEY
from tests.reference import AdamDirection, after_update, before_forward
from tests.test_decay_rules import BASES, LLRD, PEAK, RULE, STEPS, WARMUP, grad_of, lambdas, problem, schedule
from tests.tiny import TokenDataset, common_args, tiny_bert, tiny_llama


def decays(coupling: str, step: int) -> list[float]:
    """d_t per group at ``step``."""
    return [
        RULE[coupling](lam, PEAK * mult * schedule(step), PEAK * mult)
        for mult, lam in zip(LLRD, lambdas(coupling), strict=True)
    ]


def reference(mode: str, coupling: str, cautious: bool, direction, thetas, targets, toward_init: bool):
    """The weights the model holds after the first step that moves (step 0's lr is 0: warm-up from 0) and
    after the last, per group; θ₀ = the starting weights when toward init.  After step 1, pwd's model
    already holds step 2's pre-forward decay (the fold)."""
    starts = [t.clone() for t in thetas]
    thetas = [t.clone() for t in thetas]
    dirs = [direction() for _ in thetas]
    first = None
    for step in range(STEPS):
        for i, d in enumerate(decays(coupling, step)):
            eta = PEAK * LLRD[i] * schedule(step)
            anchor = starts[i] if toward_init else None
            theta = before_forward(mode, thetas[i], d, anchor)
            u = dirs[i](grad_of(theta, targets[i]))
            thetas[i] = after_update(mode, theta, u, eta, d, cautious, anchor)
        if step == 1:
            first = [
                before_forward(mode, t, d, s if toward_init else None)
                for t, d, s in zip(thetas, decays(coupling, 2), starts, strict=True)
            ]
    return first, thetas


def run(mode: str, coupling: str, cautious: bool, base_kwargs: dict, thetas, targets, **lpwd_kwargs):
    params = [torch.nn.Parameter(t.float()) for t in thetas]
    groups = [
        {"params": [p], "weight_decay": lam, "lr_multiplier": mult}
        for p, lam, mult in zip(params, lambdas(coupling), LLRD, strict=True)
    ]
    base = "sgd" if "momentum" in base_kwargs else "adamw"
    opt = LPWD(
        groups,
        base=base,
        mode=mode,
        lr=PEAK,
        lr_coupling=coupling,
        cautious=cautious,
        **base_kwargs,
        **lpwd_kwargs,
    )
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)
    opt.set_lr_scheduler(sched, num_training_steps=STEPS)
    first = None
    for step in range(STEPS):
        opt.pre_step()
        for p, target in zip(params, targets, strict=True):
            p.grad = grad_of(p.detach(), target.float())
        opt.step()
        sched.step()
        if step == 1:
            first = [p.detach().double().clone() for p in params]
    return first, [p.detach().double() for p in params], opt


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


def assert_matches(first, last, want_first, want_last, label: str, tolerance: float = 1e-5) -> None:
    """The weights after the first step that moves and after the last, each within ``tolerance`` (relative)
    of the float64 reference."""
    for got, want in [*zip(first, want_first, strict=True), *zip(last, want_last, strict=True)]:
        rel = relative_error(got, want)
        assert rel < tolerance, f"{label}: relative error {rel:.2e}"


def fp32_problem(seed: int):
    thetas, targets = problem(seed)
    return [t.float().double() for t in thetas], targets  # θ₀ as the fp32 weights hold it


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
@pytest.mark.parametrize("coupling", list(RULE))
def test_each_timing_and_coupling_toward_init_matches_float64(coupling: str, mode: str, base: str) -> None:
    base_kwargs, direction = BASES[base]
    thetas, targets = fp32_problem(0)
    first, last, opt = run(mode, coupling, False, base_kwargs, thetas, targets, decay_target="init")
    want_first, want_last = reference(mode, coupling, False, direction, thetas, targets, True)
    assert_matches(first, last, want_first, want_last, f"{coupling}/{mode}/{base} toward init")
    _, toward_zero = reference(mode, coupling, False, direction, thetas, targets, False)
    # The target matters where λ > 0 (group 2: the largest λ) by far more than the tolerance; not at λ = 0.
    assert relative_error(toward_zero[2], want_last[2]) > 1e-3
    torch.testing.assert_close(want_last[0], toward_zero[0], rtol=1e-12, atol=1e-12)
    if mode == "pwd":  # warm-up from lr 0: every decay toward θ₀ was folded in, none corrected
        assert opt.fold_corrections == 0
    # θ₀ only for the decayed groups, equal to the weights it was built with, bit for bit
    params = [p for g in opt.param_groups for p in g["params"]]
    assert params[0] not in opt.initial_weights
    for p, start in zip(params[1:], thetas[1:], strict=True):
        assert torch.equal(opt.initial_weights[p], start.float())


class OnePass:
    """Forces the one-pass fp32 step toward θ₀ (a GPU's path) onto the CPU and counts the tensors it steps
    (so a test fails if the base's step and lerp ran instead)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from hf_lpwd.optim import rounded_step as rs

        monkeypatch.setattr(rs, "ONE_PASS_DEVICES", ("cuda", "cpu"))
        self.stepped = 0
        wrapped = {}
        for name in ("_ADAM", "_SGD", "_SGD_PLAIN"):
            rounded, exact = getattr(rs, name)

            def counting(*args, _exact=exact, **kwargs):
                self.stepped += len(args[0])
                return _exact(*args, **kwargs)

            wrapped[name] = (rounded, counting)
        for name, kernels in wrapped.items():
            monkeypatch.setattr(rs, name, kernels)


@pytest.mark.parametrize("base", ["adamw", "sgd"])
@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
@pytest.mark.parametrize("coupling", ["coupled", "corrected"])
def test_one_pass_fp32_step_toward_init_matches_float64(
    coupling: str, mode: str, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU fp32 weights toward θ₀ take one compiled pass (the update and the decay together), not the
    base's step and a lerp: the same float64 reference, the first and last steps, pwd still folded."""
    one_pass = OnePass(monkeypatch)
    base_kwargs, direction = BASES[base]
    thetas, targets = fp32_problem(2)
    first, last, opt = run(mode, coupling, False, base_kwargs, thetas, targets, decay_target="init")
    want_first, want_last = reference(mode, coupling, False, direction, thetas, targets, True)
    assert_matches(first, last, want_first, want_last, f"one pass {coupling}/{mode}/{base} toward init")
    assert one_pass.stepped == 2 * STEPS  # the two decayed groups, every step (λ = 0's takes the base)
    if mode == "pwd":
        assert opt.fold_corrections == 0
    state = opt.base_optimizer.state[opt.param_groups[2]["params"][0]]
    if base == "adamw":  # the base's own state, as its step would leave it: a checkpoint is the base's
        assert float(state["step"]) == STEPS and state["exp_avg"].dtype == torch.float32
    else:
        assert state["momentum_buffer"].dtype == torch.float32


@pytest.mark.parametrize("target", ["init", "zero"])
def test_one_pass_cautious_matches_float64(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cautious decay in the one pass (a GPU's path for fused AdamW, where the CPU has its own compiled
    step): mask 1[u ⊙ (θ − θ₀) ≥ 0] (θ₀ = 0 toward zero) inside the kernel, every group stepped there."""
    one_pass = OnePass(monkeypatch)
    base_kwargs, direction = BASES["adamw"]
    thetas, targets = fp32_problem(1)
    first, last, _ = run("wd", "coupled", True, base_kwargs, thetas, targets, decay_target=target)
    want_first, want_last = reference("wd", "coupled", True, direction, thetas, targets, target == "init")
    assert_matches(first, last, want_first, want_last, f"one pass cautious toward {target}")
    assert one_pass.stepped == 3 * STEPS  # every group of a cautious optimizer (λ = 0's: c = 0, no mask)


def test_one_pass_is_not_taken_toward_zero_or_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Toward 0 the fp32 step stays torch's own (the stock Trainer bit for bit); on the CPU toward θ₀ too."""
    base_kwargs, direction = BASES["adamw"]
    thetas, targets = fp32_problem(2)
    from hf_lpwd.optim import rounded_step as rs

    assert rs.ONE_PASS_DEVICES == ("cuda",)
    counted = OnePass(monkeypatch)
    run("wd", "coupled", False, base_kwargs, thetas, targets)
    assert counted.stepped == 0
    monkeypatch.setattr(rs, "ONE_PASS_DEVICES", ("cuda",))
    run("wd", "coupled", False, base_kwargs, thetas, targets, decay_target="init")
    assert counted.stepped == 0


CAUTIOUS_CASES = [("adamw", "compiled"), ("adamw", "eager"), ("adamw-foreach", "eager"), ("sgd", "eager")]


@pytest.mark.parametrize("base, kernel", CAUTIOUS_CASES)
@pytest.mark.parametrize("coupling", ["coupled", "corrected"])
def test_cautious_toward_init_matches_float64(coupling: str, base: str, kernel: str) -> None:
    """Mask 1[u ⊙ (θ − θ₀) ≥ 0]; the compiled cautious kernel has no θ₀, so that case takes the eager pass."""
    base_kwargs, direction = BASES[base]
    thetas, targets = fp32_problem(1)
    kwargs = {**base_kwargs, "cautious_kernel": kernel}
    first, last, _ = run("wd", coupling, True, kwargs, thetas, targets, decay_target="init")
    want_first, want_last = reference("wd", coupling, True, direction, thetas, targets, True)
    assert_matches(first, last, want_first, want_last, f"cautious {coupling}/{base} toward init")
    _, plain = reference("wd", coupling, False, direction, thetas, targets, True)
    _, masked_at_zero = reference("wd", coupling, True, direction, thetas, targets, False)
    for other in (plain, masked_at_zero):  # the mask matters, and it is taken on θ − θ₀
        assert relative_error(other[2], want_last[2]) > 1e-4


def test_a_group_target_wins_over_the_optimizer_target() -> None:
    """A new head decays toward 0 (its group says ``decay_target="zero"``) while the body decays toward θ₀."""
    thetas, targets = fp32_problem(2)
    params = [torch.nn.Parameter(t.float()) for t in thetas[1:]]
    groups = [
        {"params": [params[0]], "weight_decay": 1.5},
        {"params": [params[1]], "weight_decay": 1.5, "decay_target": "zero"},
    ]
    opt = LPWD(groups, mode="wd", lr=PEAK, decay_target="init", betas=(0.9, 0.99), eps=1e-8)
    assert list(opt.initial_weights) == [params[0]]
    dirs = [AdamDirection(), AdamDirection()]
    want = list(thetas[1:])
    for _ in range(5):
        for i, (p, target) in enumerate(zip(params, targets[1:], strict=True)):
            p.grad = grad_of(p.detach(), target.float())
            u = dirs[i](grad_of(want[i], target))
            want[i] = after_update("wd", want[i], u, PEAK, PEAK * 1.5, target=thetas[1] if i == 0 else None)
        opt.step()
    for p, w in zip(params, want, strict=True):
        assert relative_error(p.detach().double(), w) < 1e-6


def test_plain_functions_toward_init_against_the_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    theta, g, start = (torch.randn(64, generator=gen, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(
        F.wd_update(theta, g, 0.1, 0.2, start), after_update("wd", theta, g, 0.1, 0.2, target=start)
    )
    torch.testing.assert_close(
        F.rwd_update(theta, g, 0.1, 0.2, start), after_update("rwd", theta, g, 0.1, 0.2, target=start)
    )
    p = theta.clone()
    F.apply_cautious_decay_(p, g.clone(), 0.2, start)  # the decay half of cautious wd, before the base step
    want = after_update("wd", theta, g, 0.1, 0.2, cautious=True, target=start) + 0.1 * g
    torch.testing.assert_close(p, want, rtol=1e-15, atol=1e-15)


def _zero_target_matches_adamw(decay_target: str | None) -> None:
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(33, generator=gen)
    a, b = torch.nn.Parameter(theta.clone()), torch.nn.Parameter(theta.clone())
    kwargs = {} if decay_target is None else {"decay_target": decay_target}
    opt = LPWD([a], mode="wd", lr=1e-2, weight_decay=0.1, **kwargs)
    stock = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(4):
        g = torch.randn(33, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        stock.step()
    assert torch.equal(a, b)
    assert not opt.initial_weights and STATE_KEY not in opt.state_dict()["state"][0]


def test_target_zero_is_todays_adamw_bit_for_bit() -> None:
    _zero_target_matches_adamw(None)
    _zero_target_matches_adamw("zero")


def _bert_like(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _train(model: torch.nn.Module, opt: LPWD, sched, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.pre_step()
        x = torch.randn(8, 6, generator=gen)
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def _build(model: torch.nn.Module, mode: str, total: int):
    groups = [
        {"params": [model[0].weight, model[2].weight], "weight_decay": 3.0},
        {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0},
    ]
    opt = LPWD(groups, mode=mode, lr=0.05, decay_target="init")
    sched = get_cosine_schedule_with_warmup(opt, 2, total)
    opt.set_lr_scheduler(sched, num_training_steps=total)
    return opt, sched


@pytest.mark.parametrize("mode", ["wd", "pwd"])
def test_state_dict_round_trip_and_bitwise_resume(mode: str) -> None:
    total = 10
    model = _bert_like()
    start = [p.detach().clone() for p in model.parameters()]
    opt, sched = _build(model, mode, total)
    _train(model, opt, sched, 5, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    saved = opt.state_dict()["state"]
    assert torch.equal(saved[0][STATE_KEY], start[0]) and torch.equal(saved[1][STATE_KEY], start[2])
    assert all(STATE_KEY not in saved.get(i, {}) for i in (2, 3))  # λ = 0: no θ₀
    _train(model, opt, sched, 5, seed=2)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = _bert_like(seed=7)  # other weights: θ₀ must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    opt2, sched2 = _build(resumed, mode, total)
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    _train(resumed, opt2, sched2, 5, seed=2)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt2.initial_weights[resumed[0].weight], start[0])


def test_deepcopy_and_pickle_carry_theta0() -> None:
    model = _bert_like()
    opt, sched = _build(model, "wd", 10)
    _train(model, opt, sched, 3, seed=1)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.decay_target == "init"
        params = [p for g in clone.param_groups for p in g["params"]]
        assert torch.equal(clone.initial_weights[params[0]], opt.initial_weights[model[0].weight])
        assert clone.initial_weights[params[0]] is not opt.initial_weights[model[0].weight]
    twin_model, twin_opt = copy.deepcopy((model, opt))
    lrs = [g["lr"] for g in opt.param_groups]
    twin_sched = get_cosine_schedule_with_warmup(twin_opt, 2, 10)  # sets the lr of step 0: put it back
    twin_sched.load_state_dict(sched.state_dict())
    for group, lr in zip(twin_opt.param_groups, lrs, strict=True):
        group["lr"] = lr
    assert set(twin_opt.initial_weights) == {twin_model[0].weight, twin_model[2].weight}
    _train(model, opt, sched, 3, seed=4)
    _train(twin_model, twin_opt, twin_sched, 3, seed=4)
    for a, b in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["wd", "pwd"])
def test_deferred_theta0_is_taken_at_the_first_step_and_trains_the_same(mode: str) -> None:
    """What the Trainer does under DeepSpeed (no full θ₀ copy while ZeRO builds its masters): θ₀ dropped
    after construction, taken from the weights at the first step; they are the pretrained ones then, so the
    run equals the one that kept θ₀ from the start, bit for bit.  After a step it is refused."""
    kept_model, deferred_model = _bert_like(), _bert_like()
    start = [p.detach().clone() for p in kept_model.parameters()]
    kept, kept_sched = _build(kept_model, mode, 10)
    deferred, deferred_sched = _build(deferred_model, mode, 10)
    deferred.defer_initial_weights()
    assert deferred.initial_weights == {}
    _train(kept_model, kept, kept_sched, 4, seed=1)
    _train(deferred_model, deferred, deferred_sched, 4, seed=1)
    for a, b in zip(kept_model.parameters(), deferred_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(deferred.initial_weights[deferred_model[0].weight], start[0])
    assert set(deferred.initial_weights) == {deferred_model[0].weight, deferred_model[2].weight}
    with pytest.raises(RuntimeError, match=r"after a step"):
        deferred.defer_initial_weights()


def test_a_checkpoint_without_theta0_is_refused_for_target_init() -> None:
    """Resumed with target init, a state saved toward zero (or before 0.4) has no θ₀: refused, naming the
    flag, before anything is loaded; one saved before any step keeps the θ₀ built here."""
    model = _bert_like()
    plain = LPWD(model.parameters(), mode="wd", lr=0.05, weight_decay=0.1)
    model(torch.ones(2, 6)).sum().backward()
    plain.step()
    old = plain.state_dict()
    model2 = _bert_like()
    opt = LPWD(model2.parameters(), mode="wd", lr=0.05, weight_decay=0.1, decay_target="init")
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"--lpwd_decay_target zero") as error:
        opt.load_state_dict(old)
    assert "no θ₀ for 4 parameters" in str(error.value)
    after = opt.state_dict()
    assert all(torch.equal(before["state"][i][STATE_KEY], after["state"][i][STATE_KEY]) for i in range(4))
    assert not opt.state  # nothing of the refused checkpoint was loaded
    unstepped = LPWD(_bert_like(3).parameters(), mode="wd", lr=0.05, weight_decay=0.1).state_dict()
    opt.load_state_dict(unstepped)  # nothing stepped: θ₀ stays the weights this optimizer was built from
    assert torch.equal(opt.initial_weights[model2[0].weight], model2[0].weight.detach())
    # The reverse: a θ₀ checkpoint loaded toward zero keeps no θ₀, and steps as torch's AdamW.
    model3 = _bert_like()
    zero = LPWD(model3.parameters(), mode="wd", lr=0.05, weight_decay=0.1)
    zero.load_state_dict(before)
    assert not zero.initial_weights and not any(zero.state.values())
    model3(torch.ones(2, 6)).sum().backward()
    zero.step()


@pytest.mark.parametrize("mode", ["wd", "rwd"])
@pytest.mark.parametrize("cautious", [False, True])
def test_bf16_rounded_step_toward_init_is_unbiased(mode: str, cautious: bool) -> None:
    """bf16 weights, one AdamW step from θ ≠ θ₀ whose move is below half a bf16 spacing: the mean over noise
    seeds is the float64 step (the θ₀ term inside the one stochastic rounding); round-to-nearest loses it."""
    if cautious and mode == "rwd":
        pytest.skip("cautious decay is defined on the wd timing")
    gen = torch.Generator().manual_seed(11)
    n = 64
    start = (1.0 + torch.rand(n, generator=gen)).to(torch.bfloat16)  # θ₀ in [1, 2): spacing 2^-7
    theta = (start.float() + torch.randint(-3, 4, (n,), generator=gen) * 2.0**-7).to(torch.bfloat16)
    grad = torch.randn(n, generator=gen).to(torch.bfloat16)
    # |η·u| ≈ 3e-3 and d·|θ − θ₀| up to 3.5e-3 (d = 0.15): both below half a spacing, 3.9e-3; toward zero
    # the decay would be d·|θ| ≈ 0.2.
    lr, lam = 3e-3, 50.0
    u = AdamDirection()(grad.double())
    want = after_update(mode, theta.double(), u, lr, lr * lam, cautious, target=start.double())
    runs = 400
    total = torch.zeros(n, dtype=torch.float64)
    for seed in range(runs + 1):
        torch.manual_seed(seed)
        p = torch.nn.Parameter(start.clone())
        opt = LPWD(
            [p],
            mode=mode,
            lr=lr,
            weight_decay=lam,
            decay_target="init",
            cautious=cautious,
            cautious_kernel="eager",
            betas=(0.9, 0.99),
            eps=1e-8,
            stochastic_rounding=seed < runs,
        )
        opt.rounding_kernel = "eager"
        assert opt.initial_weights[p].dtype == torch.bfloat16
        with torch.no_grad():
            p.copy_(theta)
        p.grad = grad.clone()
        opt.step()
        if seed < runs:
            total += p.detach().double()
        else:
            nearest = p.detach().double()
    mean = total / runs
    spacing = 2.0**-7
    # One run is within a spacing (sd ≤ spacing/2): the mean's sd ≤ spacing/(2·√400) = 0.025 spacing.
    assert (mean - want).abs().max().item() < 0.12 * spacing
    assert (nearest - want).abs().max().item() > 0.3 * spacing  # round-to-nearest drops the step


# --------------------------------------------------------------------------- the setting, the Trainer, PEFT
def _pretrained_bert_for_classification(tmp_path: Path) -> torch.nn.Module:
    """A checkpoint of the encoder alone, loaded as a classifier: ``classifier.*`` is new (random)."""
    from transformers import BertForSequenceClassification

    tiny_bert().bert.save_pretrained(tmp_path / "encoder")
    return BertForSequenceClassification.from_pretrained(tmp_path / "encoder")


def test_new_head_decays_toward_zero_and_the_encoder_toward_the_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from hf_lpwd.model.groups import format_layer_table, layer_table, new_parameter_names

    model = _pretrained_bert_for_classification(tmp_path)
    assert new_parameter_names(model) == ["classifier.weight", "classifier.bias"]
    saved = load_file(tmp_path / "encoder" / "model.safetensors")
    args = LPWDTrainingArguments(**common_args(tmp_path, weight_decay=0.5, max_steps=2),
                                 weight_decay_mode="wd", lpwd_decay_target="init")
    trainer = LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8))
    trainer.create_optimizer()
    opt = trainer.lpwd_optimizer
    assert opt.decay_target == "init"
    head = [g for g in opt.param_groups if "classifier.weight" in g["param_names"]]
    assert len(head) == 1 and head[0]["decay_target"] == "zero"
    assert head[0]["param_names"] == ["classifier.weight"]
    names = {id(p): n for n, p in model.named_parameters()}
    anchored = {names[id(p)]: a for p, a in opt.initial_weights.items()}
    assert "classifier.weight" not in anchored and "bert.pooler.dense.weight" in anchored
    for name, anchor in anchored.items():  # θ₀ is the checkpoint's tensor, bit for bit
        assert torch.equal(anchor, saved[name.removeprefix("bert.")])
    table = format_layer_table(layer_table(opt.param_groups, decay_target=opt.decay_target))
    assert "target" in table.splitlines()[0]
    assert "θ₀; 0 (1 new)" in table  # the head's depth: pooler toward θ₀, the new classifier toward 0
    trainer.train()
    trainer.save_model()
    trainer.create_model_card(model_name="tiny")
    out = Path(args.output_dir)
    assert LPWDConfig.from_pretrained(out).decay_target == "init"
    assert "| decay target | init |" in (out / "README.md").read_text()


def test_the_setting_from_flag_config_and_an_old_config(tmp_path: Path) -> None:
    from transformers import HfArgumentParser

    (parsed,) = HfArgumentParser(LPWDTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--lpwd_decay_target", "init"]
    )
    assert parsed.lpwd_decay_target == "init"
    with pytest.raises(ValueError, match=r"--lpwd_decay_target='pretrained'.*\['zero', 'init'\]"):
        LPWDTrainingArguments(output_dir=str(tmp_path / "bad"), use_cpu=True, lpwd_decay_target="pretrained")
    assert not (tmp_path / "bad").exists()
    old = {"mode": "lpwd", "weight_decay": 0.1}  # a config written before the target existed
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "lpwd_config.json").write_text(json.dumps(old))
    assert LPWDConfig.from_pretrained(tmp_path / "old").decay_target == "zero"
    with pytest.raises(ValueError, match=r"LPWD: decay_target='pretrained' is not one of \['zero', 'init'\]"):
        LPWD([torch.nn.Parameter(torch.ones(2))], lr=0.1, decay_target="pretrained")


def test_peft_lora_b_decays_toward_zero_and_a_toward_its_init(tmp_path: Path) -> None:
    """Target init on a LoRA model: the adapters are the trainable weights; B₀ = 0, so B decays toward 0
    (ΔW = B·A toward 0), and A toward its random A₀; the frozen base is untouched."""
    import peft
    from transformers import AutoModelForCausalLM

    from hf_lpwd.model.groups import new_parameter_names, param_groups_for_settings
    from hf_lpwd.settings import resolve_settings

    tiny_llama().save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert new_parameter_names(model) == []  # adapters are unmarked by from_pretrained, yet not "new"
    settings = resolve_settings({"mode": "wd", "weight_decay": 2.0, "decay_target": "init"})
    groups = param_groups_for_settings(model, settings)
    opt = LPWD(groups, mode="wd", lr=0.05, decay_target="init")
    named = dict(model.named_parameters())
    lora_a = [n for n in named if ".lora_A." in n]
    lora_b = [n for n in named if ".lora_B." in n]
    assert lora_a and lora_b and set(lora_a + lora_b) == {n for g in groups for n in g["param_names"]}
    for n in lora_b:
        assert torch.equal(opt.initial_weights[named[n]], torch.zeros_like(named[n]))
    start = {n: named[n].detach().clone() for n in lora_a}
    frozen = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: B away from 0, A away from A₀
        for n in lora_a + lora_b:
            named[n].add_(torch.randn(named[n].shape, generator=gen))
    moved = {n: named[n].detach().clone() for n in lora_a + lora_b}
    for n in lora_a + lora_b:
        named[n].grad = torch.zeros_like(named[n])  # u = 0: the step is the decay alone
    opt.step()
    d = 0.05 * 2.0
    for n in lora_b:
        torch.testing.assert_close(named[n].detach(), (1 - d) * moved[n], rtol=1e-6, atol=1e-7)
    for n in lora_a:
        want = moved[n] - d * (moved[n] - start[n])
        torch.testing.assert_close(named[n].detach(), want, rtol=1e-6, atol=1e-7)
    assert all(torch.equal(named[n], frozen[n]) for n in frozen)


def test_a_resized_head_is_named_and_its_mark_keeps_it_toward_theta0(tmp_path: Path, caplog) -> None:
    """``resize_token_embeddings`` (a chat template's new tokens) replaces the untied ``lm_head`` by a module
    whose weight has no checkpoint mark: it counts as new (toward 0), a warning names it and the fix, and the
    fix puts it back toward θ₀."""
    from transformers import AutoModelForCausalLM

    from hf_lpwd.model.groups import new_parameter_names, param_groups_for_settings
    from hf_lpwd.settings import resolve_settings

    tiny_llama().save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    settings = resolve_settings({"mode": "wd", "weight_decay": 0.5, "decay_target": "init"})
    with caplog.at_level("WARNING", logger="hf_lpwd"):
        param_groups_for_settings(model, settings)
    assert not [r for r in caplog.records if r.name == "hf_lpwd"]  # loaded as saved: nothing to say
    model.resize_token_embeddings(72)
    assert new_parameter_names(model) == ["lm_head.weight"]
    with caplog.at_level("WARNING", logger="hf_lpwd"):
        param_groups_for_settings(model, settings)
    notes = [r.getMessage() for r in caplog.records if r.name == "hf_lpwd"]
    assert len(notes) == 1 and "lm_head.weight._is_hf_initialized = True" in notes[0]
    model.lm_head.weight._is_hf_initialized = True
    assert new_parameter_names(model) == []
    groups = param_groups_for_settings(model, settings)
    assert all(g.get("decay_target", "init") == "init" for g in groups)


def test_peft_modules_to_save_copies_follow_their_original(tmp_path: Path) -> None:
    """A LoRA classifier (PEFT copies the head into ``modules_to_save``, and here the pooler too): the copy of
    the new head is new (toward 0, as the fully fine-tuned head), the copy of the pretrained pooler is not
    (toward θ₀), and LoRA's A and B stay adapters."""
    import peft

    from hf_lpwd.model.groups import new_parameter_names

    model = peft.get_peft_model(_pretrained_bert_for_classification(tmp_path), peft.LoraConfig(
        task_type="SEQ_CLS", r=2, target_modules=["query", "value"], modules_to_save=["pooler.dense"]))
    new = new_parameter_names(model)
    assert new == ["base_model.model.classifier.modules_to_save.default.weight",
                   "base_model.model.classifier.modules_to_save.default.bias"]
    assert any(".pooler.dense.modules_to_save.default.weight" in n for n, p in model.named_parameters()
               if p.requires_grad)


@pytest.mark.parametrize("mode", ["wd", "pwd"])
def test_bf16_toward_init_compiled_step_is_the_eager_one_bitwise(mode: str) -> None:
    """The default (torch.compile'd) rounded step with θ₀ computes the same bits as the function run eagerly,
    over a warm-up + cosine schedule (pwd: the fold toward θ₀ inside the rounding)."""
    from hf_lpwd.optim.rounded_step import _ADAM

    results = {}
    for kernel in ("compiled", "eager"):
        torch.manual_seed(0)  # the same noise keys
        model = _bert_like().to(torch.bfloat16)
        opt, sched = _build(model, mode, 6)
        opt.rounding_kernel = kernel
        gen = torch.Generator().manual_seed(3)
        for _ in range(6):
            opt.pre_step()
            model(torch.randn(8, 6, generator=gen).to(torch.bfloat16)).float().pow(2).mean().backward()
            opt.step()
            sched.step()
            opt.zero_grad()
        results[kernel] = [p.detach().clone() for p in model.parameters()]
        assert opt.fold_corrections == 0
    assert not _ADAM[0].failed  # the compiled kernel ran, not its eager fallback
    for a, b in zip(results["compiled"], results["eager"], strict=True):
        assert torch.equal(a, b)
