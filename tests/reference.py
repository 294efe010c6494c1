"""The float64 reference: the base optimizers' directions u and one step of each timing.

The one home of these equations for the optimizer tests (``test_optim``, ``test_decay_rules``,
``test_rounding``). They never call the code they check:

* Adam:  m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²,  u = (m/(1 − β1^t)) / (√(v/(1 − β2^t)) + ε)
* SGD with momentum μ: b ← μ·b + g (b = g on the first step), u = b, or g + μ·b with Nesterov
* the timings with d = η·r the step's decay: wd θ − η·u − d·θ, rwd (1 − d)·(θ − η·u), pwd (1 − d)·θ before the
  forward then θ − η·u; cautious wd θ − η·u − d·1[u ⊙ θ ≥ 0] ⊙ θ
* toward θ₀ (``target``, the decay target ``init``): the same in δ = θ − θ₀, i.e. wd θ − η·u − d·(θ − θ₀),
  rwd θ₀ + (1 − d)(θ − η·u − θ₀), pwd θ₀ + (1 − d)(θ − θ₀) before the forward, cautious mask
  1[u ⊙ (θ − θ₀) ≥ 0]
"""

from __future__ import annotations

import torch

BETAS = (0.9, 0.99)
EPS = 1e-8


class AdamDirection:
    """u_t of Adam for one tensor, called with each step's gradient."""

    def __init__(self, betas: tuple[float, float] = BETAS, eps: float = EPS) -> None:
        self.betas, self.eps = betas, eps
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.t = 0

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        self.t += 1
        b1, b2 = self.betas
        self.m = (1 - b1) * g if self.m is None else b1 * self.m + (1 - b1) * g
        self.v = (1 - b2) * g * g if self.v is None else b2 * self.v + (1 - b2) * g * g
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return m_hat / (v_hat.sqrt() + self.eps)


class SGDMomentumDirection:
    """u_t of SGD with momentum μ (dampening 0), plain or Nesterov."""

    def __init__(self, momentum: float = 0.9, nesterov: bool = False) -> None:
        self.momentum, self.nesterov = momentum, nesterov
        self.buf: torch.Tensor | None = None

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        self.buf = g.clone() if self.buf is None else self.momentum * self.buf + g
        return g + self.momentum * self.buf if self.nesterov else self.buf


def before_forward(
    mode: str, theta: torch.Tensor, decay: float, target: torch.Tensor | None = None
) -> torch.Tensor:
    """The weights the forward of the step sees: pwd's (1 − d)·θ (θ₀ + (1 − d)(θ − θ₀) toward ``target``),
    else θ."""
    if target is not None:
        return target + before_forward(mode, theta - target, decay)
    return (1 - decay) * theta if mode == "pwd" else theta


def after_update(
    mode: str,
    theta: torch.Tensor,
    u: torch.Tensor,
    lr: float,
    decay: float,
    cautious: bool = False,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """θ_{t+1} from the weights the forward saw (``before_forward``'s), the direction u, η and d; toward
    ``target`` θ₀ the same step of δ = θ − θ₀ (u does not depend on θ)."""
    if target is not None:
        return target + after_update(mode, theta - target, u, lr, decay, cautious)
    if mode == "wd" and cautious:
        return theta - lr * u - decay * ((u * theta) >= 0).to(theta.dtype) * theta  # the mask as 0.0 / 1.0
    if mode == "wd":
        return theta - lr * u - decay * theta
    if mode == "rwd":
        return (1 - decay) * (theta - lr * u)
    return theta - lr * u  # pwd: the decay came before the forward
