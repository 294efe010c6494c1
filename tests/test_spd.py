"""SPD's functions (hf_lpwd/optim/spd.py) against a float64 reference written here from the paper's equations.

The reference (Tian, Huang & Kira 2024, arXiv 2411.01713; AdamSPD's algorithm), per tensor:
θ̃ = θ − η·u;  c = −gᵀ(θ − θ₀);  if c < 0: r = min(1, max(0, (‖θ̃ − θ₀‖ − ‖θ − θ₀‖)/‖θ̃ − θ₀‖)),
θ ← θ̃ − λ·r·(θ̃ − θ₀); else θ ← θ̃.  Adam's u is written out here too (Kingma & Ba, bias-corrected).
"""

from __future__ import annotations

import math

import pytest
import torch

from hf_lpwd.optim.spd import (
    check_spd,
    check_spd_strength,
    deviation_ratio,
    lora_delta_norm,
    selection_condition,
    spd_decay_,
    spd_measure,
    spd_step_,
    spd_update,
)

SHAPES = [(7, 5), (11,), (3, 4, 2), (6, 6), (13,)]


def schedule(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` then cosine to 0 (1-based step)."""
    if step <= warmup:
        return peak * step / warmup
    progress = (step - warmup) / (total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class ReferenceAdamSPD:
    """Adam + SPD in float64, one tensor at a time, from the equations above."""

    def __init__(self, params: list[torch.Tensor], strength: float, betas=(0.9, 0.999), eps=1e-8):
        self.params = [p.detach().double().clone() for p in params]
        self.anchors = [p.clone() for p in self.params]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.strength, self.betas, self.eps, self.t = strength, betas, eps, 0
        self.log: list[tuple[bool, float]] = []  # (selected, r) per tensor per step

    def step(self, grads: list[torch.Tensor], lr: float) -> list[float]:
        self.t += 1
        b1, b2 = self.betas
        decays = []
        for i, g in enumerate(grads):
            g = g.double()
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / (1 - b1**self.t)
            v_hat = self.v[i] / (1 - b2**self.t)
            theta, theta0 = self.params[i], self.anchors[i]
            stepped = theta - lr * m_hat / (v_hat.sqrt() + self.eps)
            c = -float((g * (theta - theta0)).sum())
            decay = 0.0
            if c < 0:
                new_norm = float((stepped - theta0).norm())
                old_norm = float((theta - theta0).norm())
                r = min(1.0, max(0.0, (new_norm - old_norm) / new_norm))
                decay = self.strength * r
                stepped = stepped - decay * (stepped - theta0)
                self.log.append((True, r))
            else:
                self.log.append((False, 0.0))
            self.params[i] = stepped
            decays.append(decay)
        return decays


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected).norm() / expected.norm())


@pytest.mark.parametrize("strength", [1.0, 0.3])
def test_adamw_with_spd_matches_float64_reference(strength: float) -> None:
    """torch's AdamW (λ = 0) + spd_measure/spd_decay_ in fp32 over a warm-up + cosine schedule."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in SHAPES]
    anchors = [p.detach().clone() for p in params]
    drifts = [torch.randn(s, generator=gen) for s in SHAPES]  # a persistent part, so layers make progress
    reference = ReferenceAdamSPD(params, strength)
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    total = 30
    for step in range(1, total + 1):
        lr = schedule(step, total, peak=1e-2, warmup=5)
        optimizer.param_groups[0]["lr"] = lr
        for p, drift in zip(params, drifts, strict=True):
            p.grad = 0.5 * drift + torch.randn(p.shape, generator=gen)
        grads = [p.grad.clone() for p in params]
        conditions, norms = spd_measure(params, anchors, [p.grad for p in params])
        optimizer.step()
        decays = spd_decay_(params, anchors, conditions, norms, strength)
        expected = reference.step(grads, lr)
        for decay, want in zip(decays, expected, strict=True):
            # r = (‖θ̃−θ₀‖ − ‖θ−θ₀‖)/‖θ̃−θ₀‖ cancels: fp32 norms give it to ~1e-4 relative (AdamSPD's too).
            assert (float(decay) > 0) == (want > 0)
            assert float(decay) == pytest.approx(want, rel=1e-2)
        for p, want, p0 in zip(params, reference.params, reference.anchors, strict=True):
            assert relative_error(p.detach(), want) < 1e-6
            assert relative_error(p.detach().double() - p0, want - p0) < 1e-4  # the deviation itself
    decayed = sum(1 for selected, r in reference.log if selected and r > 0)
    free = sum(1 for selected, _ in reference.log if not selected)
    assert decayed >= 10 and free >= 10, (decayed, free)  # both branches taken, many times


def test_spd_step_and_spd_update_equal_the_reference_in_float64() -> None:
    """Given u (any base), spd_step_ and the literal spd_update are the equation to float64 rounding."""
    gen = torch.Generator().manual_seed(1)
    theta0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    theta = [t + 0.1 * torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theta0]
    grads = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theta]
    updates = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theta]
    lr, strength = 0.05, 0.7
    expected = []
    for t, t0, g, u in zip(theta, theta0, grads, updates, strict=True):
        stepped = t - lr * u
        if -float((g * (t - t0)).sum()) < 0:
            new, old = float((stepped - t0).norm()), float((t - t0).norm())
            stepped = stepped - strength * min(1.0, max(0.0, (new - old) / new)) * (stepped - t0)
        expected.append(stepped)
    literal = [
        spd_update(t, t0, g, u, lr, strength)
        for t, t0, g, u in zip(theta, theta0, grads, updates, strict=True)
    ]
    in_place = [t.clone() for t in theta]
    spd_step_(in_place, theta0, grads, updates, lr, strength)
    for got, lit, want in zip(in_place, literal, expected, strict=True):
        assert relative_error(got, want) < 1e-14
        assert relative_error(lit, want) < 1e-14
    assert any(not torch.equal(w, t - lr * u) for w, t, u in zip(expected, theta, updates, strict=True)), (
        "none decayed"
    )


def _one_tensor(grad_sign: float, update_sign: float, strength: float = 1.0):
    """θ₀ random, θ = θ₀ + δ; gradient ±δ, update ±δ (so u may disagree with g, as Adam's can); η = 1/2, so
    η·u is exact and θ − η·u rounds once whichever way it is computed."""
    gen = torch.Generator().manual_seed(2)
    theta0 = torch.randn(20, generator=gen, dtype=torch.float64)
    delta = torch.randn(20, generator=gen, dtype=torch.float64)
    theta = theta0 + delta
    grad, update = grad_sign * delta, update_sign * delta
    param = theta.clone()
    decays = spd_step_([param], [theta0], [grad], [update], 0.5, strength)
    return theta0, theta, theta - 0.5 * update, param, float(decays[0])


def test_progress_that_agrees_with_the_gradient_is_not_decayed() -> None:
    """−g along θ − θ₀ (c > 0): the layer moves freely, exactly the base step."""
    _, _, stepped, param, decay = _one_tensor(grad_sign=-1.0, update_sign=-1.0)
    assert decay == 0.0 and torch.equal(param, stepped)


def test_disagreeing_layer_is_projected_back_to_its_previous_deviation() -> None:
    """g along θ − θ₀ (c < 0) but the update still grows the deviation: with λ = 1 the deviation's norm is
    projected back to ‖θ − θ₀‖, direction kept; with λ = 0.5 half of the growth is removed."""
    theta0, theta, stepped, param, decay = _one_tensor(grad_sign=1.0, update_sign=-1.0)
    old, new = float((theta - theta0).norm()), float((stepped - theta0).norm())  # new = 1.5·old
    assert decay == pytest.approx((new - old) / new, rel=1e-12)
    assert float((param - theta0).norm()) == pytest.approx(old, rel=1e-12)
    torch.testing.assert_close(param - theta0, (stepped - theta0) * old / new, rtol=1e-12, atol=0)
    _, _, _, half, decay = _one_tensor(grad_sign=1.0, update_sign=-1.0, strength=0.5)
    assert float((half - theta0).norm()) == pytest.approx(new - 0.5 * (new - old), rel=1e-12)


def test_disagreeing_layer_whose_step_shrinks_the_deviation_is_not_decayed() -> None:
    """c < 0 and θ̃ closer to θ₀ than θ: r is clipped to 0."""
    _, _, stepped, param, decay = _one_tensor(grad_sign=1.0, update_sign=1.0)
    assert decay == 0.0 and torch.equal(param, stepped)


def test_deviation_ratio_edge_cases() -> None:
    theta0 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    grad = torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64)
    moved = theta0 + torch.tensor([1.5, 0.0, -2.0], dtype=torch.float64)  # deviation norm 2.5, exactly
    # θ = θ₀: c = 0 (not selected); a ratio from θ₀ is 1 (all the deviation is new).
    assert float(selection_condition(grad, theta0, theta0)) == 0.0
    assert float(deviation_ratio(moved, theta0, theta0)) == 1.0
    param = theta0.clone()
    spd_step_([param], [theta0], [grad], [-(moved - theta0)], 1.0, 1.0)
    assert torch.equal(param, moved)  # the first step from θ₀ is never decayed
    # zero gradient: c = 0, not selected, whatever the update.
    zero = torch.zeros(3, dtype=torch.float64)
    assert float(selection_condition(zero, moved, theta0)) == 0.0
    param = moved.clone()
    spd_step_([param], [theta0], [zero], [-(moved - theta0)], 1.0, 1.0)
    assert torch.equal(param, moved + (moved - theta0))
    # θ̃ = θ₀: 0, not NaN (AdamSPD's 0/0).
    assert float(deviation_ratio(theta0, moved, theta0)) == 0.0
    param = moved.clone()
    decays = spd_step_([param], [theta0], [moved - theta0], [moved - theta0], 1.0, 1.0)
    assert float(decays[0]) == 0.0 and torch.equal(param, theta0)
    # a step that keeps the norm: r = 0; one that doubles it: r = 1/2; clipped at 1 from θ₀.
    rotated = theta0 + torch.tensor([0.0, 2.5, 0.0], dtype=torch.float64)
    assert float(deviation_ratio(rotated, moved, theta0)) == 0.0
    assert float(deviation_ratio(theta0 + 2 * (moved - theta0), moved, theta0)) == 0.5


def test_unselected_fp32_tensor_is_bitwise_untouched_and_bf16_anchor_math_runs_in_fp32() -> None:
    gen = torch.Generator().manual_seed(3)
    theta0 = torch.randn(64, generator=gen)
    param = theta0 + 0.01 * torch.randn(64, generator=gen)
    before = param.clone()
    grad = -(param - theta0)  # c > 0
    conditions, norms = spd_measure([param], [theta0], [grad])
    param.add_(torch.randn(64, generator=gen))  # any step
    stepped = param.clone()
    spd_decay_([param], [theta0], conditions, norms, 1.0)
    assert torch.equal(param, stepped) and not torch.equal(param, before)
    # bf16: the condition is summed in fp32, equal to the float64 sum of the bf16 values to fp32 rounding.
    a, g = torch.randn(4096, generator=gen).bfloat16(), torch.randn(4096, generator=gen).bfloat16()
    exact = -float((g.double() * (a.double() - 0.0)).sum())
    got = selection_condition(g, a, torch.zeros_like(a))
    assert got.dtype == torch.float32 and float(got) == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"mode": "wd"}, r"spd=true is defined on the timing 'rwd' only, not 'wd'.*copy of every θ − θ₀"),
        ({"mode": "pwd"}, r"not 'pwd' \(pwd decays before the forward.*set mode='rwd'$"),
        ({"mode": "lpwd"}, r"not 'lpwd'.*set mode='rwd' with layerwise=true"),
        ({"mode": "rwd", "cautious": True}, r"spd=true and cautious=true are two values of the decay's mask"),
        ({"mode": "rwd", "lr_coupling": "independent"}, r"lr_coupling='independent' with spd=true"),
        ({"mode": "rwd", "decay_timescale": 2.0}, r"decay_timescale with spd=true.*give weight_decay"),
        ({"mode": "rwd", "weight_decay": 1.5},
         r"strength \(weight_decay with spd=true\) must be in \[0, 1\], got 1.5"),
    ],
)
def test_check_spd_refuses_settings_it_does_not_define(values: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        check_spd(values)
    flags = {"mode": "--weight_decay_mode", "spd": "--lpwd_spd"}
    with pytest.raises(ValueError, match=r"--lpwd_spd=true" if "cautious" not in values else "--lpwd_spd"):
        check_spd(values, lambda name: flags.get(name, f"--lpwd_{name}"))
    for target_free in ({"mode": "rwd"}, {"mode": "rwd", "weight_decay": 1.0, "lr_coupling": "coupled"}):
        check_spd(target_free)  # the targets (init, zero) are both SPD's: no target in the check


def test_bad_strength_and_lengths_are_refused_before_anything_is_written() -> None:
    param, anchor = torch.ones(3), torch.zeros(3)
    for strength in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength \(weight_decay\) must be in \[0, 1\]"):
            check_spd_strength(strength)
        with pytest.raises(ValueError, match="strength"):
            spd_step_([param], [anchor], [torch.ones(3)], [torch.ones(3)], 0.1, strength)
        assert torch.equal(param, torch.ones(3))
    with pytest.raises(ValueError, match="lengths"):
        spd_step_([param], [anchor, anchor], [torch.ones(3)], [torch.ones(3)], 0.1, 1.0)
    assert torch.equal(param, torch.ones(3))


def test_lora_conditions_of_a_and_b_equal_delta_w_condition_on_a_peft_model() -> None:
    """⟨g_A, A⟩ = ⟨g_B, B⟩ = ⟨G, ΔW⟩ with anchors 0 (SPD's LoRA), on a real PEFT model in float64; and
    ‖s·B·A‖ from the Gram matrices equals the formed product's norm."""
    peft = pytest.importorskip("peft")
    from tests.tiny import tiny_bert

    torch.manual_seed(0)
    model = (
        peft.get_peft_model(
            tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
        )
        .double()
        .eval()
    )
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    scaling = layer.scaling["default"]
    ids = torch.randint(0, 64, (3, 10))
    # At PEFT's init B = 0: ΔW = 0, g_A = 0, both conditions 0 (nothing selected).
    model(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss.backward()
    assert torch.count_nonzero(lora_b) == 0 and torch.count_nonzero(lora_a.grad) == 0
    zero_a, zero_b = torch.zeros_like(lora_a), torch.zeros_like(lora_b)
    assert float(selection_condition(lora_a.grad, lora_a, zero_a)) == 0.0
    assert float(selection_condition(lora_b.grad, lora_b, zero_b)) == 0.0
    # After B has moved: the identity, and ⟨G, ΔW⟩ as the derivative of L(W + α·ΔW) at α = 1.
    with torch.no_grad():
        lora_b.normal_(0.0, 1.0)
    model.zero_grad()
    loss_of = lambda: model(input_ids=ids, labels=torch.tensor([0, 1, 1])).loss  # noqa: E731
    loss_of().backward()
    c_a = float(selection_condition(lora_a.grad, lora_a, zero_a))
    c_b = float(selection_condition(lora_b.grad, lora_b, zero_b))
    assert c_a != 0.0 and c_b == pytest.approx(c_a, rel=1e-10)
    step, original = 1e-3, lora_b.detach().clone()
    losses = []
    for alpha in (1 + step, 1 - step):  # B·(α) scales ΔW by α, all other adapters untouched
        with torch.no_grad():
            lora_b.copy_(alpha * original)
        with torch.no_grad():
            losses.append(float(loss_of()))
    with torch.no_grad():
        lora_b.copy_(original)
    assert -(losses[0] - losses[1]) / (2 * step) == pytest.approx(c_a, rel=1e-5)
    formed = torch.linalg.matrix_norm(scaling * lora_b.detach() @ lora_a.detach())
    assert float(lora_delta_norm(lora_a, lora_b, scaling)) == pytest.approx(float(formed), rel=1e-12)


def test_complex_tensor_is_its_real_components() -> None:
    """Complex θ: the condition, the norms and the decay of its real view (as torch's optimizers treat it)."""
    gen = torch.Generator().manual_seed(4)
    shape = (5, 3)
    theta0 = torch.randn(shape, generator=gen, dtype=torch.complex128)
    theta = theta0 + torch.randn(shape, generator=gen, dtype=torch.complex128)
    grad = theta - theta0  # c < 0
    update = -(theta - theta0)  # grows the deviation: decayed
    as_complex, as_real = theta.clone(), torch.view_as_real(theta).clone()
    d_complex = spd_step_([as_complex], [theta0], [grad], [update], 0.5, 0.8)
    views = [torch.view_as_real(t) for t in (theta0, grad, update)]
    d_real = spd_step_([as_real], [views[0]], [views[1]], [views[2]], 0.5, 0.8)
    assert float(d_complex[0]) > 0 and float(d_complex[0]) == float(d_real[0])
    assert torch.equal(torch.view_as_real(as_complex), as_real)


@pytest.mark.parametrize("path", ["compiled", "chunked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("toward_zero", [False, True])
def test_deviation_stats_equal_the_float64_sums(dtype: torch.dtype, toward_zero: bool, path: str) -> None:
    """A tensor of more than two chunks, through the compiled reduction (plain tensors) and the chunked one
    (DTensors, complex, fp64; θ − θ₀ formed a chunk at a time): c and ‖θ − θ₀‖ as the float64 sums of the
    same values, after the step (no g) too."""
    from hf_lpwd.optim.spd import CHUNK, _chunked_stats, deviation_stats

    def stats(theta, anchor, grad=None):
        if path == "compiled":
            return deviation_stats(theta, anchor, grad)
        return _chunked_stats(theta, anchor, grad)

    gen = torch.Generator().manual_seed(6)
    n = 2 * CHUNK + 17
    theta0 = torch.randn(n, generator=gen).to(dtype)
    theta = (theta0.float() + 0.01 * torch.randn(n, generator=gen)).to(dtype)
    grad = torch.randn(n, generator=gen).to(dtype)
    anchor = None if toward_zero else theta0
    dev = theta.double() - (0.0 if toward_zero else theta0.double())
    condition, norm = stats(theta, anchor, grad)
    assert condition.dtype == norm.dtype == torch.float32
    assert float(condition) == pytest.approx(-float((grad.double() * dev).sum()), rel=1e-4)
    assert float(norm) == pytest.approx(float(dev.norm()), rel=1e-5)
    after = stats(theta, anchor)
    assert after[0] is None and float(after[1]) == pytest.approx(float(dev.norm()), rel=1e-5)


@pytest.mark.parametrize("toward_zero", [False, True])
def test_batched_measure_and_decay_equal_the_float64_rule_per_tensor(toward_zero: bool) -> None:
    """Large tensors of one size are measured and decayed SPD_CHUNK at a time (7 = 4 + 2 + 1 calls), small
    ones of one size stacked in one call, the others alone, fp64 and non-contiguous ones by the eager path:
    every c, ‖θ − θ₀‖ and decayed θ is the float64 rule's for its own tensor (no value leaks between the
    tensors of a call), unselected tensors untouched."""
    from hf_lpwd.optim import spd

    gen = torch.Generator().manual_seed(11)
    big = (spd.SMALL_NUMEL // 128 + 1, 128)
    shapes = [(6, 5)] * 7 + [big] * 7 + [(9,), (4, 4)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    params.append(torch.randn(5, generator=gen, dtype=torch.float64))
    params.append(torch.randn(6, 4, generator=gen).t())  # non-contiguous
    anchors = [None if toward_zero else p + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
               for p in params]
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    dev = [p.double() - (0.0 if a is None else a.double()) for p, a in zip(params, anchors, strict=True)]
    conditions, norms = spd_measure(params, anchors, grads)
    for c, n, g, d in zip(conditions, norms, grads, dev, strict=True):
        terms = g.double() * d  # c is a sum of cancelling terms: fp32 error relative to Σ|terms|
        assert abs(float(c) + float(terms.sum())) < 1e-6 * float(terms.abs().sum())
        assert float(n) == pytest.approx(float(d.norm()), rel=1e-6)
    # θ̃ against the gradient (as Adam's u can be): a selected tensor's deviation grows, so r > 0
    stepped = [p + 0.05 * g for p, g in zip(params, grads, strict=True)]
    before = [t.clone() for t in stepped]
    decays = spd_decay_(stepped, anchors, conditions, norms, 0.7)
    chosen = [float(c) < 0 for c in conditions]
    assert 2 < sum(chosen) < len(chosen)  # both kinds in the calls
    for i, (theta, was, anchor) in enumerate(zip(stepped, before, anchors, strict=True)):
        if not chosen[i]:
            assert torch.equal(theta, was) and float(decays[i]) == 0.0
            continue
        origin = 0.0 if anchor is None else anchor.double()
        new_norm = float((was.double() - origin).norm())
        r = min(1.0, max(0.0, (new_norm - float(dev[i].norm())) / new_norm))
        want = was.double() - 0.7 * r * (was.double() - origin)
        # r is a difference of two fp32 norms over one of them: a few ulps (6e-8 each) absolute
        assert float(decays[i]) == pytest.approx(0.7 * r, rel=1e-5, abs=5e-7)
        assert relative_error(theta, want) < 1e-6
    assert sum(float(d) > 0 for d in decays) == sum(chosen)
    assert sum(chosen[:7]) > 1 and sum(chosen[7:14]) > 1  # both call kinds decay several tensors
    for kernel in (spd._MEASURE, spd._DECAY, spd._MEASURE_ROWS, spd._DECAY_ROWS):
        assert not kernel.failed
