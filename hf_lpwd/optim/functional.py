"""The decay math as plain functions of (θ, u, η_t, η̄, λ): one small function per rule.

With η_t the group's lr at step t, η̄ its base lr and λ its ``weight_decay``, the per-step decay is d_t =
η_t·r_t, where r_t, the *effective* weight decay, is what the lr coupling makes of λ:

* ``coupled``     r_t = λ            d_t = η_t·λ          (AdamW; hf_lpwd <= 0.2.0)
* ``independent`` r_t = λ/η̄          d_t = (η_t/η̄)·λ      (follows the schedule, not the peak lr)
* ``corrected``   r_t = λ·η_t/η̄      d_t = (η_t²/η̄)·λ     (AdamC's lr²-corrected decay)

Keeping r_t rather than d_t lets the coupled rule hand λ to the kernels untouched, bit for bit. The timings
then use d_t wherever AdamW uses η·λ:

* ``wd``   θ ← θ − η_t·u − d_t·θ
* ``rwd``  θ ← (1 − d_t)·(θ − η_t·u)
* ``pwd``  θ ← (1 − d_t)·θ before the forward, then θ ← θ − η_t·u
* cautious ``wd``  θ ← θ − η_t·u − d_t·1[u ⊙ θ ≥ 0] ⊙ θ

Toward θ₀ (``decay_target="init"``, :mod:`.target`) each rule is the same in δ = θ − θ₀: pass ``target=θ₀``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EffectiveDecay = Callable[[float, float, float], float]
"""r(λ, η_t, η̄): the effective weight decay of one lr coupling."""


def coupled(weight_decay: float, lr: float, base_lr: float) -> float:
    """r = λ: the decay scales with the lr, as in AdamW."""
    return weight_decay


def independent(weight_decay: float, lr: float, base_lr: float) -> float:
    """r = λ/η̄: d_t = (η_t/η̄)·λ follows the schedule's shape but not the peak lr.

    torch-optimi's ``decouple_lr`` and composer's ``DecoupledAdamW``; Kosson et al. 2025 (arXiv 2510.19093).
    """
    return weight_decay / base_lr


def corrected(weight_decay: float, lr: float, base_lr: float) -> float:
    """r = λ·η_t/η̄: d_t = (η_t²/η̄)·λ, AdamC's correction (Defazio et al. 2025, arXiv 2506.02285).

    The steady-state norm of AdamW's weights goes as √(η/λ); scaling λ with η_t/η̄ keeps it constant while the
    schedule lowers η_t.
    """
    return weight_decay * lr / base_lr


LR_COUPLING_RULES: dict[str, EffectiveDecay] = {
    "coupled": coupled,
    "independent": independent,
    "corrected": corrected,
}


def effective_weight_decay(coupling: str, weight_decay: float, lr: float, base_lr: float) -> float:
    """r_t of ``coupling`` (see the module docstring); d_t = η_t·r_t."""
    return LR_COUPLING_RULES[coupling](weight_decay, lr, base_lr)


def decay_per_step(coupling: str, weight_decay: float, lr: float, base_lr: float) -> float:
    """d_t = η_t·r_t: the fraction of a weight that one step's decay removes."""
    return lr * effective_weight_decay(coupling, weight_decay, lr, base_lr)


def weight_decay_for_timescale(coupling: str, timescale_steps: float, base_lr: float) -> float:
    """λ whose decay at the base lr has the EMA timescale τ (in steps): d(η̄) = 1/τ.

    AdamW's weights are an exponential moving average of updates with timescale 1/(η·λ) steps (Wang &
    Aitchison 2024, arXiv 2405.13698).  coupled and corrected: λ = 1/(η̄·τ) (at η_t = η̄ both give d = η̄·λ);
    independent: λ = 1/τ.
    """
    if coupling == "independent":
        return 1.0 / timescale_steps
    return 1.0 / (base_lr * timescale_steps)


# ----------------------------------------------------------------------------- one AdamW call per timing
def rwd_on_adamw(lr: float, rate: float) -> tuple[float, float]:
    """(η', λ') with which one AdamW update is rwd: (1 − η'λ')θ − η'u = (1 − ηr)(θ − ηu).

    η' = η·(1 − ηr), λ' = r/(1 − ηr).
    """
    factor = 1.0 - lr * rate
    return lr * factor, rate / factor


def pwd_fold_on_adamw(lr: float, next_factor: float) -> tuple[float, float]:
    """(η', λ') with which one AdamW update applies this step and the next step's pre-forward decay.

    With f = 1 − d_{t+1}: (1 − η'λ')θ − η'u = f·(θ − η_t·u) for η' = η_t·f, λ' = (1 − f)/(η_t·f).
    """
    return lr * next_factor, (1.0 - next_factor) / (lr * next_factor)


# ----------------------------------------------------------------------------- the equations, literally
def wd_update(
    theta: torch.Tensor, u: torch.Tensor, lr: float, decay: float, target: torch.Tensor | None = None
) -> torch.Tensor:
    """θ − η·u − d·θ; toward θ₀ = ``target``: θ − η·u − d·(θ − θ₀)."""
    if target is None:
        return theta - lr * u - decay * theta
    return theta - lr * u - decay * (theta - target)


def rwd_update(
    theta: torch.Tensor, u: torch.Tensor, lr: float, decay: float, target: torch.Tensor | None = None
) -> torch.Tensor:
    """(1 − d)·(θ − η·u); toward θ₀ = ``target``: θ₀ + (1 − d)·(θ − η·u − θ₀)."""
    if target is None:
        return (1.0 - decay) * (theta - lr * u)
    return target + (1.0 - decay) * (theta - lr * u - target)


def cautious_mask(u: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """1[u ⊙ θ ≥ 0]: the coordinates where the update pushes the weight towards zero (Chen et al. 2025, arXiv
    2510.12402); decay elsewhere would fight the gradient."""
    return (u * theta) >= 0


@torch.no_grad()
def apply_cautious_decay_(
    param: torch.Tensor, direction: torch.Tensor, decay: float, target: torch.Tensor | None = None
) -> None:
    """θ ← θ − d·1[u ⊙ θ ≥ 0] ⊙ θ in place, *before* the base step moves θ by −η·u.

    With the wd timing the decay term does not change u, so decaying first and stepping the base with λ = 0
    gives θ − η·u − d·1[u⊙θ ≥ 0]⊙θ.  ``direction`` need only have u's sign per coordinate (Adam's first moment
    m_t: m̂/(√v̂+ε) has its sign).  Complex tensors are masked per real component, as torch's optimizers treat
    them.  ``direction`` is overwritten (it is a temporary).  Toward θ₀ = ``target``:
    θ ← θ − d·1[u ⊙ (θ − θ₀) ≥ 0] ⊙ (θ − θ₀), with one more temporary δ = θ − θ₀.
    """
    if torch.is_complex(param):
        param, direction = torch.view_as_real(param), torch.view_as_real(direction)
        target = None if target is None else torch.view_as_real(target)
    offset = param if target is None else param - target
    keep = direction.mul_(offset).ge_(0)  # 1.0 where u·δ >= 0, else 0.0
    param.addcmul_(keep, offset, value=-decay)
