"""Cautious AdamW's one-pass compiled kernel: when it runs, that it is the eager path's equation and state.

The equation itself is checked against a float64 reference in ``test_decay_rules``; here: the dispatch (which
steps take the compiled pass, which fall back), checkpoints that move between the two paths and torch's AdamW,
and the fallback when ``torch.compile`` cannot build the kernel.
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch

import hf_lpwd.optim.cautious_adamw as kernel_module
from hf_lpwd import LPWD

STEPS = 12


class Subclass(torch.Tensor):
    """A tensor subclass (as FSDP2's DTensor is): its ops may not be plain elementwise kernels."""


def make_params(
    dtype: torch.dtype = torch.float32, transpose: bool = False, subclass: bool = False
) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 9, generator=gen)
    weight = weight.t() if transpose else weight  # a non-contiguous parameter
    weight = weight.as_subclass(Subclass) if subclass else weight
    return [torch.nn.Parameter(weight.to(dtype)), torch.nn.Parameter(torch.randn(9, generator=gen).to(dtype))]


def train(params, steps: int = STEPS, opt: LPWD | None = None, start: int = 0, **kwargs):
    """wd + cautious on AdamW (λ = 2 on the matrix, 0 on the vector); the vector has no gradient every 3rd
    step."""
    if opt is None:
        kwargs = {"lr": 0.05, "weight_decay": 2.0, **kwargs}
        opt = LPWD(
            [{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}],
            "adamw",
            "wd",
            cautious=True,
            **kwargs,
        )
    gen = torch.Generator().manual_seed(1)
    for step in range(start + steps):
        grads = [torch.randn(p.shape, generator=gen).to(p.dtype) - 0.5 * p.detach() for p in params]
        if step < start:
            continue
        for p, g in zip(params, grads, strict=True):
            p.grad = None if (p.dim() == 1 and step % 3 == 2) else g
        opt.step()
    return opt


@pytest.fixture
def calls(monkeypatch):
    """The return value of every ``cautious_adamw_step`` call (True: the compiled pass stepped)."""
    seen: list[bool] = []
    real = kernel_module.cautious_adamw_step

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr("hf_lpwd.optim.lpwd.cautious_adamw_step", spy)
    return seen


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("variant", [{"fused": True}, {"foreach": True}, {"foreach": False}])
def test_compiled_pass_is_the_eager_path_with_the_same_state(calls, variant) -> None:
    compiled, eager = make_params(), make_params()
    opt_c = train(compiled, **variant)
    opt_e = train(eager, cautious_kernel="eager", **variant)
    assert calls[:STEPS] == [True] * STEPS  # every step took the compiled pass ...
    assert calls[STEPS:] == []  # ... and "eager" never calls it
    for c, e in zip(compiled, eager, strict=True):
        assert rel(c, e) < 1e-5  # fp32 rounding; a near-zero weight may flip its mask
    sd_c, sd_e = opt_c.state_dict(), opt_e.state_dict()
    assert sd_c["param_groups"] == sd_e["param_groups"]
    for index, state in sd_e["state"].items():
        assert sd_c["state"][index].keys() == state.keys()
        for key, value in state.items():
            got = sd_c["state"][index][key]
            assert (got.dtype, got.device, got.shape) == (value.dtype, value.device, value.shape), key
        assert torch.equal(sd_c["state"][index]["step"], state["step"])  # the vector skipped 4 steps in both
    assert sd_e["state"][1]["step"].item() == STEPS - STEPS // 3


def test_checkpoints_move_between_the_paths_and_torch(calls) -> None:
    """6 compiled steps, resumed on the eager path for 6 more: the 12 eager steps; the state loads into
    AdamW."""
    whole = make_params()
    train(whole, cautious_kernel="eager")
    first = make_params()
    opt = train(first, steps=STEPS // 2)
    saved = copy.deepcopy(opt.state_dict())
    second = [torch.nn.Parameter(p.detach().clone()) for p in first]
    resumed = LPWD(
        [{"params": second[:1]}, {"params": second[1:], "weight_decay": 0.0}],
        "adamw",
        "wd",
        cautious=True,
        cautious_kernel="eager",
        lr=0.05,
        weight_decay=2.0,
    )
    resumed.load_state_dict(saved)
    train(second, steps=STEPS - STEPS // 2, opt=resumed, start=STEPS // 2)
    for s, w in zip(second, whole, strict=True):
        assert rel(s, w) < 1e-5
    plain = torch.optim.AdamW([{"params": [torch.nn.Parameter(p.detach().clone())]} for p in first], lr=0.05)
    plain.load_state_dict(
        {
            **saved,
            "param_groups": [
                {k: v for k, v in g.items() if not k.startswith("lpwd_")} for g in saved["param_groups"]
            ],
        }
    )
    assert torch.equal(
        plain.state[plain.param_groups[0]["params"][0]]["exp_avg"], saved["state"][0]["exp_avg"]
    )


@pytest.mark.parametrize(
    "case, make, kwargs",
    [
        ("amsgrad", make_params, {"amsgrad": True}),
        ("maximize", make_params, {"maximize": True}),
        ("non-contiguous parameter", lambda: make_params(transpose=True), {}),
        ("tensor subclass", lambda: make_params(subclass=True), {}),
    ],
)
def test_other_steps_take_the_eager_path(calls, case, make, kwargs) -> None:
    """What the kernel does not compute (or not exactly) runs the eager path, with the same result."""
    a, b = make(), make()
    train(a, **kwargs)
    train(b, cautious_kernel="eager", **kwargs)
    assert calls and not any(calls), case
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y), case


def test_bf16_parameters_take_the_rounded_whole_step_with_either_setting(calls) -> None:
    """bf16 weights: cautious decay is part of the rounded step (hf_lpwd.optim.rounded_step), whichever
    ``cautious_kernel``; the same noise keys give the same weights, and the base never steps them."""
    a, b = make_params(torch.bfloat16), make_params(torch.bfloat16)
    opt = train(a)
    train(b, cautious_kernel="eager")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert opt.state[a[0]]["exp_avg"].dtype == torch.float32  # the rounded step's state, not torch's bf16 one


def test_one_kernel_serves_every_shape(calls) -> None:
    """Tensors of 1 to 4 dimensions and many sizes: at most two graphs (numel 1 is specialised), not one
    each."""
    import torch._dynamo.utils

    shapes = [(13,), (7, 11), (3, 5, 2), (4, 3, 3, 3), (1, 17), (29,), (8, 8), (1,), (2,)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = LPWD(params, "adamw", "wd", cautious=True, lr=0.05, weight_decay=1.0)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    assert calls == [True] * 3
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before <= 2


def test_sgd_never_tries_the_kernel(calls) -> None:
    params = make_params()
    opt = LPWD(params, "sgd", "wd", cautious=True, lr=0.05, momentum=0.9, weight_decay=2.0)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    assert calls == [False] * 3


def test_a_failed_compilation_falls_back_once_with_a_warning(monkeypatch, caplog) -> None:
    def broken(*args):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(kernel_module, "_kernel", lambda: broken)
    monkeypatch.setattr(kernel_module, "_compiled_once", False)
    monkeypatch.setattr(kernel_module, "_compile_failed", False)
    fallen, eager = make_params(), make_params()
    with caplog.at_level(logging.WARNING, logger="hf_lpwd"):
        opt = train(fallen)
    train(eager, cautious_kernel="eager")
    warnings = [r.getMessage() for r in caplog.records if "eager path" in r.getMessage()]
    assert warnings == ["LPWD: cautious decay takes the eager path (torch.compile failed: no C++ compiler)"]
    for x, y in zip(fallen, eager, strict=True):
        assert torch.equal(x, y)
    assert opt.state[fallen[0]]["step"].item() == STEPS  # the failed first call stepped nothing twice


def test_the_setting_is_checked_and_travels_with_the_optimizer() -> None:
    with pytest.raises(ValueError, match=r"cautious_kernel='triton' is not one of \['compiled', 'eager'\]"):
        LPWD(make_params(), "adamw", "wd", cautious=True, cautious_kernel="triton", lr=0.1)
    opt = LPWD(make_params(), "adamw", "wd", cautious=True, cautious_kernel="eager", lr=0.1)
    assert copy.deepcopy(opt).cautious_kernel == "eager"
    assert pickle.loads(pickle.dumps(opt)).cautious_kernel == "eager"
    state = opt.__getstate__()
    del state["cautious_kernel"]  # pickled by 0.3.0
    old = LPWD.__new__(LPWD)
    old.__setstate__(state)
    assert old.cautious_kernel == "compiled"
