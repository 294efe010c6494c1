"""pwd's fold with layer-wise lr decay (LLRD): groups of different lrs, each folded with its *own* next lr.

The fold puts step t+1's decay (1 − η_{t+1}·λ) into step t's AdamW call, with η_{t+1} looked up in the
scheduler for *that group* (``base_lrs[i] × λ(t+1)``).  With LLRD every group has its own base lr, so a
look-up in another group's entry mispredicts: ``pre_step()`` then corrects it in a pass of its own (the count
rises and the weights stay right), while under DeepSpeed (``require_pre_step = False``) the gradient of every
such step is taken at mis-decayed weights.  Both are checked against a float64 reference of *unfolded* pwd
written here by hand:

    θ ← (1 − η_{d,t}·λ_d)·θ;   g = ∇L(θ);   θ ← θ − η_{d,t}·m̂/(√v̂ + ε)      (Adam, λ = 0 in the update)

with η_{d,t} = lr·γ^(N+1−d)·s(t) (s: the schedule, written out below) and λ_d = λ·(d+1)/(N+2) for weights, 0
for biases.  The model is a quadratic bowl with the layout of a transformer (embedding, N blocks of two
linears, a head), so the gradient θ − x̄·T is exact in float64 and the float32 run differs only by rounding.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import TrainerCallback, get_scheduler

from hf_lpwd import LPWD, LPWDTrainer, LPWDTrainingArguments, lpwd_param_groups

N_BLOCKS, LR, LAM, GAMMA, STEPS = 3, 2e-2, 2.0, 0.5, 6
BETAS, EPS = (0.9, 0.999), 1e-8


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)


class QuadraticBowl(nn.Module):
    """L(θ) = Σ_p ½‖θ_p − x̄·T_p‖², x̄ the batch mean of ``x``: the gradient is θ − x̄·T (T: fixed
    targets)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(6, 4)
        self.layers = nn.ModuleList(_Block() for _ in range(N_BLOCKS))
        self.head = nn.Linear(4, 3)
        for name, param in self.named_parameters():
            self.register_buffer("target_" + name.replace(".", "_"), torch.randn_like(param))
        self.seen: list[float] = []  # x̄ of every forward, in order: the reference replays the same batches

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        scale = x.mean()
        self.seen.append(float(scale))
        loss = sum(0.5 * (p - scale * self.target(n)).square().sum() for n, p in self.named_parameters())
        return {"loss": loss}

    def target(self, name: str) -> torch.Tensor:
        return getattr(self, "target_" + name.replace(".", "_"))


class _Scalars(Dataset):
    def __init__(self, size: int) -> None:
        self.x = torch.linspace(0.5, 1.5, size)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


def _depth(name: str) -> int:
    """By hand, from the layout above: embedding 0, ``layers.i`` i+1, head N+1."""
    if name.startswith("embed."):
        return 0
    if name.startswith("layers."):
        return int(name.split(".")[1]) + 1
    assert name.startswith("head."), name
    return N_BLOCKS + 1


def schedule(kind: str, warmup: int, step: int) -> float:
    """transformers' linear / cosine schedules with warm-up, written out (lr factor at 0-based ``step``)."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (STEPS - warmup)
    return max(0.0, 1.0 - progress) if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def unfolded_pwd_reference(
    init: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    scales: list[float],
    kind: str,
    warmup: int,
    layerwise: bool = True,
) -> dict[str, torch.Tensor]:
    """Unfolded pwd with per-depth lr (and λ, ``layerwise``), Adam in float64."""
    theta = {n: t.double().clone() for n, t in init.items()}
    m = {n: torch.zeros_like(t) for n, t in theta.items()}
    v = {n: torch.zeros_like(t) for n, t in theta.items()}
    assert len(scales) == STEPS
    for step, scale in enumerate(scales):
        k = step + 1
        for name in theta:
            depth = _depth(name)
            eta = LR * GAMMA ** (N_BLOCKS + 1 - depth) * schedule(kind, warmup, step)
            lam = (
                0.0 if name.endswith(".bias") else LAM * ((depth + 1) / (N_BLOCKS + 2) if layerwise else 1.0)
            )
            theta[name] = (1.0 - eta * lam) * theta[name]  # the decay before the forward
            grad = theta[name] - scale * targets[name].double()  # the gradient at the decayed weights
            m[name] = BETAS[0] * m[name] + (1 - BETAS[0]) * grad
            v[name] = BETAS[1] * v[name] + (1 - BETAS[1]) * grad.square()
            m_hat, v_hat = m[name] / (1 - BETAS[0] ** k), v[name] / (1 - BETAS[1] ** k)
            theta[name] = theta[name] - eta * m_hat / (v_hat.sqrt() + EPS)
    return theta


def assert_matches_reference(model: QuadraticBowl, reference: dict[str, torch.Tensor]) -> None:
    # float32 against float64: observed ≤ 1.3e-7 relative; gradients at weights mis-decayed by another group's
    # lr: 1.3e-3.
    for name, param in model.named_parameters():
        relative = ((param.detach().double() - reference[name]).norm() / reference[name].norm()).item()
        assert relative <= 2e-6, (name, relative)


class _CountCorrections(TrainerCallback):
    def __init__(self) -> None:
        self.after_step: list[int] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
        lpwd = optimizer
        while not isinstance(lpwd, LPWD):
            lpwd = lpwd.optimizer
        self.after_step.append(lpwd.fold_corrections)


@pytest.mark.parametrize("mode", ["pwd", "lpwd"])
@pytest.mark.parametrize("kind,warmup", [("linear", 2), ("cosine", 0)])
def test_llrd_groups_fold_their_own_next_lr_in_the_trainer(
    tmp_path: Path, mode: str, kind: str, warmup: int
) -> None:
    """LPWDTrainer, LLRD γ = 0.5 over 5 depths (lrs 1/16 … 1 × lr): no correction after the first step.

    The first step: with a warm-up from lr 0 its decay is 1 (nothing to correct); without one, each group with
    λ_d > 0 needs its first decay applied (nothing folded it in yet): one correction per decayed group.
    """
    model = QuadraticBowl()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = {n: model.target(n).clone() for n, _ in model.named_parameters()}
    counter = _CountCorrections()
    layerwise = mode == "lpwd"
    args = LPWDTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        learning_rate=LR,
        max_steps=STEPS,
        weight_decay=LAM,
        weight_decay_mode=mode,
        lpwd_layerwise=layerwise,
        lpwd_layer_lr_decay=GAMMA,
        lr_scheduler_type=kind,
        warmup_steps=warmup,
        max_grad_norm=0.0,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        optim="adamw_torch_fused",
    )
    trainer = LPWDTrainer(model=model, args=args, train_dataset=_Scalars(12), callbacks=[counter])
    trainer.train()

    lpwd = trainer.lpwd_optimizer
    lrs = sorted({g["lr_multiplier"] for g in lpwd.param_groups})
    assert lrs == [GAMMA**k for k in range(N_BLOCKS + 1, -1, -1)]  # five different lrs: the look-up matters
    decayed_groups = sum(1 for g in lpwd.param_groups if g["weight_decay"] > 0)
    first = 0 if warmup else decayed_groups
    assert counter.after_step == [first] * STEPS, counter.after_step
    assert_matches_reference(
        model, unfolded_pwd_reference(init, targets, model.seen, kind, warmup, layerwise)
    )


def test_llrd_fold_without_pre_step_equals_unfolded_pwd(monkeypatch) -> None:
    """The DeepSpeed path (``require_pre_step = False``, step 0's decay applied up front): no pass before the
    forward can fix a misprediction, so the gradient of every step is taken at the weights the fold left.

    A plain loop with the Trainer's own ``get_scheduler`` (cosine, warm-up 1), lpwd groups with LLRD.
    """
    model = QuadraticBowl()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = {n: model.target(n).clone() for n, _ in model.named_parameters()}
    groups = lpwd_param_groups(model, LAM, layer_lr_decay=GAMMA)
    opt = LPWD(groups, mode="pwd", weight_decay=LAM, lr=LR, betas=BETAS, eps=EPS)
    scheduler = get_scheduler("cosine", opt, num_warmup_steps=1, num_training_steps=STEPS)
    opt.set_lr_scheduler(scheduler, STEPS)
    opt.require_pre_step = False
    opt.decay_initial_weights(0.0)  # warm-up from lr 0: the first decay is 1
    x = torch.linspace(0.5, 1.5, STEPS * 2).view(STEPS, 2)
    for batch in x:
        model(batch)["loss"].backward()
        opt.step()
        scheduler.step()
        opt.zero_grad()
    assert_matches_reference(model, unfolded_pwd_reference(init, targets, model.seen, "cosine", 1))
    assert opt.fold_corrections == 0
