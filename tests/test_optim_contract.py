"""torch's Optimizer contract, table-driven over timing × base, in the style of torch's OptimizerInfo tests.

Written from torch's documented contract of ``torch.optim.Optimizer``: deepcopy/pickle give an optimizer that
steps like the original, the four state_dict hooks and the step hooks (global and local) fire once per call,
``add_param_group``, ``zero_grad``, a ``weights_only`` state_dict round trip, lr schedulers, complex
parameters and foreach/fused parity.  What pwd changes is asserted as such: parameters without a gradient are
decayed too (pwd decays every weight before the forward, used or not).
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from hf_lpwd import LPWD

CASES = [
    pytest.param(mode, base, kwargs, id=f"{mode}-{base}")
    for mode in ("wd", "rwd", "pwd")
    for base, kwargs in (("adamw", {"betas": (0.9, 0.99)}), ("sgd", {"momentum": 0.9}))
]
LR, LAM = 0.05, 0.4


def make(mode: str, base: str, kwargs: dict, seed: int = 0, dtype=torch.float32, **lpwd_kwargs):
    gen = torch.Generator().manual_seed(seed)
    params = [
        torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=dtype)),
        torch.nn.Parameter(torch.randn(4, generator=gen, dtype=dtype)),
    ]
    groups = [{"params": [params[0]], "weight_decay": LAM}, {"params": [params[1]], "weight_decay": 0.1}]
    return params, LPWD(groups, base=base, mode=mode, lr=LR, **kwargs, **lpwd_kwargs)


def take_steps(params, opt, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.pre_step()
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.5 * p.detach()
        opt.step()


@pytest.mark.parametrize("mode, base, kwargs", CASES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_steps_and_loads_like_the_original(mode, base, kwargs, how) -> None:
    params, opt = make(mode, base, kwargs)
    take_steps(params, opt, 3)
    if how == "deepcopy":
        twin = copy.deepcopy(opt)
    else:
        twin = pickle.loads(pickle.dumps(opt))
    twin_params = [p for g in twin.param_groups for p in g["params"]]
    assert twin.param_groups is twin.base_optimizer.param_groups and twin.state is twin.base_optimizer.state
    assert (twin.mode, twin.lr_coupling, twin.cautious) == (mode, "coupled", False)
    take_steps(params, opt, 3, seed=2)
    take_steps(twin_params, twin, 3, seed=2)
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)
    twin.load_state_dict(opt.state_dict())  # loads, and keeps sharing with its base
    assert twin.param_groups is twin.base_optimizer.param_groups and twin.state is twin.base_optimizer.state


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_the_four_state_dict_hooks_run_once_each(mode, base, kwargs) -> None:
    params, opt = make(mode, base, kwargs)
    take_steps(params, opt, 1)
    calls: list[str] = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))

    def post(o, sd):
        calls.append("sd_post")
        sd["extra"] = 1  # a post hook may change what is returned
        return sd

    opt.register_state_dict_post_hook(post)

    def load_pre(o, sd):
        calls.append("load_pre")
        sd = dict(sd)
        sd.pop("extra")
        return sd

    opt.register_load_state_dict_pre_hook(load_pre)
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1
    opt.load_state_dict(sd)
    assert calls == ["sd_pre", "sd_post", "load_pre", "load_post"]


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_global_and_local_step_hooks_fire_once_per_step(mode, base, kwargs) -> None:
    params, opt = make(mode, base, kwargs)
    seen: list[str] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append(f"global-pre:{type(o).__name__}")),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append(f"global-post:{type(o).__name__}")),
        opt.register_step_pre_hook(lambda o, a, k: seen.append("local-pre")),
        opt.register_step_post_hook(lambda o, a, k: seen.append("local-post")),
    ]
    try:
        take_steps(params, opt, 2)
    finally:
        for handle in handles:
            handle.remove()
    one_step = ["global-pre:LPWD", "local-pre", "local-post", "global-post:LPWD"]
    assert seen == one_step * 2


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_add_param_group_gets_lambda_and_steps(mode, base, kwargs) -> None:
    params, opt = make(mode, base, kwargs)
    extra = torch.nn.Parameter(torch.full((3,), 2.0))
    opt.add_param_group({"params": [extra], "weight_decay": 0.5})
    assert opt.param_groups[-1]["weight_decay"] == 0.5 and opt.param_groups is opt.base_optimizer.param_groups
    opt.pre_step()
    extra.grad = torch.zeros(3)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    # Zero gradient: Adam's and SGD's update is 0, so only the decay moved it, by 1 − ηλ per step (pwd: this
    # step's and the next forward's, folded in).
    steps = 2 if mode == "pwd" else 1
    torch.testing.assert_close(
        extra.detach(), torch.full((3,), 2.0 * (1 - LR * 0.5) ** steps), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_zero_grad_and_weights_only_round_trip(mode, base, kwargs, tmp_path) -> None:
    params, opt = make(mode, base, kwargs)
    take_steps(params, opt, 2)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    twin_params, twin = make(mode, base, kwargs)
    with torch.no_grad():
        for a, b in zip(twin_params, params, strict=True):
            a.copy_(b)
    twin.load_state_dict(loaded)
    take_steps(params, opt, 2, seed=5)
    take_steps(twin_params, twin, 2, seed=5)
    for a, b in zip(params, twin_params, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_a_torch_scheduler_drives_the_lr_it_decays_with(mode, base, kwargs) -> None:
    """StepLR halves η every step; at zero gradient each step's weights shrink by 1 − η_t·λ (pwd: the weights
    each forward sees, corrected by pre_step() since StepLR cannot say the next lr ahead)."""
    params, opt = make(mode, base, kwargs)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []
    for step in range(4):
        opt.pre_step()
        if mode == "pwd":
            seen.append(params[0].detach().clone())  # what this step's forward sees
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        if mode != "pwd":
            seen.append(params[0].detach().clone())
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(LR * 0.5 ** (step + 1))
    factors = [(b / a).mean().item() for a, b in zip(seen, seen[1:], strict=False)]
    expected = [1 - LR * 0.5**k * LAM for k in range(1, 4)]
    assert factors == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_complex_parameters_step_like_their_real_view(mode, base, kwargs) -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.nn.Parameter(torch.randn(6, dtype=torch.complex64, generator=gen))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    opt_z = LPWD([z], base=base, mode=mode, lr=LR, weight_decay=LAM, **kwargs)
    opt_r = LPWD([r], base=base, mode=mode, lr=LR, weight_decay=LAM, **kwargs)
    for _ in range(4):
        opt_z.pre_step()
        opt_r.pre_step()
        g = torch.randn(6, dtype=torch.complex64, generator=gen)
        z.grad, r.grad = g, torch.view_as_real(g).clone()
        opt_z.step()
        opt_r.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["wd", "rwd", "pwd"])
def test_foreach_fused_and_for_loop_agree(mode) -> None:
    finals = []
    for impl in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        params, opt = make(mode, "adamw", impl)
        take_steps(params, opt, 6)
        finals.append([p.detach().clone() for p in params])
    for other in finals[1:]:
        for a, b in zip(finals[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode, base, kwargs", CASES)
def test_parameters_without_a_gradient(mode, base, kwargs) -> None:
    """wd / rwd leave a parameter with no gradient untouched, as torch does; pwd decays it (by design)."""
    params, opt = make(mode, base, kwargs)
    idle_before = params[1].detach().clone()
    for _ in range(3):
        opt.pre_step()
        params[0].grad = torch.ones_like(params[0])
        params[1].grad = None
        opt.step()
    if mode == "pwd":
        # 3 steps' decays, and the 4th's already folded in: (1 − ηλ)^4 at λ = 0.1
        torch.testing.assert_close(params[1].detach(), idle_before * (1 - LR * 0.1) ** 4, rtol=1e-6, atol=0)
    else:
        assert torch.equal(params[1].detach(), idle_before)
