"""``LPWD(spd=True)``: Selective Projection Decay inside the optimizer and the Trainer, against float64.

The reference is written here from the published rule (Tian, Huang & Kira 2024, arXiv 2411.01713, as read in
the authors' ``adamSPD.py``; see ``hf_lpwd/optim/spd.py``), per tensor, with u the base's direction
(``tests/reference.py``: Adam, SGD with momentum)::

    θ̃ = θ − η_t·u;  c = −⟨g, θ − θ₀⟩;  if c < 0:  r = clip((‖θ̃ − θ₀‖ − ‖θ − θ₀‖)/‖θ̃ − θ₀‖, 0, 1),
    θ ← θ̃ − λ·r·(θ̃ − θ₀);  else θ ← θ̃

over a warm-up + cosine schedule (written out: the reference does not call transformers) with two groups at
different lrs (LLRD-like) and λ per group; θ₀ the starting weights (target ``init``) or 0 (target ``zero``,
SPD's LoRA form).  Then refusals, resume, bf16, the setting, and a PEFT LoRA model through the Trainer.
"""

from __future__ import annotations

import copy
import io
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from hf_lpwd import LPWD, LPWDConfig, LPWDTrainer, LPWDTrainingArguments
from tests.reference import BETAS, EPS, AdamDirection, SGDMomentumDirection
from tests.tiny import ROOT, TokenDataset, common_args, tiny_llama

STEPS, WARMUP, PEAK = 24, 4, 0.05
LLRD = (1.0, 0.6)  # lr multiplier per group
STRENGTHS = (1.0, 0.5)  # SPD's λ per group
SHAPES = ((6, 5), (9,), (4, 3, 2))  # three tensors per group: SPD selects each on its own
BASES = {
    "adamw": ({"betas": BETAS, "eps": EPS}, AdamDirection),
    "sgd": ({"momentum": 0.9}, SGDMomentumDirection),
}


def schedule(step: int) -> float:
    """transformers' linear warm-up + cosine, written out (0-based step; step 0's lr is 0)."""
    if step < WARMUP:
        return step / WARMUP
    return 0.5 * (1.0 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def gradients(seed: int, scale: float) -> list[list[list[torch.Tensor]]]:
    """g[step][group][tensor], float64: a persistent drift plus noise, so layers make progress and stall."""
    gen = torch.Generator().manual_seed(seed)
    drift = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in LLRD]
    return [
        [[scale * (0.2 * d + torch.randn(d.shape, generator=gen, dtype=torch.float64)) for d in ds]
         for ds in drift]
        for _ in range(STEPS)
    ]


def reference(base: str, starts, grads, toward_init: bool):
    """(weights after step 1, after the last step, log of (selected, decayed) per tensor step)."""
    _, direction = BASES[base]
    thetas = [[t.clone() for t in group] for group in starts]
    dirs = [[direction() for _ in group] for group in starts]
    log, first = [], None
    for step in range(STEPS):
        for i, (mult, lam) in enumerate(zip(LLRD, STRENGTHS, strict=True)):
            eta = PEAK * mult * schedule(step)
            for j, theta in enumerate(thetas[i]):
                g = grads[step][i][j]
                anchor = starts[i][j] if toward_init else torch.zeros_like(theta)
                stepped = theta - eta * dirs[i][j](g)
                c = -float((g * (theta - anchor)).sum())
                decayed = False
                if c < 0:
                    new, old = float((stepped - anchor).norm()), float((theta - anchor).norm())
                    r = min(1.0, max(0.0, (new - old) / new)) if new > 0 else 0.0
                    stepped = stepped - lam * r * (stepped - anchor)
                    decayed = r > 0
                log.append((c < 0, decayed))
                thetas[i][j] = stepped
        if step == 1:
            first = [[t.clone() for t in group] for group in thetas]
    return first, thetas, log


def build(base: str, starts, target: str, **extra):
    params = [[torch.nn.Parameter(t.float()) for t in group] for group in starts]
    groups = [
        {"params": ps, "weight_decay": lam, "lr_multiplier": mult}
        for ps, lam, mult in zip(params, STRENGTHS, LLRD, strict=True)
    ]
    base_kwargs, _ = BASES[base]
    opt = LPWD(groups, base=base, mode="rwd", lr=PEAK, spd=True, decay_target=target, **base_kwargs, **extra)
    return params, opt, get_cosine_schedule_with_warmup(opt, WARMUP, STEPS)


def train(params, opt, sched, grads, steps: range):
    first = None
    for step in steps:
        for group, gs in zip(params, grads[step], strict=True):
            for p, g in zip(group, gs, strict=True):
                p.grad = g.float()
        opt.step()
        sched.step()
        if step == 1:
            first = [[p.detach().double().clone() for p in group] for group in params]
    return first


def starting_weights(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(s, generator=gen, dtype=torch.float64).float().double() for s in SHAPES] for _ in LLRD
    ]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("target", ["init", "zero"])
@pytest.mark.parametrize("base", list(BASES))
def test_spd_matches_the_float64_reference(base: str, target: str) -> None:
    """Adam/SGD + SPD toward θ₀ (the paper) and toward 0 (the LoRA form), first and last steps."""
    starts = starting_weights(0)
    grads = gradients(1, 1.0 if base == "adamw" else 0.3)
    params, opt, sched = build(base, starts, target)
    assert (target == "init") == bool(opt.initial_weights)  # θ₀ is stored only toward init
    first = train(params, opt, sched, grads, range(STEPS))
    want_first, want_last, log = reference(base, starts, grads, target == "init")
    got_last = [[p.detach().double() for p in group] for group in params]
    for got_groups, want_groups in ((first, want_first), (got_last, want_last)):
        for got, want in zip(sum(got_groups, []), sum(want_groups, []), strict=True):
            rel = relative_error(got, want)
            assert rel < 1e-5, f"{base} toward {target}: relative error {rel:.2e}"
    decayed = sum(1 for _, d in log if d)
    free = sum(1 for selected, _ in log if not selected)
    assert decayed >= 10 and free >= 10, (decayed, free)  # both branches, many times


def test_spd_changes_the_trajectory_and_unselected_steps_are_the_base_bitwise() -> None:
    """Step 1 starts at θ₀ (c = 0: nothing selected): LPWD(spd) is torch's AdamW with λ = 0 bit for bit.
    Over the run the decay moves the weights by far more than the reference tolerance."""
    starts = starting_weights(2)
    grads = gradients(3, 1.0)
    params, opt, sched = build("adamw", starts, "init")
    stock_params = [torch.nn.Parameter(t.float()) for t in sum(starts, [])]
    stock = torch.optim.AdamW(
        [{"params": stock_params[:3], "lr": PEAK}, {"params": stock_params[3:], "lr": PEAK * LLRD[1]}],
        betas=BETAS, eps=EPS, weight_decay=0.0,
    )
    stock_sched = get_cosine_schedule_with_warmup(stock, WARMUP, STEPS)
    for step in range(STEPS):
        for p, g in zip(stock_params, sum(grads[step], []), strict=True):
            p.grad = g.float()
        stock.step()
        stock_sched.step()
        train(params, opt, sched, grads, range(step, step + 1))
        if step == 1:
            assert all(torch.equal(a, b) for a, b in zip(sum(params, []), stock_params, strict=True))
    moved = [relative_error(a.detach().double(), b.detach().double())
             for a, b in zip(sum(params, []), stock_params, strict=True)]
    assert max(moved) > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "wd"}, r"LPWD: spd=true is defined on the timing 'rwd' only, not 'wd'"),
        ({"mode": "pwd"}, r"not 'pwd' \(pwd decays before the forward"),
        ({"mode": "rwd", "cautious": True}, r"LPWD: spd=true and cautious=true"),
        ({"mode": "rwd", "lr_coupling": "corrected"}, r"lr_coupling='corrected' with LPWD: spd=true"),
        ({"mode": "rwd", "weight_decay": 1.5}, r"weight_decay \(--weight_decay\) with LPWD: spd=true\) must "
         r"be in \[0, 1\], got 1.5: SPD's λ is a fraction, not multiplied by the lr"),
        ({"mode": "rwd", "spd": "yes"}, r"LPWD: spd must be true or false"),
    ],
)
def test_the_optimizer_refuses_what_spd_does_not_define(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LPWD([torch.nn.Parameter(torch.ones(3))], lr=0.1, **{"spd": True, **kwargs})


def test_a_group_strength_above_one_is_refused_before_anything_is_written() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = LPWD([p], mode="rwd", lr=0.1, weight_decay=0.5, spd=True)
    opt.param_groups[0]["weight_decay"] = 2.0  # e.g. a search trial
    p.grad = torch.ones(3)
    match = r"param group 0's weight_decay \(--weight_decay\)\) must be in \[0, 1\]"
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state[p]


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _build_model_opt(model: torch.nn.Module, total: int):
    opt = LPWD(model.parameters(), mode="rwd", lr=0.05, weight_decay=1.0, spd=True, decay_target="init")
    sched = get_cosine_schedule_with_warmup(opt, 2, total)
    return opt, sched


def _train_model(model, opt, sched, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 6, generator=gen)
        (model(x) - 1.0).pow(2).mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_resume_deepcopy_and_pickle_are_bitwise() -> None:
    """SPD keeps no state of its own (θ₀ is the target's): a resumed run is the uninterrupted one, bitwise."""
    total = 12
    model = _model()
    opt, sched = _build_model_opt(model, total)
    _train_model(model, opt, sched, 6, seed=1)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    twin_model, twin_opt = copy.deepcopy((model, opt))
    assert twin_opt.spd and pickle.loads(pickle.dumps(opt)).spd and "spd=True" in repr(opt)
    twin_sched = get_cosine_schedule_with_warmup(twin_opt, 2, total)
    twin_sched.load_state_dict(sched.state_dict())
    for group, original in zip(twin_opt.param_groups, opt.param_groups, strict=True):
        group["lr"] = original["lr"]
    _train_model(model, opt, sched, 6, seed=2)
    _train_model(twin_model, twin_opt, twin_sched, 6, seed=2)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = _model(seed=9)
    resumed.load_state_dict(checkpoint["model"])
    opt2, sched2 = _build_model_opt(resumed, total)
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    _train_model(resumed, opt2, sched2, 6, seed=2)
    for a, b, c in zip(model.parameters(), resumed.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_bf16_spd_decay_is_stochastically_rounded_and_unbiased(caplog) -> None:
    """bf16 weights: the base's own step (here exact: SGD, η·g on the bf16 grid), then the SPD decay
    d·(θ̃ − θ₀), below half a bf16 spacing, written with stochastic rounding: its mean over noise seeds is
    the float64 value; the precision notice says the update is not in the rounding."""
    gen = torch.Generator().manual_seed(5)
    n = 64
    spacing = 2.0**-7  # bf16 in [1, 2)
    start = (1.25 + 0.5 * torch.rand(n, generator=gen)).to(torch.bfloat16)
    delta = torch.randint(1, 3, (n,), generator=gen).double() * spacing
    theta = (start.double() + delta).to(torch.bfloat16)
    grad = (delta * 3.0 / 0.5).to(torch.bfloat16)  # η = 0.5: θ̃ − θ₀ = −2δ, exact; c < 0, r = 1/2
    stepped = theta.double() - 0.5 * grad.double()
    lam = 0.02  # d = λ·r = 0.01: d·|θ̃ − θ₀| ≤ 0.04 spacing
    r = float(((stepped - start.double()).norm() - delta.norm()) / (stepped - start.double()).norm())
    want = stepped - lam * r * (stepped - start.double())
    total, runs = torch.zeros(n, dtype=torch.float64), 300
    for seed in range(runs):
        torch.manual_seed(seed)
        p = torch.nn.Parameter(start.clone())
        opt = LPWD([p], base="sgd", mode="rwd", lr=0.5, weight_decay=lam, spd=True, decay_target="init")
        with torch.no_grad():
            p.copy_(theta)
        p.grad = grad.clone()
        with caplog.at_level("WARNING", logger="hf_lpwd"):
            opt.step()
        total += p.detach().double()
    assert any("spd=True" in r.getMessage() and "rounded alone" in r.getMessage() for r in caplog.records)
    mean = total / runs
    assert (mean - want).abs().max().item() < 0.1 * spacing
    kept = (mean - stepped).abs().max().item()
    assert kept > 0.2 * (want - stepped).abs().max().item()  # the decay is kept


# --------------------------------------------------------------------------- the setting and the Trainer
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({}, r"--lpwd_spd=true is defined on the timing 'rwd' only, not 'lpwd'.*"
             r"set --weight_decay_mode='rwd' with --lpwd_layerwise=true"),
        ({"weight_decay_mode": "wd"}, r"--lpwd_spd=true is defined on the timing 'rwd' only, not 'wd'"),
        ({"weight_decay_mode": "rwd", "lpwd_cautious": True},
         r"--lpwd_spd=true and --lpwd_cautious=true: SPD and cautious decay are two values of the "
         r"decay's mask"),
        ({"weight_decay_mode": "wd", "lpwd_cautious": True}, r"--lpwd_spd=true and --lpwd_cautious=true"),
        ({"weight_decay_mode": "rwd", "lpwd_lr_coupling": "independent"},
         r"--lpwd_lr_coupling='independent' with --lpwd_spd=true"),
        ({"weight_decay_mode": "rwd", "lpwd_decay_timescale": 3.0},
         r"--lpwd_decay_timescale with --lpwd_spd=true.*give --weight_decay"),
        ({"weight_decay_mode": "rwd", "weight_decay": 1.5},
         r"SPD's strength \(--weight_decay with --lpwd_spd=true\) must be in \[0, 1\]"),
    ],
)
def test_trainer_refusals_name_the_flags_before_any_output(tmp_path: Path, overrides: dict,
                                                           match: str) -> None:
    from transformers import TrainingArguments

    from hf_lpwd.trainer import check_training_arguments

    with pytest.raises(ValueError, match=match):
        LPWDTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, lpwd_spd=True, **overrides)
    assert not (tmp_path / "out").exists()
    if "lpwd_cautious" in overrides:
        return
    plain = TrainingArguments(output_dir=str(tmp_path / "plain"), use_cpu=True)
    plain.lpwd_spd = True  # a Trainer with LPWDMixin on other arguments (e.g. TRL's): the same check
    for key, value in overrides.items():
        setattr(plain, key, value)
    if "weight_decay_mode" not in overrides:
        plain.weight_decay_mode = "lpwd"
    with pytest.raises(ValueError, match=match.split(".*")[0]):
        check_training_arguments(plain)
    assert not (tmp_path / "plain").exists()


def test_the_setting_from_flag_config_and_old_configs(tmp_path: Path) -> None:
    from transformers import HfArgumentParser

    (parsed,) = HfArgumentParser(LPWDTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--lpwd_spd", "true",
         "--weight_decay_mode", "rwd", "--weight_decay", "0.5"]
    )
    assert parsed.lpwd_spd is True and parsed.to_lpwd_config().spd is True
    config = LPWDConfig.from_dict({"mode": "rwd", "spd": True, "weight_decay": 1.0, "decay_target": "init"})
    config.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "lpwd_config.json").read_text())["spd"] is True
    merged = LPWDTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True,
                                   lpwd_config=str(tmp_path / "saved"))
    assert (merged.lpwd_spd, merged.weight_decay_mode, merged.weight_decay) == (True, "rwd", 1.0)
    for fixture in ("checkpoint_v0_2_0", "checkpoint_v0_3_0"):  # written before SPD: no key, SPD off
        folder = ROOT / "tests" / "data" / fixture / "checkpoint-3"
        assert "spd" not in json.loads((folder / "lpwd_config.json").read_text())
        assert LPWDConfig.from_pretrained(folder).spd is False
    with pytest.raises(ValueError, match=r"LPWDConfig.spd=true is defined on the timing 'rwd' only, not 'pwd'"
                                         r".*set LPWDConfig.mode='rwd'"):
        LPWDConfig.from_dict({"mode": "pwd", "spd": True})
    with pytest.raises(ValueError, match=r"LPWDConfig.spd=true and LPWDConfig.cautious=true"):
        LPWDConfig.from_dict({"mode": "wd", "spd": True, "cautious": True})
    with pytest.raises(ValueError, match=r"LPWDConfig.spd must be true or false"):
        LPWDConfig.from_dict({"mode": "rwd", "spd": "on"})


def _peft_trainer(tmp_path: Path, target: str, **overrides):
    import peft
    from transformers import AutoModelForCausalLM

    tiny_llama(seed=0).save_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    args = LPWDTrainingArguments(
        **common_args(tmp_path, **{"optim": "sgd", "learning_rate": 0.5, "weight_decay": 1.0, **overrides}),
        weight_decay_mode="rwd", lpwd_spd=True, lpwd_decay_target=target,
    )
    return model, LPWDTrainer(model=model, args=args, train_dataset=TokenDataset(8, causal_lm=True))


@pytest.mark.parametrize("target", ["init", "zero"])
def test_peft_lora_through_the_trainer_pulls_a_and_b_where_the_target_says(tmp_path: Path,
                                                                          target: str) -> None:
    """``--lpwd_spd true --weight_decay_mode rwd`` on a PEFT LoRA model: the adapters are the trainable
    weights.  B starts at B₀ = 0, so B is pulled toward 0 with either target (ΔW = s·B·A toward 0).  A
    starts at a random A₀: target ``init`` pulls A toward A₀ (the paper's rule on every tensor), target
    ``zero`` (SPD's LoRA form, the authors' ``pre=None``) toward 0.  One controlled SGD step (η = 0.5,
    λ = 1) with g = 3·(θ − anchor)/η: c < 0, θ̃ − anchor = −2·(θ − anchor), r = 1/2, so
    θ ← anchor − (θ − anchor)."""
    model, trainer = _peft_trainer(tmp_path, target)
    trainer.create_optimizer()
    opt = trainer.lpwd_optimizer
    assert opt.spd and opt.mode == "rwd" and opt.decay_target == target
    named = dict(model.named_parameters())
    lora_a = [n for n in named if ".lora_A." in n]
    lora_b = [n for n in named if ".lora_B." in n]
    trained = {n for g in opt.param_groups for n in g["param_names"]}
    assert lora_a and lora_b and set(lora_a + lora_b) == trained
    start = {n: named[n].detach().clone() for n in lora_a + lora_b}
    assert all(torch.count_nonzero(start[n]) == 0 for n in lora_b)
    anchor = {n: (start[n] if target == "init" else torch.zeros_like(start[n])) for n in lora_a + lora_b}
    if target == "init":  # θ₀ is the adapters at the start: A₀ random, B₀ = 0
        assert all(torch.equal(opt.initial_weights[named[n]], start[n]) for n in lora_a + lora_b)
    else:
        assert not opt.initial_weights
    frozen = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as if trained: A away from A₀, B away from 0
        for n in lora_a + lora_b:
            named[n].add_(torch.randn(named[n].shape, generator=gen))
    moved = {n: named[n].detach().clone() for n in lora_a + lora_b}
    for n in lora_a + lora_b:
        named[n].grad = 3.0 * (moved[n] - anchor[n]) / 0.5
    opt.step()
    for n in lora_a + lora_b:
        want = anchor[n] - (moved[n] - anchor[n])  # ‖θ − anchor‖ kept: the projection back (λ = 1)
        torch.testing.assert_close(named[n].detach(), want, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(named[n], frozen[n]) for n in frozen)


def test_a_spd_run_through_the_trainer_logs_the_rule_and_writes_the_card(tmp_path: Path, caplog) -> None:
    import transformers

    model, trainer = _peft_trainer(tmp_path, "zero", max_steps=2, learning_rate=0.05, weight_decay=0.5)
    transformers.logging.set_verbosity_info()
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level("INFO"):
            trainer.train()
    finally:
        transformers.logging.set_verbosity_warning()
        transformers.logging.disable_propagation()
    (table,) = {r.getMessage() for r in caplog.records if r.getMessage().startswith("LPWD mode=")}
    assert "spd=True" in table.splitlines()[0]
    (rule,) = [line for line in table.splitlines() if line.startswith("rule: ")]
    assert "selective projection decay (SPD) toward 0" in rule and "not multiplied by the lr" in rule
    header, row = table.splitlines()[1:3]  # SPD's decay follows the data, not the schedule: S unknown
    assert row.split()[header.split().index("shrink")] == "?"
    assert trainer.lpwd_config.record.shrink is None
    trainer.save_model()
    trainer.create_model_card(model_name="tiny")
    out = Path(trainer.args.output_dir)
    assert LPWDConfig.from_pretrained(out).spd is True
    card = (out / "README.md").read_text()
    assert "| selective projection decay (SPD) | True |" in card
    assert "λ a fraction in [0, 1] not multiplied by the lr" in card


def test_deepspeed_is_refused_with_spd(tmp_path: Path) -> None:
    """ZeRO hands the optimizer flat partitions of many tensors: SPD's per-layer condition would be taken over
    a partition.  Arguments with a DeepSpeed config dict (set after construction: the refusal reads it)."""
    from hf_lpwd.trainer import check_training_arguments

    args = LPWDTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, lpwd_spd=True,
                                 weight_decay_mode="rwd", weight_decay=0.5)
    args.deepspeed = {"zero_optimization": {"stage": 2}}
    with pytest.raises(ValueError, match=r"--lpwd_spd=true with DeepSpeed: ZeRO steps flat partitions"):
        check_training_arguments(args)
    args.lpwd_spd = False
    check_training_arguments(args)  # the same arguments without SPD pass
    assert not (tmp_path / "out").exists()
