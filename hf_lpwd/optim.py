"""The decay math: *when* weight decay is applied (wd / rwd / pwd) around a base torch optimizer.

With η the group's learning rate at the step, λ the group's ``weight_decay`` and u the base
optimizer's update direction (Adam's m̂/(√v̂+ε), SGD's momentum buffer, ...):

* ``wd``  (decoupled decay, AdamW):   θ ← θ − η·u − η·λ·θ
* ``rwd`` (real-time decay):          θ ← (1 − η·λ)·(θ − η·u)
* ``pwd`` (pre-weight decay):         θ ← (1 − η·λ)·θ *before the forward pass*, so the gradient is
  taken at the decayed weights; then θ ← θ − η·u

*How much* λ each parameter gets (uniform, or layer-wise λ·(d+1)/(N+2) for LPWD) is a matter of
param groups (:mod:`hf_lpwd.groups`); nothing in this module knows about layers.

Why the timings cost what they cost.  An optimizer step is memory bound, so its cost is the number
of passes over the parameters:

* On the AdamW base, ``wd`` *is* torch's AdamW, and ``rwd`` is torch's AdamW with
  η' = η·(1 − η·λ) and λ' = λ / (1 − η·λ), because
  (1 − η'·λ')·θ − η'·u = (1 − η·λ)·θ − η·(1 − η·λ)·u = (1 − η·λ)·(θ − η·u).
* ``pwd`` is folded the same way, with the *next* step's lr.  Writing θ'_t = (1 − η_t·λ)·θ_t for
  the weights the forward of step t sees, θ'_{t+1} = (1 − η_{t+1}·λ)·(θ'_t − η_t·u_t): one AdamW
  update with η' = η_t·(1 − η_{t+1}·λ) and λ' = η_{t+1}·λ / η'.  So LPWD keeps θ' as the model's
  weights: after ``step()`` the model holds the weights the *next* forward will see, already
  decayed, and pwd costs what AdamW costs.  η_{t+1} comes from the lr scheduler
  (:meth:`LPWD.set_lr_scheduler`; a ``LambdaLR``, as every Trainer schedule but
  ``reduce_lr_on_plateau``, says it exactly: base_lr × λ(last_epoch + 1)); without one, LPWD
  predicts the current lr.  The prediction is checked, not trusted: each group records the factor
  it applied (param-group key ``lpwd_applied_decay``), and ``pre_step()`` compares it with
  1 − η_t·λ at the lr the group has *now*; only when they differ (lr set by hand, a scheduler that
  cannot look ahead, the very first step) does it rescale by (1 − η_t·λ)/(applied) in one pass.
  Exact in every case; free whenever the prediction holds.
* Cases the fold cannot serve take one separate multiply pass after the base step (with λ = 0 in
  the base): η_t = 0 (warm-up start: the fold would divide by η'), bases other than torch's AdamW,
  and groups of bf16/fp16 weights that need stochastic rounding.  Parameters of a folded group that
  have no gradient this step (AdamW skips them) are scaled in the same way, so the whole group
  always holds the decayed weights.
* A step with no next step (the Trainer tells LPWD ``num_training_steps``) applies no next decay,
  so the final parameters equal unfolded pwd's.  :meth:`LPWD.settle` removes a decay applied for a
  step that will not come (a loop that stops early).
* Any base other than AdamW runs with ``weight_decay = 0`` (torch's SGD and Adam would otherwise
  add λ·θ to the gradient, i.e. L2, not decay) and LPWD scales the weights itself: before the base
  step for ``wd`` (u does not depend on θ, so (1 − ηλ)θ − ηu = θ − ηu − ηλθ), after it for ``rwd``.

Once per step.  ``pre_step()`` acts once per optimizer step: calling it again before ``step()`` is
a no-op, so a loop may call it before every micro-batch of a gradient accumulation group.  A step
skipped by a gradient scaler leaves the applied decay as it is, so it is never applied twice.
A checkpoint taken between steps holds the decayed weights θ'_{t+1} *and*, in the optimizer's
``state_dict()`` (its param groups), the factor they carry, so a resumed run is bitwise the
uninterrupted one.  Between steps, evaluation also sees θ'_{t+1}: the weights the next forward will see.

DeepSpeed.  Under ZeRO the model's weights are copies of DeepSpeed's fp32 master partitions, which
LPWD's ``param_groups`` hold: a pre-forward pass on the model would be overwritten, but the fold
acts on the masters inside ``step()``.  With ``require_pre_step = False`` (set by the Trainer glue
there), ``step()`` applies any decay the prediction missed itself, before the update; the gradient
of such a step was then taken at the predicted weights (with the Trainer's ``LambdaLR`` schedules
that happens only at the first step, and not at all when the warm-up starts from lr 0).

Low precision.  For bf16 / fp16 parameters the factor 1 − η·λ is often closer to 1 than the format
resolves, and ``θ * (1 − η·λ)`` rounds back to θ: the decay silently does nothing.  LPWD applies
its own decay passes with stochastic rounding on such parameters (see :mod:`hf_lpwd.rounding`);
fp32/fp64 parameters take the plain, exact path.  On the AdamW base a param group holding bf16/fp16
parameters therefore runs the generic path (AdamW with λ = 0, then LPWD's rounded scale pass), while
groups of fp32 parameters keep folding the decay into the kernel, bit for bit as without any low
precision parameter.  With ``stochastic_rounding=False`` LPWD warns at construction about every group
whose per-step decay η·λ is below its dtype's resolution.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .rounding import LOW_PRECISION_DTYPES, scale_

logger = logging.getLogger("hf_lpwd")

TIMINGS: tuple[str, ...] = ("wd", "rwd", "pwd")
"""When the decay is applied: the ``mode`` of :class:`LPWD`.  The user-facing ``lpwd`` mode is
``pwd`` with layer-wise param groups (:data:`hf_lpwd.config.WEIGHT_DECAY_MODES`)."""

DECAY_MODES = TIMINGS
"""hf_lpwd 0.1.0's name of :data:`TIMINGS`, kept for compatibility."""

DEFAULT_WEIGHT_DECAY = 0.01
"""λ when none is given: the one default of :class:`LPWD`, :class:`hf_lpwd.LPWDConfig` and the CLI
(the Trainer's ``--weight_decay`` keeps transformers' own default)."""

BASE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adamw_torch": torch.optim.AdamW,
    "adamw_torch_fused": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
"""Names accepted for ``base``: short names and the Trainer's ``--optim`` names (the values of
``LPWDConfig.base_optimizer``) that map to one torch class; any ``torch.optim.Optimizer`` subclass
is accepted as well."""

APPLIED_DECAY_KEY = "lpwd_applied_decay"
"""Param-group key (pwd): the factor 1 − η̂·λ already applied to the group's weights for the coming
step, ``None`` when none is.  It lives in the group so ``state_dict()`` carries it to a resumed run."""
_INDEX_KEY = "lpwd_group_index"  # the group's position, also when DeepSpeed steps one group at a time
_FOR_STEP_KEY = "lpwd_applied_for_step"  # the step index whose forward the applied factor serves
_CARRIED_KEY = "lpwd_carried_decay"  # the factor the weights carried during the step that set it
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
    """Weight decay timings ``wd`` / ``rwd`` / ``pwd`` around a base optimizer.

    ``LPWD`` *is* a ``torch.optim.Optimizer``: it shares ``param_groups`` and ``state`` with the base
    optimizer it builds, so LR schedulers, gradient clipping, Accelerate's ``AcceleratedOptimizer``
    and checkpointing see one optimizer.  Each group's ``weight_decay`` is its λ and its ``lr`` is
    read at every step.

    Args:
        params: parameters or param groups (e.g. from :func:`hf_lpwd.lpwd_param_groups`).  A group
            with an ``lr_multiplier`` and no ``lr`` of its own gets ``lr × lr_multiplier`` (layer-wise
            lr decay).
        base: ``"adamw"``, ``"sgd"``, a Trainer ``--optim`` name of :data:`BASE_OPTIMIZERS`, or any
            ``torch.optim.Optimizer`` subclass.
        mode: the timing, one of :data:`TIMINGS`.  (``"lpwd"`` is not a timing: it is ``pwd`` with
            ``lpwd_param_groups(model, λ)``.)
        weight_decay: λ for groups that do not set their own.
        stochastic_rounding: decay bf16/fp16 parameters with stochastic rounding so that decays
            below their resolution still take effect on average (no effect on fp32 parameters).
            The random bits come from torch's global generator, so ``transformers.set_seed``
            reproduces runs, but they consume its state (dropout masks then differ from a run
            without low precision weights).  ``False`` warns at construction if some group's
            η·λ is below its dtype's resolution, i.e. if the decay would be lost.
        **base_kwargs: passed to the base optimizer (``lr``, ``betas``, ``eps``, ``momentum``,
            ``foreach``, ``fused``, ...).

    Training loop (``pre_step`` is a no-op for ``wd`` and ``rwd``, and costs nothing for ``pwd``
    whenever the fold predicted the lr right; ``set_lr_scheduler`` lets it predict a schedule)::

        opt.set_lr_scheduler(scheduler, num_training_steps)   # optional, pwd only
        for batch in loader:
            opt.pre_step()
            model(**batch).loss.backward()
            opt.step(); scheduler.step(); opt.zero_grad()
        opt.settle()   # only if the loop stopped before num_training_steps (or gave none)
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base: str | type[torch.optim.Optimizer] = "adamw",
        mode: str = "pwd",
        *,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        stochastic_rounding: bool = True,
        **base_kwargs: Any,
    ) -> None:
        if mode not in TIMINGS:
            hint = (
                " ('lpwd' is the pwd timing with layer-wise groups: "
                "LPWD(lpwd_param_groups(model, weight_decay), mode='pwd'))" if mode == "lpwd" else ""
            )
            raise ValueError(f"LPWD: unknown mode {mode!r}; valid modes (timings) are {list(TIMINGS)}{hint}")
        base_cls = resolve_base(base)
        _refuse_schedule_free(base_cls)
        if "weight_decay" in base_kwargs:
            raise ValueError("LPWD: pass weight_decay to LPWD itself (it is λ), not inside base_kwargs")
        if isinstance(base, str) and base.lower() == "adamw_torch_fused":
            base_kwargs.setdefault("fused", True)
        self.mode = mode
        self.stochastic_rounding = stochastic_rounding
        self.require_pre_step = True
        """pwd: ``step()`` without ``pre_step()`` on a step whose decay the fold did not apply is an
        error (``True``), or is corrected inside ``step()`` (``False``: DeepSpeed, see the module doc)."""
        self.fold_corrections = 0
        """pwd: how many group-steps needed a correction pass (a missed lr prediction, the first decay)."""
        # Only torch's own AdamW has decoupled decay we can fold rwd / pwd into; every other base runs
        # with weight_decay = 0 and LPWD scales the weights itself.
        self.folds_decay_into_base = base_cls is torch.optim.AdamW
        # λ lives in each group's "weight_decay" before the base sees the groups: a base whose own
        # default is 0 (SGD) or that has no such argument must not override it.
        groups = _as_param_groups(params)
        own_lr = [("lr" in group) for group in groups]
        for index, group in enumerate(groups):
            group.setdefault("weight_decay", weight_decay)
            group[_INDEX_KEY] = index
        base_optimizer = base_cls(groups, **base_kwargs)
        for group, has_lr in zip(base_optimizer.param_groups, own_lr, strict=True):
            _apply_lr_multiplier(group, has_lr)
        for index, group in enumerate(base_optimizer.param_groups):
            self._validate_group(index, group)
        defaults = dict(base_optimizer.defaults)
        defaults["weight_decay"] = weight_decay  # λ is LPWD's, not the base's default (0 on SGD)
        super().__init__(base_optimizer.param_groups, defaults)
        # Share, don't copy: the scheduler and Accelerate mutate these lists / dicts.
        self.base_optimizer = base_optimizer
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        self._pre_step_done = False  # pre_step() ran since the previous step()
        self._lr_scheduler: Any = None
        self._num_training_steps: int | None = None
        if not stochastic_rounding:
            self._warn_if_decay_is_lost()

    # ------------------------------------------------------------------ the lr schedule (pwd's fold)
    def set_lr_scheduler(self, lr_scheduler: Any, num_training_steps: int | None = None) -> None:
        """Tell pwd's fold where the next step's lr comes from, and when there is no next step.

        ``lr_scheduler`` must step this optimizer's groups once per ``step()``.  A ``LambdaLR`` (every
        Trainer schedule but ``reduce_lr_on_plateau``) gives the next lr exactly; for any other
        scheduler the fold predicts the current lr and ``pre_step()`` corrects the steps where it
        changed.  ``num_training_steps``: after the step with index ``num_training_steps - 1`` (the
        scheduler's ``last_epoch``) no decay is applied for a step that never comes.
        """
        self._lr_scheduler = lr_scheduler
        self._num_training_steps = num_training_steps
        if self.mode == "pwd" and lr_scheduler is not None and not _can_look_ahead(lr_scheduler):
            logger.warning(
                "LPWD: %s cannot say the next step's lr, so pwd folds in the current lr and pre_step() corrects, "
                "with one pass over the weights, each step where the lr changed",
                type(lr_scheduler).__name__,
            )

    def _next_lr(self, group: dict[str, Any]) -> float | None:
        """η_{t+1} of ``group`` as the scheduler will set it, or ``None`` when step t is the last one."""
        scheduler = self._lr_scheduler
        if scheduler is None:
            return _as_float(group["lr"])
        last_epoch = getattr(scheduler, "last_epoch", None)
        if self._num_training_steps is not None and last_epoch is not None and last_epoch + 1 >= self._num_training_steps:
            return None
        index = group.get(_INDEX_KEY)
        if _can_look_ahead(scheduler) and index is not None and index < len(scheduler.lr_lambdas):
            return _as_float(scheduler.base_lrs[index] * scheduler.lr_lambdas[index](last_epoch + 1))
        return _as_float(group["lr"])

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
        _check_factor(index, group, eta, lam)
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

    @staticmethod
    def _carried_factor(group: dict[str, Any], step_index: int | None) -> float:
        """The decay factor the weights about to be stepped carry now (read only).

        Normally the group's applied factor.  DeepSpeed ZeRO-3 steps a large group as several flat
        sub-groups, one ``step()`` call each: once the first is stepped, the group's applied factor
        already says η_{t+1}, while the sub-groups not stepped yet still carry what the whole group
        carried when this optimizer step began (``lpwd_carried_decay``).  The step index (the
        scheduler's) tells the two apart.
        """
        if step_index is not None and group.get(_FOR_STEP_KEY) == step_index + 1:
            carried = group.get(_CARRIED_KEY)
        else:
            carried = group.get(APPLIED_DECAY_KEY)
        return 1.0 if carried is None else float(carried)

    @staticmethod
    def _begin_step(group: dict[str, Any], step_index: int | None) -> float:
        """Open step t's bookkeeping for ``group`` at its first (sub-)group call; return the factor carried."""
        carried = LPWD._carried_factor(group, step_index)
        if step_index is not None and group.get(_FOR_STEP_KEY) != step_index + 1:
            group[_CARRIED_KEY] = carried
            group[_FOR_STEP_KEY] = step_index + 1
        return carried

    def _step_index(self) -> int | None:
        """Index t of the optimizer step being taken (the scheduler's ``last_epoch``); ``None`` without one.

        Only DeepSpeed's sub-groups need it, and DeepSpeed always runs with the Trainer's scheduler.
        """
        last_epoch = getattr(self._lr_scheduler, "last_epoch", None)
        return int(last_epoch) if last_epoch is not None else None

    def _decay_is_up_to_date(self) -> bool:
        """pwd: do the weights of every group with parameters carry this step's 1 − η_t·λ."""
        step_index = self._step_index()
        for index, group in enumerate(self.param_groups):
            eta, lam = self._validate_group(index, group)
            if group["params"] and 1.0 - eta * lam != self._carried_factor(group, step_index):
                return False
        return True

    @torch.no_grad()
    def _bring_decay_up_to_date(self) -> bool:
        """pwd, before the forward: make every group's weights carry this step's 1 − η_t·λ.

        Returns True if a pass was needed.  Groups without parameters are left exactly as they are.
        """
        corrected = False
        for group, wanted in zip(self.param_groups, self._decay_factors(), strict=True):  # validate all first
            if not group["params"]:
                continue
            carried = self._carried_factor(group, None)
            if wanted != carried:
                scale_(list(group["params"]), wanted / carried, stochastic=self.stochastic_rounding)
                self.fold_corrections += 1
                corrected = True
            group[APPLIED_DECAY_KEY] = wanted
        return corrected

    def pre_step(self) -> None:
        """pwd: make the weights (1 − η_t·λ)·θ_t before the forward pass; a no-op for wd / rwd.

        The previous ``step()`` already applied the decay it predicted for this step, so this only
        checks the prediction against each group's lr now and, where it differs (or no decay was
        applied yet: the first step, a run resumed from a 0.1.0 checkpoint), rescales that group in one
        pass.  Acts once per optimizer step: further calls before the next :meth:`step` do nothing,
        so it is safe to call before every micro-batch.
        """
        if self.mode != "pwd" or self._pre_step_done:
            return
        self._bring_decay_up_to_date()
        self._pre_step_done = True

    @torch.no_grad()
    def decay_initial_weights(
        self, initial_lr_scale: float, storage: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """pwd: apply step 0's decay (1 − η_0·λ) now, before the weights are copied anywhere.

        For engines that copy the model's weights into master weights of their own before the first
        forward (DeepSpeed): a pass before that copy reaches both the forward and the masters, as
        ``pre_step()`` does in a plain loop.  ``initial_lr_scale`` is the schedule's λ(0) (η_0 = lr × λ(0),
        0 for a warm-up from lr 0: then nothing is done); ``storage`` maps a parameter to the tensor
        that holds its values (DeepSpeed ZeRO-3: ``p.ds_tensor``).
        """
        if self.mode != "pwd":
            return
        factors = []
        for index, group in enumerate(self.param_groups):
            eta, lam = self._validate_group(index, group)
            _check_factor(index, group, eta * initial_lr_scale, lam, "the first step's lr")
            factors.append(1.0 - eta * initial_lr_scale * lam)
        for group, factor in zip(self.param_groups, factors, strict=True):
            if factor != 1.0 and group["params"]:
                tensors = [storage(p) if storage is not None else p for p in group["params"]]
                scale_([t for t in tensors if t.numel() > 0], factor, stochastic=self.stochastic_rounding)
            group[APPLIED_DECAY_KEY] = factor

    @property
    def pre_step_pending(self) -> bool:
        """True between a pwd ``pre_step()`` and the ``step()`` it belongs to."""
        return self._pre_step_done

    @torch.no_grad()
    def settle(self) -> None:
        """pwd: undo the decay already applied for a step that will not come.

        After the last ``step()`` of a loop that gave no ``num_training_steps`` (or stopped before
        it), the weights hold (1 − η̂·λ)·θ_T; this divides that factor out, so they are θ_T, the final
        parameters of unfolded pwd.  A later ``pre_step()`` decays again as needed.
        """
        for group in self.param_groups:
            applied = group.get(APPLIED_DECAY_KEY)
            if applied is not None and float(applied) != 1.0 and group["params"]:
                scale_(list(group["params"]), 1.0 / float(applied), stochastic=self.stochastic_rounding)
            group[APPLIED_DECAY_KEY] = None
            group.pop(_FOR_STEP_KEY, None)
            group.pop(_CARRIED_KEY, None)
        self._pre_step_done = False

    # ------------------------------------------------------------------ the step
    def _run_base(self, overrides: list[dict[str, Any]]) -> None:
        """Run the base step with per-group values temporarily replaced, restoring them always."""
        saved = [{key: group[key] for key in override} for group, override in zip(self.param_groups, overrides, strict=True)]
        try:
            for group, override in zip(self.param_groups, overrides, strict=True):
                group.update(override)
            self.base_optimizer.step()
        finally:
            for group, values in zip(self.param_groups, saved, strict=True):
                group.update(values)

    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Take one optimizer step with the configured timing (see the module docstring).

        A ``closure`` is evaluated first (with gradients enabled, as torch's optimizers do), so the
        gradient is always taken at the weights as they are before any decay of this step.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # DeepSpeed ZeRO-1/2 replace our ``param_groups`` with a one-group list while stepping one
        # group: the base must step exactly the groups we are given.
        base = self.base_optimizer
        base_groups = base.param_groups
        base.param_groups = self.param_groups
        try:
            if self.mode == "pwd":
                self._step_pwd()
            else:
                self._step_wd_rwd()
        finally:
            base.param_groups = base_groups
            self._pre_step_done = False
        return loss

    def _step_pwd(self) -> None:
        if not self._pre_step_done:
            if self.require_pre_step and not self._decay_is_up_to_date():
                raise RuntimeError(
                    "LPWD(mode='pwd'): step() was called without pre_step() on a step whose decay was not applied "
                    "yet (the first step, or an lr other than the one the previous step folded in), so the "
                    "gradient was taken at undecayed weights. Call optimizer.pre_step() once per optimizer step, "
                    "before the forward pass (LPWDTrainer does this for you), or use mode='rwd' if the loop "
                    "cannot be changed."
                )
        low = self._low_precision_groups()
        step_index = self._step_index()
        # Pass 1, read only: validate every group (η_t and the predicted η_{t+1}) before anything changes.
        plans: list[tuple[float, float, float] | None] = []  # (η_t, 1 − η_t·λ, next factor) per group
        for index, group in enumerate(self.param_groups):
            eta, lam = self._validate_group(index, group)
            if not group["params"]:  # ZeRO-3: a group not stepped in this call keeps its bookkeeping
                plans.append(None)
                continue
            next_lr = self._next_lr(group)
            factor = 1.0
            if next_lr is not None and lam != 0.0:
                _check_factor(index, group, next_lr, lam, "the next step's lr")
                factor = 1.0 - next_lr * lam
            plans.append((eta, 1.0 - eta * lam, factor))
        # Pass 2: this step's decay where it is missing, then one base step with the next decay folded in.
        overrides: list[dict[str, Any]] = []
        after: list[tuple[list[torch.Tensor], float]] = []  # scale passes after the base step
        for index, (group, plan) in enumerate(zip(self.param_groups, plans, strict=True)):
            if plan is None:
                overrides.append({})
                continue
            eta, wanted, factor = plan
            # The decay must be on the weights the update starts from: pre_step() put it there, or (no
            # pre_step(): DeepSpeed, or a missed prediction) it is applied now, in one pass.
            carried = self._begin_step(group, step_index)
            if carried != wanted:
                with torch.no_grad():
                    scale_(list(group["params"]), wanted / carried, stochastic=self.stochastic_rounding)
                self.fold_corrections += 1
            if factor == 1.0:
                overrides.append({"weight_decay": 0.0})
            elif self.folds_decay_into_base and not low[index] and eta > 0.0:
                # One AdamW update: (1 − η'λ')θ − η'u = (1 − η_{t+1}λ)(θ − η_t u).
                overrides.append({"lr": group["lr"] * factor, "weight_decay": (1.0 - factor) / (eta * factor)})
                idle = [p for p in group["params"] if p.grad is None]  # AdamW skips them
                if idle:
                    after.append((idle, factor))
            else:
                overrides.append({"weight_decay": 0.0})
                after.append((list(group["params"]), factor))
        self._run_base(overrides)
        with torch.no_grad():
            for params, factor in after:
                scale_(params, factor, stochastic=self.stochastic_rounding)
        for group, plan in zip(self.param_groups, plans, strict=True):
            if plan is not None:
                group[APPLIED_DECAY_KEY] = plan[2]

    def _step_wd_rwd(self) -> None:
        factors = self._decay_factors()
        if self.folds_decay_into_base:
            # Groups with bf16/fp16 weights (stochastic rounding on) take the generic path below; the
            # others fold the decay into AdamW's kernel.
            generic = self._low_precision_groups()
            if not any(generic):
                if self.mode == "wd":
                    self.base_optimizer.step()
                    return
                self._run_base([self._rwd_override(g, f) for g, f in zip(self.param_groups, factors, strict=True)])
                return
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
            self._run_base(overrides)
            return
        self._run_base(overrides)
        self._scale_params(factors, only_with_grad=True)

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
        param_group = dict(param_group)
        has_lr = "lr" in param_group
        param_group.setdefault("weight_decay", self.defaults["weight_decay"])
        param_group[_INDEX_KEY] = len(base.param_groups)
        base.add_param_group(param_group)
        group = base.param_groups[-1]
        _apply_lr_multiplier(group, has_lr)
        self._validate_group(len(base.param_groups) - 1, group)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict; pwd's applied decay rides in its param groups."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def __repr__(self) -> str:
        return f"LPWD(mode={self.mode!r}, base={self.base_optimizer!r})"


def _check_factor(index: int, group: dict[str, Any], eta: float, lam: float, what: str = "lr") -> None:
    """η must be finite and >= 0, and η·λ < 1 (else 1 − η·λ <= 0 flips the weights' signs)."""
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"LPWD: {_group_label(index, group)} has {what}={eta}; η must be a finite number >= 0")
    if eta * lam >= 1.0:
        raise ValueError(
            f"LPWD: {_group_label(index, group)} has {what}={eta} and weight_decay={lam}: the decay factor "
            f"1 - lr*weight_decay = {1.0 - eta * lam:g} would be <= 0 and flip the weights' signs. Lower "
            "weight_decay or lr so that lr*weight_decay < 1"
        )


def _apply_lr_multiplier(group: dict[str, Any], has_own_lr: bool) -> None:
    """Layer-wise lr decay: a group without an lr of its own trains at the optimizer's lr × ``lr_multiplier``."""
    multiplier = group.get("lr_multiplier", 1.0)
    if not has_own_lr and multiplier != 1.0 and group.get("lr") is not None:
        group["lr"] = group["lr"] * multiplier


def _can_look_ahead(lr_scheduler: Any) -> bool:
    """A ``LambdaLR`` (and subclasses) computes any step's lr as base_lr × λ(step)."""
    return isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR)


def _refuse_schedule_free(base_cls: type) -> None:
    """Schedule-free optimizers keep two weight sequences and switch with ``train()`` / ``eval()``."""
    if callable(getattr(base_cls, "train", None)) and callable(getattr(base_cls, "eval", None)):
        raise ValueError(
            f"LPWD: {base_cls.__name__} is a schedule-free optimizer: it keeps two weight sequences (x and z) and "
            "the model holds a third, their interpolation y, switched by optimizer.train()/eval(); it has its own "
            "decay rule on y, and 'before the forward pass' or 'after the update' has no single set of weights to "
            "act on. Use its own weight_decay with the stock Trainer, or an optimizer with one weight sequence "
            "(--optim adamw_torch_fused, adamw_torch, sgd, adafactor) with LPWD."
        )
