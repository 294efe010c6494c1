"""The decay math: weight decay modes wd / rwd / pwd around any base torch optimizer.

With η the group's learning rate at the step, λ the group's ``weight_decay`` and u the base
optimizer's update direction (Adam's m̂/(√v̂+ε), SGD's momentum buffer, ...):

* ``wd``  (decoupled decay, AdamW):   θ ← θ − η·u − η·λ·θ
* ``rwd`` (real-time decay):          θ ← (1 − η·λ)·(θ − η·u)
* ``pwd`` (pre-weight decay):         ``pre_step()``: θ ← (1 − η·λ)·θ, *before the forward pass*,
  so the gradient is taken at the decayed weights; then ``step()``: θ ← θ − η·u

LPWD (layer-wise pre-weight decay) is ``pwd`` with one param group per depth, each with its own λ
(see :mod:`hf_lpwd.groups`); nothing in this module knows about layers.

Why the modes cost what they cost.  The step of an optimizer is memory bound, so its cost is the
number of passes over the parameters:

* On the AdamW base, ``wd`` *is* torch's AdamW, and ``rwd`` is torch's AdamW with
  η' = η·(1 − η·λ) and λ' = λ / (1 − η·λ), because
  (1 − η'·λ')·θ − η'·u = (1 − η·λ)·θ − η·(1 − η·λ)·u = (1 − η·λ)·(θ − η·u).
  Both therefore run inside the fused / foreach AdamW kernels with no extra pass.
* ``pwd`` needs the decay before the forward pass, so ``pre_step()`` adds one multiply pass
  (``torch._foreach_mul_``), and ``step()`` runs the base with λ = 0.
* Any other base (SGD, Adafactor, ...) runs with ``weight_decay = 0`` (torch's SGD and Adam
  would otherwise add λ·θ to the gradient, i.e. L2, not decay) and LPWD scales the weights itself:
  before the base step for ``wd`` (u does not depend on θ, so (1 − ηλ)θ − ηu = θ − ηu − ηλθ), after
  it for ``rwd``.

Once per step.  ``pre_step()`` acts once per optimizer step: calling it again before ``step()`` is
a no-op, so a training loop may call it before every micro-batch of a gradient accumulation group.
A step skipped by a gradient scaler leaves the decay pending for the next ``step()``, so the decay
is never applied twice for one update.  A checkpoint is always taken between ``step()`` and the next
``pre_step()``, so resuming needs no state beyond the base optimizer's.

Low precision.  For bf16 / fp16 parameters the factor 1 − η·λ is often closer to 1 than the format
resolves, and ``θ * (1 − η·λ)`` rounds back to θ: the decay silently does nothing.  LPWD applies
its own decay passes with stochastic rounding on such parameters (see :mod:`hf_lpwd.rounding`);
fp32/fp64 parameters take the plain, exact path.  On the AdamW base a param group holding bf16/fp16
parameters therefore runs the generic path (AdamW with λ = 0, then LPWD's rounded scale pass), while
groups of fp32 parameters keep folding wd / rwd into the kernel, bit for bit as without any low
precision parameter.  With ``stochastic_rounding=False`` LPWD warns at construction about every group
whose per-step decay η·λ is below its dtype's resolution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .rounding import LOW_PRECISION_DTYPES, scale_

DECAY_MODES: tuple[str, ...] = ("wd", "rwd", "pwd")
"""Decay modes of :class:`LPWD`; ``lpwd`` is ``pwd`` with layer-wise groups (:func:`lpwd_param_groups`)."""

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
"""Names accepted for ``base``; any ``torch.optim.Optimizer`` subclass is accepted as well."""


def resolve_base(base: str | type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """Return the optimizer class for ``base`` (a name in :data:`BASE_OPTIMIZERS` or a class)."""
    if isinstance(base, str):
        try:
            return BASE_OPTIMIZERS[base.lower()]
        except KeyError:
            raise ValueError(
                f"LPWD: unknown base {base!r}; valid names are {sorted(BASE_OPTIMIZERS)}, "
                "or pass any torch.optim.Optimizer subclass"
            ) from None
    if isinstance(base, type) and issubclass(base, torch.optim.Optimizer):
        return base
    raise ValueError(
        f"LPWD: base must be one of {sorted(BASE_OPTIMIZERS)} or a torch.optim.Optimizer subclass, got {base!r}"
    )


def _group_label(index: int, group: dict[str, Any]) -> str:
    depth = group.get("depth")
    return f"param group {index}" + (f" (depth {depth})" if depth is not None else "")


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _as_param_groups(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalise ``params`` to a list of group dicts (shallow copies: the caller's dicts stay as they were)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("LPWD: params must be an iterable of tensors or of param group dicts, not a single tensor")
    params = list(params)
    if not params:
        raise ValueError("LPWD: got an empty parameter list")
    if all(isinstance(p, dict) for p in params):
        return [dict(group) for group in params]
    return [{"params": params}]


class LPWD(torch.optim.Optimizer):
    """Weight decay modes ``wd`` / ``rwd`` / ``pwd`` around a base optimizer.

    ``LPWD`` *is* a ``torch.optim.Optimizer``: it shares ``param_groups`` and ``state`` with the base
    optimizer it builds, so LR schedulers, gradient clipping, Accelerate's ``AcceleratedOptimizer``
    and checkpointing see one optimizer.  Each group's ``weight_decay`` is its λ and its ``lr`` is
    read at every step.

    Args:
        params: parameters or param groups (e.g. from :func:`hf_lpwd.lpwd_param_groups`).
        base: ``"adamw"``, ``"sgd"`` or any ``torch.optim.Optimizer`` subclass.
        mode: one of :data:`DECAY_MODES`.
        weight_decay: λ for groups that do not set their own.
        stochastic_rounding: decay bf16/fp16 parameters with stochastic rounding so that decays
            below their resolution still take effect on average (no effect on fp32 parameters).
            The random bits come from torch's global generator, so ``transformers.set_seed``
            reproduces runs, but they consume its state (dropout masks then differ from a run
            without low precision weights).  ``False`` warns at construction if some group's
            η·λ is below its dtype's resolution, i.e. if the decay would be lost.
        **base_kwargs: passed to the base optimizer (``lr``, ``betas``, ``eps``, ``momentum``,
            ``foreach``, ``fused``, ...).

    Training loop (``pre_step`` is a no-op for ``wd`` and ``rwd``)::

        for batch in loader:
            opt.pre_step()
            model(**batch).loss.backward()
            opt.step(); scheduler.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base: str | type[torch.optim.Optimizer] = "adamw",
        mode: str = "pwd",
        *,
        weight_decay: float = 1e-2,
        stochastic_rounding: bool = True,
        **base_kwargs: Any,
    ) -> None:
        if mode not in DECAY_MODES:
            raise ValueError(f"LPWD: unknown mode {mode!r}; valid modes are {list(DECAY_MODES)}")
        base_cls = resolve_base(base)
        if "weight_decay" in base_kwargs:
            raise ValueError("LPWD: pass weight_decay to LPWD itself (it is λ), not inside base_kwargs")
        self.mode = mode
        self.stochastic_rounding = stochastic_rounding
        # Only torch's own AdamW has decoupled decay we can fold rwd into; every other base runs with
        # weight_decay = 0 and LPWD scales the weights itself.
        self.folds_decay_into_base = base_cls is torch.optim.AdamW
        # λ lives in each group's "weight_decay" before the base sees the groups: a base whose own
        # default is 0 (SGD) or that has no such argument must not override it.
        groups = _as_param_groups(params)
        for group in groups:
            group.setdefault("weight_decay", weight_decay)
        base_optimizer = base_cls(groups, **base_kwargs)
        for index, group in enumerate(base_optimizer.param_groups):
            self._validate_group(index, group)
        defaults = dict(base_optimizer.defaults)
        defaults.setdefault("weight_decay", weight_decay)
        super().__init__(base_optimizer.param_groups, defaults)
        # Share, don't copy: the scheduler and Accelerate mutate these lists / dicts.
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self._decay_pending_step = False  # pwd: pre_step() decayed, step() not yet taken
        if not stochastic_rounding:
            self._warn_if_decay_is_lost()

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_group(index: int, group: dict[str, Any]) -> tuple[float, float]:
        """Return (η, λ) of a group, or raise ``ValueError`` naming the group.

        Runs for every group at every step, so the group's label is only formatted on the error path.
        """
        lam = _as_float(group["weight_decay"])
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"LPWD: {_group_label(index, group)} has weight_decay={lam}; λ must be a finite number >= 0")
        if group.get("lr") is None:
            raise ValueError(
                f"LPWD: {_group_label(index, group)} has no learning rate (lr=None); LPWD needs η to scale the decay. "
                "Pass lr=... (for Adafactor: relative_step=False)"
            )
        eta = _as_float(group["lr"])
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"LPWD: {_group_label(index, group)} has lr={eta}; η must be a finite number >= 0")
        if eta * lam >= 1.0:
            label = _group_label(index, group)
            raise ValueError(
                f"LPWD: {label} has lr={eta} and weight_decay={lam}: the decay factor 1 - lr*weight_decay "
                f"= {1.0 - eta * lam:g} would be <= 0 and flip the weights' signs. Lower weight_decay or lr "
                "so that lr*weight_decay < 1"
            )
        return eta, lam

    def _decay_factors(self) -> list[float]:
        """1 − η·λ per group, all groups validated before anything is modified."""
        return [1.0 - eta * lam for eta, lam in (self._validate_group(i, g) for i, g in enumerate(self.param_groups))]

    def _warn_if_decay_is_lost(self) -> None:
        """Warn (once, at construction) about groups whose decay rounds away in bf16/fp16.

        θ·(1 − η·λ) differs from θ by η·λ·|θ|, while neighbouring bf16 (fp16) numbers are
        2^-8..2^-7 (2^-11..2^-10) times |θ| apart: below η·λ = eps/2 of the dtype (2^-8 bf16, 2^-11
        fp16) round-to-nearest moves no weight or only some of them by a whole spacing, so the
        decay is lost or distorted.  The initial lr is the one checked (a warm-up schedule sets a
        smaller one later, which only makes it worse).
        """
        problems = []
        for index, group in enumerate(self.param_groups):
            eta, lam = self._validate_group(index, group)
            dtypes = {p.dtype for p in group["params"] if p.dtype in LOW_PRECISION_DTYPES}
            for dtype in sorted(dtypes, key=str):
                resolution = torch.finfo(dtype).eps / 2
                if 0.0 < eta * lam < resolution:
                    problems.append(
                        f"{_group_label(index, group)}: lr={eta:g} × weight_decay={lam:g} = {eta * lam:.3g} per step, "
                        f"below the {str(dtype).removeprefix('torch.')} resolution {resolution:.3g}"
                    )
        if problems:
            warnings.warn(
                "LPWD: stochastic_rounding=False with low precision parameters, and 1 - lr*weight_decay rounds "
                "to 1 in their dtype, so the weight decay does nothing (or is distorted) on them:\n  "
                + "\n  ".join(problems)
                + "\nTurn the compensation on with LPWD(..., stochastic_rounding=True) "
                "(LPWDTrainer: --lpwd_stochastic_rounding true), or keep fp32 master weights.",
                UserWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ decay passes
    @torch.no_grad()
    def _scale_params(self, factors: list[float], only_with_grad: bool) -> None:
        for group, factor in zip(self.param_groups, factors, strict=True):
            if factor == 1.0:
                continue
            params = [p for p in group["params"] if not only_with_grad or p.grad is not None]
            if params:
                scale_(params, factor, stochastic=self.stochastic_rounding)

    def pre_step(self) -> None:
        """pwd: θ ← (1 − η·λ)·θ before the forward pass; a no-op for wd / rwd.

        Acts once per optimizer step: further calls before the next :meth:`step` do nothing, so it
        is safe to call before every micro-batch.  All parameters of a group are decayed (their
        gradients do not exist yet), also those that end up without a gradient in this step.
        """
        if self.mode != "pwd" or self._decay_pending_step:
            return
        self._scale_params(self._decay_factors(), only_with_grad=False)
        self._decay_pending_step = True

    @property
    def pre_step_pending(self) -> bool:
        """True between a pwd ``pre_step()`` and the ``step()`` it belongs to."""
        return self._decay_pending_step

    # ------------------------------------------------------------------ the step
    def _run_base(self, closure: Callable[[], float] | None, overrides: list[dict[str, Any]]) -> Any:
        """Run the base step with per-group values temporarily replaced, restoring them always."""
        saved = [{key: group[key] for key in override} for group, override in zip(self.param_groups, overrides, strict=True)]
        try:
            for group, override in zip(self.param_groups, overrides, strict=True):
                group.update(override)
            return self.base_optimizer.step(closure)
        finally:
            for group, values in zip(self.param_groups, saved, strict=True):
                group.update(values)

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Take one optimizer step in the configured mode (see the module docstring)."""
        if self.mode == "pwd":
            if not self._decay_pending_step:
                raise RuntimeError(
                    "LPWD(mode='pwd'): step() was called without pre_step() since the previous step, so this "
                    "update would skip its decay. Call optimizer.pre_step() once per optimizer step, before the "
                    "forward pass (LPWDTrainer does this for you), or use mode='rwd' if the loop cannot be changed."
                )
            self._decay_factors()  # validation only: the scheduler may have changed lr since pre_step()
            loss = self._run_base(closure, [{"weight_decay": 0.0} for _ in self.param_groups])
            self._decay_pending_step = False
            return loss

        factors = self._decay_factors()
        if self.folds_decay_into_base:
            # Groups with bf16/fp16 weights (stochastic rounding on) take the generic path below; the
            # others fold the decay into AdamW's kernel.
            generic = self._low_precision_groups()
            if not any(generic):
                if self.mode == "wd":
                    return self.base_optimizer.step(closure)
                return self._run_base(
                    closure, [self._rwd_override(g, f) for g, f in zip(self.param_groups, factors, strict=True)]
                )
            if self.mode == "wd":
                overrides = [{"weight_decay": 0.0} if low else {} for low in generic]
            else:
                overrides = [
                    {"weight_decay": 0.0} if low else self._rwd_override(g, f)
                    for low, g, f in zip(generic, self.param_groups, factors, strict=True)
                ]
            factors = [f if low else 1.0 for low, f in zip(generic, factors, strict=True)]  # 1: not scaled
        else:
            overrides = [{"weight_decay": 0.0} for _ in self.param_groups]

        # Generic base, or bf16/fp16 weights whose tiny decay needs stochastic rounding: the base runs
        # without decay and LPWD scales the weights that take part in this step (factor 1: skipped).
        if self.mode == "wd":
            self._scale_params(factors, only_with_grad=True)
            return self._run_base(closure, overrides)
        loss = self._run_base(closure, overrides)
        self._scale_params(factors, only_with_grad=True)
        return loss

    def _low_precision_groups(self) -> list[bool]:
        """Per group: does it hold bf16/fp16 parameters that need stochastic rounding.

        Not cached: ``model.to(torch.bfloat16)`` changes the dtype of the very same Parameter objects,
        and the check is one dtype lookup per parameter (microseconds per step).
        """
        if not self.stochastic_rounding:
            return [False] * len(self.param_groups)
        return [any(p.dtype in LOW_PRECISION_DTYPES for p in g["params"]) for g in self.param_groups]

    @staticmethod
    def _rwd_override(group: dict[str, Any], factor: float) -> dict[str, Any]:
        """AdamW's own update with η' = η·(1 − ηλ), λ' = λ/(1 − ηλ) equals (1 − ηλ)(θ − ηu)."""
        if factor == 1.0:
            return {}
        lr = group["lr"]
        lam = _as_float(group["weight_decay"])
        return {"lr": lr * factor, "weight_decay": lam / factor}

    # ------------------------------------------------------------------ plumbing
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = getattr(self, "base_optimizer", None)
        if base is None:  # called by torch.optim.Optimizer.__init__ on the shared groups
            super().add_param_group(param_group)
            return
        base.add_param_group(param_group)
        group = base.param_groups[-1]
        group.setdefault("weight_decay", self.defaults["weight_decay"])
        self._validate_group(len(base.param_groups) - 1, group)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict: LPWD keeps no state of its own."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __repr__(self) -> str:
        return f"LPWD(mode={self.mode!r}, base={self.base_optimizer!r})"
