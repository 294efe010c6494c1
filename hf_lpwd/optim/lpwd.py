"""``LPWD``: a thin ``torch.optim.Optimizer`` that applies the decay timings around a base optimizer.

The math is in :mod:`hf_lpwd.optim.functional`, pwd's bookkeeping in :mod:`hf_lpwd.optim.ledger`, the next-lr
look-ahead in :mod:`hf_lpwd.optim.lookahead`.  This class builds the base, shares its ``param_groups`` and
``state``, and turns each step into per-group plans: scale passes before and after the base step, and the
base's own (η, λ) for the step, so that on torch's AdamW every timing and coupling is one kernel call.

pwd's fold.  With θ'_t = (1 − d_t)·θ_t the weights the forward of step t sees, θ'_{t+1} = (1 − d_{t+1})·(θ'_t
− η_t·u_t): one AdamW update with the *next* step's decay.  After ``step()`` the model holds the weights the
next forward will see; ``pre_step()`` only checks the prediction (and rescales a group in one pass where the
lr was not the predicted one).  A step with no next step applies no next decay, so the final weights are
unfolded pwd's; :meth:`LPWD.settle` removes a decay applied for a step that will not come.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .._compat.torch import optimizer_hook_dicts
from ..settings import (
    CAUTIOUS_KERNELS,
    DEFAULT_WEIGHT_DECAY,
    LR_COUPLINGS,
    TIMINGS,
    check_decay_factor,
    validate_bool,
    validate_cautious,
)
from . import ledger, lookahead
from .bases import (
    coming_update_direction,
    refuse_cautious_base,
    refuse_own_decay_rule,
    refuse_schedule_free,
    resolve_base,
    step_without_global_hooks,
)
from .cautious_adamw import cautious_adamw_step
from .functional import apply_cautious_decay_, effective_weight_decay, pwd_fold_on_adamw, rwd_on_adamw
from .precision import fraction_below_half_ulp, unrounded_share
from .rounded_step import one_pass_supported, rounded_step
from .rounding import LOW_PRECISION_DTYPES, NoiseKeys, scale_
from .spd import check_spd, check_spd_strength, spd_decay_, spd_decays, spd_measure
from .target import GROUP_KEY, check_target, initial_copy, pack, toward_, unpack

logger = logging.getLogger("hf_lpwd")

ROUNDING_STATE_KEY = "lpwd_rounding_noise"
"""``state_dict()`` key of the rounding's noise state ({"seed", "count"}), once a bf16/fp16 step rounded."""
_SEED_SALT = (
    0x4C505744  # "LPWD": the noise's seed is torch's initial seed mixed, not the dropout stream itself
)

_SETTINGS = (
    "base_optimizer",
    "mode",
    "lr_coupling",
    "cautious",
    "cautious_kernel",
    "stochastic_rounding",
    "rounding_kernel",
    "require_pre_step",
    "fold_corrections",
    "folds_decay_into_base",
    "_pre_step_done",
    "_num_training_steps",
    "_noise",
    "_precision_checked",
    "decay_target",
    "_anchors",
    "spd",
)
"""LPWD's own attributes, which pickling and deepcopy must carry beside torch's
defaults/state/param_groups."""


@dataclass
class _GroupPlan:
    """What one step does to one param group, around one base step."""

    override: dict[str, Any] = field(default_factory=dict)  # the base's hyperparameters for this step
    before: float = 1.0  # scale of the parameters with a gradient, before the base step (generic wd)
    after: float = 1.0  # scale after the base step ...
    after_scope: str = "stepped"  # ... of the parameters with a gradient, "all" of them, or the "idle" ones
    cautious: float = 0.0  # d_t of the masked decay, before the base step
    record: float | None = None  # pwd: the factor the weights carry for the next step, once stepped
    anchored: bool = False  # decay toward θ₀ (target "init"): every pass above is a lerp toward θ₀
    spd: float = 0.0  # SPD's λ (rwd): measured before the base step, the selective decay after it


def _group_label(index: int, group: dict[str, Any]) -> str:
    depth = group.get("depth")
    return f"param group {index}" + (f" (depth {depth})" if depth is not None else "")


def _as_param_groups(params: Iterable[torch.Tensor] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalise ``params`` to a list of group dicts (shallow copies: the caller's dicts stay as they
    were)."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            "LPWD: params must be an iterable of tensors or of param group dicts, not a single tensor"
        )
    params = list(params)
    if not params:
        raise ValueError("LPWD: got an empty parameter list")
    if all(isinstance(p, dict) for p in params):
        return [dict(group) for group in params]
    return [{"params": params}]


def _apply_lr_multiplier(group: dict[str, Any], has_own_lr: bool) -> None:
    """Layer-wise lr decay: a group without an lr of its own trains at the optimizer's lr ×
    ``lr_multiplier``."""
    multiplier = group.get("lr_multiplier", 1.0)
    if not has_own_lr and multiplier != 1.0 and group.get("lr") is not None:
        group["lr"] = group["lr"] * multiplier


class LPWD(torch.optim.Optimizer):
    """Weight decay timings ``wd`` / ``rwd`` / ``pwd`` around a base optimizer.

    ``LPWD`` *is* a ``torch.optim.Optimizer``: it shares ``param_groups`` and ``state`` with the base
    optimizer it builds, so LR schedulers, gradient clipping, Accelerate's ``AcceleratedOptimizer`` and
    checkpointing see one optimizer, and its step and state_dict hooks fire once per call.

    Args:
        params: parameters or param groups (e.g. from :func:`hf_lpwd.lpwd_param_groups`).  A group
            with an ``lr_multiplier`` and no ``lr`` of its own gets ``lr × lr_multiplier`` (LLRD).
        base: ``"adamw"``, ``"sgd"``, a Trainer ``--optim`` name of :data:`BASE_OPTIMIZERS`, or any
            ``torch.optim.Optimizer`` subclass.
        mode: the timing, one of :data:`TIMINGS` (``"lpwd"`` is ``pwd`` with ``lpwd_param_groups``).
        weight_decay: λ for groups that do not set their own.
        lr_coupling: how the per-step decay d_t follows the lr: ``coupled`` η_t·λ, ``independent``
            (η_t/η̄)·λ, ``corrected`` (η_t²/η̄)·λ, with η̄ the group's base lr (its ``initial_lr``,
            set at construction for the two latter and kept by torch's schedulers).
        cautious: decay only where the update and the weight agree in sign,
            θ ← θ − η·u − d·1[u⊙θ ≥ 0]⊙θ (``wd`` timing; AdamW, Adam or SGD base).
        cautious_kernel: ``"compiled"`` runs cautious AdamW/Adam as one ``torch.compile``'d pass per
            tensor (compiled on the first step; on CUDA the rounded step's fp32 kernels, which take SGD and
            fused AdamW too; the eager path where neither applies), ``"eager"`` as a mask pass before the
            base's own step.  Same equation; the former is faster.
        stochastic_rounding: on bf16/fp16 parameters, compute the whole step (update and decay) in fp32
            and write it with one stochastic rounding, so that E[θ_{t+1}] is the fp32 step
            (:mod:`hf_lpwd.optim.rounded_step`: AdamW, Adam, SGD; on other bases or tensor types the decay
            alone, and a log line at the first step says so).  No effect on fp32 parameters.  The bits come
            from a seed (``torch.initial_seed()`` at construction, the same on every rank) and a counter
            that ``state_dict()`` carries.  ``False``: round to nearest, the stock result; warns when the
            decay or most first updates are below the weights' resolution.
        decay_target: ``"zero"`` (weight decay) or ``"init"``: decay toward θ₀, the weights when the
            optimizer is built (after the pretrained checkpoint is loaded): wd θ − η·u − d·(θ − θ₀), rwd
            θ₀ + (1 − d)(θ − η·u − θ₀), pwd θ₀ + (1 − d)(θ − θ₀) before the forward, cautious mask
            1[u ⊙ (θ − θ₀) ≥ 0] (:mod:`hf_lpwd.optim.target`).  A group's own ``decay_target`` key wins
            (``"zero"`` for parameters new at fine-tuning time).  θ₀ is one copy, in the weight's dtype, of
            each parameter of a group with λ > 0 and target ``init`` (:attr:`initial_weights`), saved in
            ``state_dict()["state"][i]["decay_target"]``.
        spd: Selective Projection Decay (Tian, Huang & Kira 2024, :mod:`hf_lpwd.optim.spd`), a mask that
            selects whole tensors: after the base step θ̃ = θ − η·u, a tensor whose gradient opposes its
            progress (c = −⟨g, θ − θ₀⟩ < 0) loses the fraction λ·r of its deviation,
            θ ← θ̃ − λ·r·(θ̃ − θ₀), r = clip((‖θ̃ − θ₀‖ − ‖θ − θ₀‖)/‖θ̃ − θ₀‖, 0, 1).  The ``rwd`` timing only
            (the published rule; ``wd``'s pre-step form would need a copy of θ − θ₀, ``pwd`` has no θ̃); the
            group's ``weight_decay`` is λ, a fraction in [0, 1] not multiplied by the lr (so
            ``lr_coupling`` must stay ``coupled``); target ``init`` is the paper's, ``zero`` their LoRA
            form (adapters decayed toward 0).  Any base; no state of its own.  bf16/fp16 weights take the
            base's own step and the SPD decay stochastically rounded alone.
        **base_kwargs: passed to the base optimizer (``lr``, ``betas``, ``eps``, ``momentum``, ...).

    Training loop (``pre_step`` is a no-op for ``wd`` and ``rwd``)::

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
        lr_coupling: str = "coupled",
        cautious: bool = False,
        cautious_kernel: str = "compiled",
        stochastic_rounding: bool = True,
        decay_target: str = "zero",
        spd: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if mode not in TIMINGS:
            hint = (
                " ('lpwd' is the pwd timing with layer-wise groups: "
                "LPWD(lpwd_param_groups(model, weight_decay), mode='pwd'))"
                if mode == "lpwd"
                else ""
            )
            raise ValueError(f"LPWD: unknown mode {mode!r}; valid modes (timings) are {list(TIMINGS)}{hint}")
        if lr_coupling not in LR_COUPLINGS:
            raise ValueError(f"LPWD: lr_coupling={lr_coupling!r} is not one of {list(LR_COUPLINGS)}")
        validate_bool(spd, "LPWD: spd")  # SPD first: with cautious on, the mask is the conflict
        if spd:
            words = {"spd": "LPWD: spd", "weight_decay": "weight_decay (--weight_decay)"}
            values = {"mode": mode, "lr_coupling": lr_coupling, "cautious": cautious}
            check_spd({**values, "weight_decay": weight_decay}, lambda name: words.get(name, name))
        validate_cautious(cautious, mode, "LPWD: cautious")
        if cautious_kernel not in CAUTIOUS_KERNELS:
            raise ValueError(
                f"LPWD: cautious_kernel={cautious_kernel!r} is not one of {list(CAUTIOUS_KERNELS)}"
            )
        check_target(decay_target, "LPWD: decay_target")
        base_cls = resolve_base(base)
        refuse_schedule_free(base_cls)
        refuse_own_decay_rule(base_cls, base_kwargs)
        if cautious:
            refuse_cautious_base(base_cls)
        if "weight_decay" in base_kwargs:
            raise ValueError("LPWD: pass weight_decay to LPWD itself (it is λ), not inside base_kwargs")
        if isinstance(base, str) and base.lower() == "adamw_torch_fused":
            base_kwargs.setdefault("fused", True)
        self.mode = mode
        self.lr_coupling = lr_coupling
        self.cautious = cautious
        self.cautious_kernel = cautious_kernel
        self.stochastic_rounding = stochastic_rounding
        self.decay_target = decay_target
        self.spd = spd
        self.rounding_kernel = "compiled"
        """``"compiled"``: the rounded bf16 step is one ``torch.compile``'d pass per tensor; ``"eager"``: the
        same function run eagerly (also taken, with a warning, where compilation fails)."""
        self._noise = NoiseKeys(torch.initial_seed() ^ _SEED_SALT)
        self._precision_checked = False
        self.require_pre_step = True
        """pwd: ``step()`` without ``pre_step()`` on a step whose decay the fold did not apply is an error
        (``True``), or is corrected inside ``step()`` (``False``: DeepSpeed)."""
        self.fold_corrections = 0
        """pwd: how many group-steps needed a correction pass (a missed lr prediction, the first decay)."""
        # Only torch's own AdamW has decoupled decay we can fold rwd / pwd / the couplings into; every other
        # base runs with weight_decay = 0 and LPWD scales the weights itself.
        self.folds_decay_into_base = base_cls is torch.optim.AdamW
        # λ lives in each group's "weight_decay" before the base sees the groups: a base whose own
        # default is 0 (SGD) or that has no such argument must not override it.
        groups = _as_param_groups(params)
        own_lr = [("lr" in group) for group in groups]
        for index, group in enumerate(groups):
            group.setdefault("weight_decay", weight_decay)
            group[ledger.INDEX_KEY] = index
        base_optimizer = base_cls(groups, **base_kwargs)
        for group, has_lr in zip(base_optimizer.param_groups, own_lr, strict=True):
            _apply_lr_multiplier(group, has_lr)
            self._record_base_lr(group)
        for index, group in enumerate(base_optimizer.param_groups):
            self._validate_group(index, group)
            label = _group_label(index, group)
            check_target(group.get(GROUP_KEY, decay_target), f"LPWD: {label}'s {GROUP_KEY}")
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
        self._steps_taken: Callable[[], int] | None = None
        self._anchors: dict[torch.Tensor, torch.Tensor] = {}
        self._create_anchors(self.param_groups)
        self._warn_if_frozen_would_decay(self.param_groups)
        if not stochastic_rounding:
            self._warn_if_decay_is_lost()

    # ------------------------------------------------------------------ torch's Optimizer contract
    def __getstate__(self) -> dict[str, Any]:
        """torch keeps only defaults/state/param_groups; LPWD's settings and base must travel too.

        The lr scheduler is left behind (it refers to this object; a copy predicts the current lr and
        ``pre_step()`` corrects, exactly): call :meth:`set_lr_scheduler` on the copy to fold again.
        """
        state = super().__getstate__()
        state.update({name: self.__dict__[name] for name in _SETTINGS})
        state["_lr_scheduler"] = state["_steps_taken"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("cautious_kernel", "compiled")  # pickled by 0.3.0
        self.__dict__.setdefault("rounding_kernel", "compiled")
        self.__dict__.setdefault("_noise", NoiseKeys(torch.initial_seed() ^ _SEED_SALT))
        self.__dict__.setdefault("_precision_checked", False)
        self.__dict__.setdefault("decay_target", "zero")  # pickled before 0.4: toward zero
        self.__dict__.setdefault("_anchors", {})
        self.__dict__.setdefault("_steps_taken", None)
        self.__dict__.setdefault("spd", False)  # pickled before SPD
        base = self.__dict__.get("base_optimizer")
        if base is not None:  # keep sharing: torch's load_state_dict replaces our groups and state
            base.__setstate__({"state": self.state, "param_groups": self.param_groups})
            self.param_groups, self.state = base.param_groups, base.state

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (pwd's ledger rides in its param groups), with LPWD's hooks."""
        hooks = optimizer_hook_dicts(self)
        for pre_hook in hooks.state_dict_pre.values():
            pre_hook(self)
        state_dict = pack(self.base_optimizer.state_dict(), self._params_in_order(), self._anchors)
        if self._noise.count:  # only runs that rounded a step carry it: fp32 checkpoints keep torch's layout
            state_dict[ROUNDING_STATE_KEY] = self._noise.state_dict()
        for post_hook in hooks.state_dict_post.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        hooks = optimizer_hook_dicts(self)
        for pre_hook in hooks.load_state_dict_pre.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        state_dict = dict(state_dict)
        noise = state_dict.pop(ROUNDING_STATE_KEY, None)
        state_dict, saved_anchors = unpack(state_dict, self._params_in_order())
        self._check_saved_anchors(state_dict, saved_anchors)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._settle_loaded_anchors(saved_anchors)
        if noise is not None:
            self._noise.load_state_dict(noise)
        self._restore_fp32_moments(state_dict)
        for post_hook in hooks.load_state_dict_post.values():
            post_hook(self)

    # ------------------------------------------------------------------ θ₀, the target "init"
    def _target(self, group: dict[str, Any]) -> str:
        return group.get(GROUP_KEY, self.decay_target)

    def _anchored(self, group: dict[str, Any]) -> bool:
        """Does this group decay toward θ₀ (target ``init`` and λ > 0)?"""
        return self._target(group) == "init" and lookahead.as_float(group["weight_decay"]) > 0.0

    @property
    def initial_weights(self) -> dict[torch.Tensor, torch.Tensor]:
        """θ₀ per parameter decayed toward it (target ``init``, λ > 0); empty toward zero."""
        return self._anchors

    def defer_initial_weights(self) -> None:
        """Drop θ₀ taken at construction; each is taken at the first step from what the groups hold then.

        For engines that put partitions of their own in the groups before the first step (DeepSpeed ZeRO):
        θ₀ of the model's full parameters would be a full copy of the decayed weights on every rank until
        then.  The partitions still hold the pretrained weights at the first step (nothing has stepped), so
        their θ₀ is the same numbers.  Only before anything has stepped.
        """
        if any(self.state.values()):
            raise RuntimeError(
                "LPWD.defer_initial_weights() after a step: θ₀ would be taken from trained weights. Call it "
                "right after building the optimizer."
            )
        self._anchors = {}

    def _params_in_order(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def _create_anchors(self, groups: list[dict[str, Any]]) -> None:
        """θ₀ = the parameters as they are now, for every group decayed toward it."""
        for group in groups:
            if self._anchored(group):
                for p in group["params"]:
                    self._anchors[p] = initial_copy(p)

    @torch.no_grad()
    def _ensure_anchors(self) -> None:
        """θ₀ of parameters the groups hold now but did not at construction.

        DeepSpeed ZeRO replaces the groups' parameters with its fp32 master partitions after the optimizer is
        built, and shows them one group (ZeRO-1/2) or one flat sub-group (ZeRO-3) per ``step()`` call: a
        partition's θ₀ is taken here when it is first shown, from the partition itself (it holds the
        pretrained weights then: it has not stepped).  A partition not shown in this call keeps its θ₀; the
        θ₀ of the model's own parameters that DeepSpeed replaced is dropped (:meth:`_drop_replaced_anchors`).
        A parameter that has stepped without θ₀ (a group whose λ or target changed later) gets the weights it
        has now, and a warning says so.
        """
        if not (
            self._anchors or self.decay_target == "init" or any(GROUP_KEY in g for g in self.param_groups)
        ):
            return  # toward zero everywhere: nothing to do (and nothing done on today's path)
        late = created = 0
        for group in self.param_groups:
            if not self._anchored(group):
                continue
            for p in group["params"]:
                if p not in self._anchors:
                    created += 1
                    late += bool(self.state.get(p))
                    self._anchors[p] = initial_copy(p)
        if created:
            self._drop_replaced_anchors()
        if late:
            logger.warning(
                "LPWD: %d parameters that had already stepped decay toward init without a θ₀: their θ₀ is "
                "their weights now (decay_target='init' from the start keeps the pretrained ones)",
                late,
            )

    def _drop_replaced_anchors(self) -> None:
        """Forget the θ₀ of parameters no group holds now and that have no optimizer state: the model's
        parameters DeepSpeed replaced by its partitions.  Partitions not shown in this ``step()`` call have
        stepped (they have state) and keep theirs."""
        held = set(self._params_in_order())
        self._anchors = {p: a for p, a in self._anchors.items() if p in held or self.state.get(p)}

    def _anchors_of(self, group: dict[str, Any]) -> dict[torch.Tensor, torch.Tensor] | None:
        """θ₀ per parameter for an anchored group, ``None`` for a group decayed toward zero."""
        return self._anchors if self._anchored(group) else None

    def _check_saved_anchors(
        self, state_dict: dict[str, Any], saved_anchors: dict[torch.Tensor, torch.Tensor]
    ) -> None:
        """Refuse, before anything is loaded, a checkpoint whose stepped parameters have no θ₀ while this
        optimizer decays them toward init (asked per group: under DeepSpeed the groups hold partitions whose
        θ₀ is not taken yet)."""
        saved_sizes = [len(g["params"]) for g in state_dict.get("param_groups", [])]
        if saved_sizes != [len(g["params"]) for g in self.param_groups]:
            return  # other groups (another profile): torch's load_state_dict refuses that, not θ₀'s absence
        saved = state_dict.get("state", {})
        missing = 0
        index = 0
        for group in self.param_groups:
            anchored = self._anchored(group)
            for p in group["params"]:
                if anchored and p not in saved_anchors and saved.get(index):
                    missing += 1
                index += 1
        if missing:
            raise ValueError(
                "LPWD: decay_target='init' (--lpwd_decay_target init), but the checkpoint's optimizer state "
                f"has no θ₀ for {missing} parameters that have stepped (saved with decay_target 'zero' or "
                "before hf_lpwd 0.4): resuming would decay toward the resumed weights, not the pretrained "
                "ones. Resume with --lpwd_decay_target zero, or start from the pretrained model."
            )

    def _settle_loaded_anchors(self, saved_anchors: dict[torch.Tensor, torch.Tensor]) -> None:
        """After ``load_state_dict``: the saved θ₀ of every parameter this optimizer decays toward init (the
        θ₀ built here where the checkpoint has none: a parameter that never stepped); a saved θ₀ is dropped
        where this optimizer decays toward zero.  Under DeepSpeed the groups hold its partitions by now: they
        get their saved θ₀, and the θ₀ of the model's parameters they replaced is dropped."""
        for group in self.param_groups:
            if self._anchored(group):
                for p in group["params"]:
                    if p in saved_anchors:
                        self._anchors[p] = saved_anchors[p]
        if saved_anchors:
            self._drop_replaced_anchors()

    def _restore_fp32_moments(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` casts a state tensor to its parameter's dtype: the rounded step's fp32
        moments of a bf16/fp16 weight would come back in bf16.  Put the saved fp32 values back (resume is
        bitwise)."""
        saved = state_dict.get("state", {})
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                entry = saved.get(index, {})
                index += 1
                if p.dtype not in LOW_PRECISION_DTYPES or p not in self.state:
                    continue
                for key, value in entry.items():
                    if torch.is_tensor(value) and value.dtype == torch.float32 and key != "step":
                        self.state[p][key] = value.to(device=p.device, copy=True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = getattr(self, "base_optimizer", None)
        if base is None:  # called by torch.optim.Optimizer.__init__ on the shared groups
            super().add_param_group(param_group)
            return
        param_group = dict(param_group)
        has_lr = "lr" in param_group
        param_group.setdefault("weight_decay", self.defaults["weight_decay"])
        param_group[ledger.INDEX_KEY] = len(base.param_groups)
        base.add_param_group(param_group)
        group = base.param_groups[-1]
        _apply_lr_multiplier(group, has_lr)
        self._record_base_lr(group)
        self._validate_group(len(base.param_groups) - 1, group)
        label = _group_label(len(base.param_groups) - 1, group)
        check_target(group.get(GROUP_KEY, self.decay_target), f"LPWD: {label}'s {GROUP_KEY}")
        self._create_anchors([group])
        self._warn_if_frozen_would_decay([group])

    def _warn_if_frozen_would_decay(self, groups: list[dict[str, Any]]) -> None:
        """pwd decays every weight of its groups before the forward, gradient or not (the rule does not ask
        for one); a frozen weight (``requires_grad=False``) in a decayed group would shrink by 1 − d_t per
        step, where torch's AdamW, wd and rwd leave it alone.  Said when the groups are built, and at the
        first ``pre_step()`` that finds one frozen since."""
        if self.mode != "pwd":
            return
        frozen = sum(p.numel() for g in groups if lookahead.as_float(g["weight_decay"]) > 0.0
                     for p in g["params"] if not p.requires_grad)
        if frozen:
            self._frozen_warned = True  # once: pre_step() looks again until it has said it
            logger.warning(
                "LPWD(mode='pwd'): %d weights with requires_grad=False are in decayed groups: pwd decays "
                "them before every forward, gradient or not. Leave frozen weights out of the optimizer "
                "(lpwd_param_groups and the Trainer do) and add_param_group() them when you unfreeze them.",
                frozen,
            )

    def __repr__(self) -> str:
        extra = "" if self.lr_coupling == "coupled" else f", lr_coupling={self.lr_coupling!r}"
        extra += ", cautious=True" if self.cautious else ""
        extra += f", decay_target={self.decay_target!r}" if self.decay_target != "zero" else ""
        extra += ", spd=True" if self.spd else ""
        return f"LPWD(mode={self.mode!r}{extra}, base={self.base_optimizer!r})"

    # ------------------------------------------------------------------ the lr schedule (pwd's fold)
    def set_lr_scheduler(self, lr_scheduler: Any, num_training_steps: int | None = None,
                         steps_taken: Callable[[], int] | None = None) -> None:
        """Tell pwd's fold where the next step's lr comes from, and when there is no next step.

        ``lr_scheduler`` sets this optimizer's lrs.  ``num_training_steps``: after the step with index
        ``num_training_steps - 1`` no decay is applied for a step that never comes.  The index is the
        scheduler's ``last_epoch``; ``ReduceLROnPlateau`` counts evaluations there, so with it the index is
        ``steps_taken()`` (optimizer steps done; without it the last step is not known: call :meth:`settle`).
        """
        lr_scheduler = lookahead.unwrapped(lr_scheduler)
        self._lr_scheduler = lr_scheduler
        self._num_training_steps = num_training_steps
        self._steps_taken = steps_taken
        if self.mode != "pwd" or lr_scheduler is None:
            return
        if not lookahead.can_look_ahead(lr_scheduler):
            logger.warning(
                "LPWD: %s cannot say the next step's lr, so pwd folds in the current lr and pre_step() "
                "corrects, with one pass over the weights, each step where the lr changed",
                type(lr_scheduler).__name__,
            )
        if num_training_steps is not None and self._step_index() is None:
            logger.warning(
                "LPWD: %s does not count optimizer steps (no last_epoch, or it counts evaluations), so pwd "
                "cannot tell the last of the %d steps and folds in a decay after it too: call settle() after "
                "the last step, or pass steps_taken= (a function giving the steps done)",
                type(lr_scheduler).__name__, num_training_steps,
            )

    def _step_index(self) -> int | None:
        return lookahead.step_index(self._lr_scheduler, self._steps_taken)

    # ------------------------------------------------------------------ the per-step decay
    def _record_base_lr(self, group: dict[str, Any]) -> None:
        """η̄ of the lr couplings: the lr the group was built with, as torch's schedulers record it."""
        if self.lr_coupling != "coupled" and group.get("lr") is not None:
            group.setdefault("initial_lr", group["lr"])

    def _rate(self, group: dict[str, Any], lr: float, lam: float) -> float:
        """r_t, the effective weight decay at lr η: the per-step decay is d = η·r."""
        if self.lr_coupling == "coupled" or lam == 0.0:
            return lam
        return effective_weight_decay(self.lr_coupling, lam, lr, lookahead.as_float(group["initial_lr"]))

    def _validate_group(self, index: int, group: dict[str, Any]) -> tuple[float, float]:
        """Return (η, r) of a group now, or raise ``ValueError`` naming the group.

        Runs for every group at every step, so the group's label is only formatted on the error path.
        """
        lam = lookahead.as_float(group["weight_decay"])
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(
                f"LPWD: {_group_label(index, group)} has weight_decay={lam}; λ must be a finite number >= 0"
            )
        if group.get("lr") is None:
            raise ValueError(
                f"LPWD: {_group_label(index, group)} has no learning rate (lr=None); LPWD needs η to scale "
                "the decay. "
                "Pass lr=... (for Adafactor: relative_step=False)"
            )
        eta = lookahead.as_float(group["lr"])
        if self.spd and lam > 1.0:
            check_spd_strength(lam, f"LPWD: {_group_label(index, group)}'s weight_decay (--weight_decay)")
        if self.lr_coupling != "coupled" and lam > 0:
            base_lr = lookahead.as_float(group.get("initial_lr", 0.0))
            if not base_lr > 0:
                raise ValueError(
                    f"LPWD: {_group_label(index, group)} has base lr (initial_lr) {base_lr}; lr_coupling="
                    f"{self.lr_coupling!r} divides by it: build the optimizer with an lr > 0"
                )
        rate = self._rate(group, eta, lam)
        _check_factor(index, group, eta, lam, eta * rate)
        return eta, rate

    def _decay_factors(self) -> list[float]:
        """1 − d_t per group, all groups validated before anything is modified."""
        return [
            1.0 - eta * rate
            for eta, rate in (self._validate_group(i, g) for i, g in enumerate(self.param_groups))
        ]

    def _next_factor(self, index: int, group: dict[str, Any]) -> float:
        """pwd: 1 − d_{t+1}, the decay to fold into this step (1.0 after the last step, or without decay)."""
        lam = lookahead.as_float(group["weight_decay"])
        next_lr = lookahead.next_lr(group, self._lr_scheduler, self._num_training_steps, self._step_index())
        if next_lr is None or lam == 0.0:
            return 1.0
        decay = next_lr * self._rate(group, next_lr, lam)
        _check_factor(index, group, next_lr, lam, decay, "the next step's lr")
        return 1.0 - decay

    def _warn_if_decay_is_lost(self) -> None:
        """Warn (once, at construction) about groups whose decay rounds away in bf16/fp16.

        θ·(1 − d) differs from θ by d·|θ|, while neighbouring bf16 (fp16) numbers are 2^-8..2^-7
        (2^-11..2^-10) times |θ| apart: below d = eps/2 of the dtype round-to-nearest loses the decay.
        """
        problems = []
        for index, group in enumerate(self.param_groups):
            eta, rate = self._validate_group(index, group)
            dtypes = {p.dtype for p in group["params"] if p.dtype in LOW_PRECISION_DTYPES}
            for dtype in sorted(dtypes, key=str):
                resolution = torch.finfo(dtype).eps / 2
                if 0.0 < eta * rate < resolution:
                    problems.append(
                        f"{_group_label(index, group)}: lr={eta:g} × weight_decay={rate:g} = "
                        f"{eta * rate:.3g} "
                        ""
                        "per step, "
                        f"below the {str(dtype).removeprefix('torch.')} resolution {resolution:.3g}"
                    )
        if problems:
            warnings.warn(
                "LPWD: stochastic_rounding=False with low precision parameters, and 1 - lr*weight_decay "
                "rounds "
                "to 1 in their dtype, so the weight decay does nothing (or is distorted) on them:\n  "
                + "\n  ".join(problems)
                + "\nTurn the compensation on with LPWD(..., stochastic_rounding=True) "
                "(LPWDTrainer: --lpwd_stochastic_rounding true), or keep fp32 master weights.",
                UserWarning,
                stacklevel=3,
            )

    def _low_precision_groups(self) -> list[bool]:
        """Per group: does it hold bf16/fp16 parameters that need stochastic rounding (not cached:
        ``model.to(torch.bfloat16)`` changes the dtype of the very same Parameter objects)."""
        if not self.stochastic_rounding:
            return [False] * len(self.param_groups)
        return [any(p.dtype in LOW_PRECISION_DTYPES for p in g["params"]) for g in self.param_groups]

    # ------------------------------------------------------------------ pwd: before the forward
    def _decay_is_up_to_date(self) -> bool:
        """pwd: do the weights of every group with parameters carry this step's 1 − d_t."""
        step_index = self._step_index()
        for group, wanted in zip(self.param_groups, self._decay_factors(), strict=True):
            if group["params"] and wanted != ledger.carried_factor(group, step_index):
                return False
        return True

    @torch.no_grad()
    def pre_step(self) -> None:
        """pwd: make the weights (1 − d_t)·θ_t before the forward pass; a no-op for wd / rwd.

        The previous ``step()`` already applied the decay it predicted, so this only checks the prediction and
        rescales, in one pass, the groups where it was wrong (or where no decay was applied yet).  Acts once
        per optimizer step: safe to call before every micro-batch.
        """
        if self.mode != "pwd" or self._pre_step_done:
            return
        if not self.__dict__.get("_frozen_warned"):  # a weight frozen since (a callback, a schedule)
            self._warn_if_frozen_would_decay(self.param_groups)
        factors = self._decay_factors()  # validate all first
        self._ensure_anchors()
        for group, wanted in zip(self.param_groups, factors, strict=True):
            if not group["params"]:
                continue
            carried = ledger.carried_factor(group, None)
            if wanted != carried:
                self._scale(list(group["params"]), wanted / carried, self._anchors_of(group))
                self.fold_corrections += 1
            ledger.record(group, wanted)
        self._pre_step_done = True

    @torch.no_grad()
    def decay_initial_weights(
        self, initial_lr_scale: float, storage: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """pwd: apply step 0's decay (1 − d_0) now, before the weights are copied anywhere.

        For engines that copy the model's weights into master weights of their own before the first forward
        (DeepSpeed).  ``initial_lr_scale`` is the schedule's λ(0) (η_0 = lr × λ(0)); ``storage`` maps a
        parameter to the tensor that holds its values (DeepSpeed ZeRO-3: ``p.ds_tensor``).
        """
        if self.mode != "pwd":
            return
        factors = []
        for index, group in enumerate(self.param_groups):
            eta, _ = self._validate_group(index, group)
            lam = lookahead.as_float(group["weight_decay"])
            first_lr = eta * initial_lr_scale
            decay = first_lr * self._rate(group, first_lr, lam)
            _check_factor(index, group, first_lr, lam, decay, "the first step's lr")
            factors.append(1.0 - decay)
        for group, factor in zip(self.param_groups, factors, strict=True):
            # Toward θ₀ the weights are θ₀ now: θ₀ + (1 − d)(θ₀ − θ₀) = θ₀, nothing to write.
            if factor != 1.0 and group["params"] and not self._anchored(group):
                tensors = [storage(p) if storage is not None else p for p in group["params"]]
                self._scale([t for t in tensors if t.numel() > 0], factor)
            ledger.record(group, factor)

    @property
    def pre_step_pending(self) -> bool:
        """True between a pwd ``pre_step()`` and the ``step()`` it belongs to."""
        return self._pre_step_done

    @torch.no_grad()
    def settle(self) -> None:
        """pwd: undo the decay already applied for a step that will not come.

        After the last ``step()`` of a loop that gave no ``num_training_steps`` (or stopped before it), the
        weights hold (1 − d̂)·θ_T; this divides that factor out, leaving θ_T, unfolded pwd's final weights.  A
        later ``pre_step()`` decays again as needed.
        """
        for group in self.param_groups:
            applied = ledger.applied(group)
            if applied is not None and applied != 1.0 and group["params"]:
                self._scale(list(group["params"]), 1.0 / applied, self._anchors_of(group))
            ledger.clear(group)
        self._pre_step_done = False

    def forget_applied_decay(self) -> None:
        """pwd: record that the weights carry no decay for a coming step, without touching them.

        For weights just replaced from outside (a checkpoint loaded as the final model): they are what was
        saved, and nothing is pending for them.
        """
        for group in self.param_groups:
            ledger.clear(group)
        self._pre_step_done = False

    @property
    def pending_decay(self) -> dict[Any, float]:
        """pwd: the factor each group's weights carry for a coming step, where it is not 1 (keyed by
        depth)."""
        pending = {}
        for index, group in enumerate(self.param_groups):
            applied = ledger.applied(group)
            if applied not in (None, 1.0):
                pending[group.get("depth", index)] = applied
        return pending

    # ------------------------------------------------------------------ the step
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """Take one optimizer step with the configured timing.

        A ``closure`` is evaluated first (with gradients enabled, as torch's optimizers do), so the gradient
        is always taken at the weights as they are before any decay of this step.
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
            self._ensure_anchors()
            plans = self._plan_pwd() if self.mode == "pwd" else self._plan_wd_rwd()
            self._execute(plans)
        finally:
            base.param_groups = base_groups
            self._pre_step_done = False
        return loss

    def _plan_wd_rwd(self) -> list[_GroupPlan | None]:
        """wd: θ − η·u − d·θ; rwd: (1 − d)(θ − η·u).  One AdamW call where it can; else scale passes."""
        low = self._low_precision_groups()
        plans: list[_GroupPlan | None] = []
        for index, group in enumerate(self.param_groups):
            eta, rate = self._validate_group(index, group)
            factor = 1.0 - eta * rate
            anchored = self._anchored(group)
            if self.spd:  # the base without decay; SPD measures before its step and decays after it
                plans.append(_GroupPlan({"weight_decay": 0.0}, spd=rate, anchored=anchored))
            elif self.cautious:
                plans.append(_GroupPlan({"weight_decay": 0.0}, cautious=eta * rate, anchored=anchored))
            elif anchored:  # AdamW's decay cannot take θ₀: λ = 0 and one lerp pass toward θ₀
                where = {"before": factor} if self.mode == "wd" else {"after": factor}
                plans.append(_GroupPlan({"weight_decay": 0.0}, anchored=True, **where))
            elif self.folds_decay_into_base and not low[index]:
                if self.mode == "rwd":
                    override = (
                        {}
                        if factor == 1.0
                        else dict(zip(("lr", "weight_decay"), rwd_on_adamw(eta, rate), strict=True))
                    )
                else:
                    override = (
                        {} if rate == lookahead.as_float(group["weight_decay"]) else {"weight_decay": rate}
                    )
                plans.append(_GroupPlan(override))
            elif self.mode == "wd":  # u does not depend on θ: (1 − d)θ − ηu = θ − ηu − dθ
                plans.append(_GroupPlan({"weight_decay": 0.0}, before=factor))
            else:
                plans.append(_GroupPlan({"weight_decay": 0.0}, after=factor))
        return plans

    def _plan_pwd(self) -> list[_GroupPlan | None]:
        """pwd: this step's decay where it is missing, then one base step with the next decay folded in."""
        if not self._pre_step_done and self.require_pre_step and not self._decay_is_up_to_date():
            raise RuntimeError(
                "LPWD(mode='pwd'): step() was called without pre_step() on a step whose decay was not "
                "applied "
                ""
                ""
                "yet (the first step, or an lr other than the one the previous step folded in), so the "
                "gradient was taken at undecayed weights. Call optimizer.pre_step() once per optimizer step, "
                "before the forward pass (LPWDTrainer does this for you), or use mode='rwd' if the loop "
                "cannot be changed."
            )
        low = self._low_precision_groups()
        step_index = self._step_index()
        # Read only first: validate every group (d_t and the predicted d_{t+1}) before anything changes.
        checked = []
        for index, group in enumerate(self.param_groups):
            eta, rate = self._validate_group(index, group)
            checked.append(
                None if not group["params"] else (eta, 1.0 - eta * rate, self._next_factor(index, group))
            )
        plans: list[_GroupPlan | None] = []
        for index, (group, values) in enumerate(zip(self.param_groups, checked, strict=True)):
            if values is None:  # ZeRO-3: a group not stepped in this call keeps its bookkeeping
                plans.append(None)
                continue
            eta, wanted, factor = values
            # The decay must be on the weights the update starts from: pre_step() put it there, or (no
            # pre_step(): DeepSpeed, or a missed prediction) it is applied now, in one pass.
            carried = ledger.begin_step(group, step_index)
            anchored = self._anchored(group)
            if carried != wanted:
                with torch.no_grad():
                    self._scale(list(group["params"]), wanted / carried, self._anchors_of(group))
                self.fold_corrections += 1
            if factor == 1.0:
                plans.append(_GroupPlan({"weight_decay": 0.0}, record=factor, anchored=anchored))
            elif anchored:  # θ'_{t+1} = θ₀ + f·(θ'_t − η_t·u − θ₀): λ = 0, then one lerp pass of them all
                plans.append(
                    _GroupPlan(
                        {"weight_decay": 0.0}, after=factor, after_scope="all", record=factor, anchored=True
                    )
                )
            elif self.folds_decay_into_base and not low[index] and eta > 0.0:
                # One AdamW update: (1 − η'λ')θ − η'u = f·(θ − η_t·u); parameters it skips are scaled alone.
                lr, lam = pwd_fold_on_adamw(eta, factor)
                plans.append(
                    _GroupPlan(
                        {"lr": lr, "weight_decay": lam}, after=factor, after_scope="idle", record=factor
                    )
                )
            else:  # η_t = 0 (the fold would divide by it), another base, or stochastic rounding
                plans.append(
                    _GroupPlan({"weight_decay": 0.0}, after=factor, after_scope="all", record=factor)
                )
        return plans

    def _scale(
        self,
        params: list[torch.Tensor],
        factor: float,
        anchors: dict[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """θ ← factor·θ, or toward θ₀ (``anchors``) θ₀ + factor·(θ − θ₀); bf16/fp16 weights stochastically
        rounded with the optimizer's own noise."""
        if anchors is not None:
            toward_(
                params,
                [anchors[p] for p in params],
                factor,
                stochastic=self.stochastic_rounding,
                keys=self._noise,
            )
            return
        scale_(
            params,
            factor,
            stochastic=self.stochastic_rounding,
            keys=self._noise,
            eager=self.rounding_kernel == "eager",
        )

    def _check_precision(self) -> None:
        """Once, at the first step: say what round-to-nearest will cost, or what the rounded step cannot
        take."""
        self._precision_checked = True
        low = [p for g in self.param_groups for p in g["params"] if p.dtype in LOW_PRECISION_DTYPES]
        if not low:
            return
        if not self.stochastic_rounding:
            adaptive = type(self.base_optimizer) is not torch.optim.SGD
            lost = [
                fraction_below_half_ulp(
                    g["params"], lookahead.as_float(g.get("initial_lr", g["lr"])), adaptive
                )
                for g in self.param_groups
            ]
            weights = [
                sum(p.numel() for p in g["params"] if p.dtype in LOW_PRECISION_DTYPES)
                for g in self.param_groups
            ]
            share = sum(f * n for f, n in zip(lost, weights, strict=True)) / max(1, sum(weights))
            if share > 0.0:
                warnings.warn(
                    "LPWD: stochastic_rounding=False on bf16/fp16 weights: at the peak lr, the first update "
                    "of "
                    f"{share:.1%} of their coordinates is below half their spacing and rounds away to "
                    "nearest "
                    ""
                    ""
                    "(the stock optimizer loses it too). LPWD(..., stochastic_rounding=True) "
                    "(--lpwd_stochastic_rounding true) writes the whole step with stochastic rounding.",
                    UserWarning,
                    stacklevel=4,
                )
            return
        if self.spd:
            logger.warning(
                "LPWD: spd=True: the %d bf16/fp16 weights take the base's own step (update rounded to "
                "nearest) and the SPD decay stochastically rounded alone: the whole-step rounding cannot "
                "see ‖θ̃ − θ₀‖ before it writes θ̃",
                sum(p.numel() for p in low),
            )
            return
        count, numel, total, why = unrounded_share(self.base_optimizer, self.param_groups)
        if count:
            logger.warning(
                "LPWD: %d bf16/fp16 parameters (%d of %d such weights, %.1f%%: %s) take the base's own step: "
                "their update is rounded to nearest and only the decay stochastically (the whole step is "
                "rounded on %s with plain tensors)",
                count,
                numel,
                total,
                100.0 * numel / max(1, total),
                why,
                "torch.optim.AdamW / Adam / SGD",
            )

    def _rounded_factors(self, plans: list[_GroupPlan | None]) -> list[tuple[float, float, float] | None]:
        """(pre, post, cautious) of θ' = post·(pre·θ − c·mask⊙θ − η·u) per group, ``None`` where not
        rounded."""
        factors: list[tuple[float, float, float] | None] = []
        for plan in plans:
            if plan is None or "lr" in plan.override or plan.spd:  # fp32 folds only; SPD needs ‖θ̃ − θ₀‖
                factors.append(None)
                continue
            post = plan.after if plan.after_scope in ("stepped", "all") else 1.0
            factors.append((plan.before, post, plan.cautious))
        return factors

    # ------------------------------------------------------------------ SPD around the base step
    def _spd_measure(self, plans: list[_GroupPlan | None], stepped: list[list[torch.Tensor]]) -> list[Any]:
        """Before the base step, per SPD group: (λ, params, θ₀ or None each, c_t, ‖θ − θ₀‖)."""
        measured = []
        for plan, params in zip(plans, stepped, strict=True):
            if plan is None or plan.spd <= 0.0 or not params:
                continue
            anchors = [self._anchors[p] if plan.anchored else None for p in params]
            grads = [p.grad for p in params]
            measured.append((plan.spd, params, anchors, *spd_measure(params, anchors, grads)))
        return measured

    def _spd_decay(self, measured: list[Any]) -> None:
        """After the base step: θ ← θ̃ − d·(θ̃ − θ₀), d = λ·r_t·1[c_t < 0] per tensor (:mod:`.spd`).

        fp32 weights (and bf16/fp16 rounded to nearest): the selected tensors' norm and lerp, compiled
        (:func:`.spd.spd_decay_`).  bf16/fp16 weights with stochastic rounding: the same lerp in fp32,
        written with one stochastic rounding (reads d).
        """
        for strength, *columns in measured:
            members = list(zip(*columns, strict=True))  # (θ̃, θ₀ or None, c_t, ‖θ − θ₀‖) per tensor
            rounded = [self.stochastic_rounding and m[0].dtype in LOW_PRECISION_DTYPES for m in members]
            exact = [m for m, r in zip(members, rounded, strict=True) if not r]
            if exact:
                spd_decay_(*map(list, zip(*exact, strict=True)), strength)
            stochastic = [m for m, r in zip(members, rounded, strict=True) if r]
            if not stochastic:
                continue
            params, anchors, conditions, norms = map(list, zip(*stochastic, strict=True))
            decays = spd_decays(params, anchors, conditions, norms, strength)
            for p, anchor, decay in zip(params, anchors, decays, strict=True):
                weight = float(decay)
                if weight > 0.0:
                    self._scale([p], 1.0 - weight, None if anchor is None else {p: anchor})

    @torch.no_grad()
    def _execute(self, plans: list[_GroupPlan | None]) -> None:
        """bf16/fp16 weights: the whole step rounded once; the rest: the base step between scale passes."""
        if not self._precision_checked:
            self._check_precision()
        held = self._anchors
        groups = self.param_groups
        done: list[set[int]] = [set() for _ in groups]
        anchored = [plan is not None and plan.anchored for plan in plans]
        # fp32 toward θ₀ or cautious on a GPU: one pass, not the base's step and a lerp or a mask pass
        exact = [
            plan is not None
            and (plan.anchored or (self.cautious and self.cautious_kernel == "compiled"))
            for plan in plans
        ]
        rounded = self.stochastic_rounding and any(
            p.dtype in LOW_PRECISION_DTYPES for g in groups for p in g["params"]
        )
        if rounded or any(
            one_pass_supported(p) for g, e in zip(groups, exact, strict=True) if e for p in g["params"]
        ):
            stepped = rounded_step(
                self.base_optimizer,
                groups,
                self._rounded_factors(plans),
                self._noise,
                eager=self.rounding_kernel == "eager",
                anchors=[held if a else None for a in anchored],
                rounded=self.stochastic_rounding,
                one_pass=exact,
            )
            done = [{id(p) for p in params} for params in stepped]
        if not any(done):
            self._execute_base(plans, held=held)
            return
        kept = [g["params"] for g in groups]
        try:  # the base steps only what the rounded step did not
            for group, ids in zip(groups, done, strict=True):
                if ids:
                    group["params"] = [p for p in group["params"] if id(p) not in ids]
            self._execute_base(plans, record=False, held=held)
        finally:
            for group, params in zip(groups, kept, strict=True):
                group["params"] = params
        for group, plan in zip(groups, plans, strict=True):
            if plan is not None and plan.record is not None:
                ledger.record(group, plan.record)

    def _execute_base(
        self,
        plans: list[_GroupPlan | None],
        record: bool = True,
        held: dict[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Scale passes before, one base step with the plans' hyperparameters, scale passes after."""
        groups = self.param_groups
        compiled = self.cautious and self.cautious_kernel == "compiled"
        if compiled and all(plan is not None and not plan.anchored for plan in plans):
            if cautious_adamw_step(self.base_optimizer, [plan.cautious for plan in plans]):  # type: ignore[union-attr]
                if record:
                    for group, plan in zip(groups, plans, strict=True):
                        if plan is not None and plan.record is not None:
                            ledger.record(group, plan.record)
                return
        stepped = [[p for p in g["params"] if p.grad is not None] for g in groups]
        for group, plan, params in zip(groups, plans, stepped, strict=True):
            anchors = held if plan is not None and plan.anchored else None
            if plan is not None and plan.before != 1.0 and params:
                self._scale(params, plan.before, anchors)
            if plan is not None and plan.cautious > 0.0:
                for p in params:  # one temporary at a time: no copy of the model
                    apply_cautious_decay_(
                        p,
                        coming_update_direction(self.base_optimizer, group, p),
                        plan.cautious,
                        None if anchors is None else anchors[p],
                    )
        measured = self._spd_measure(plans, stepped)
        saved = [
            {key: g[key] for key in plan.override} if plan is not None else {}
            for g, plan in zip(groups, plans, strict=True)
        ]
        try:
            for group, plan in zip(groups, plans, strict=True):
                if plan is not None:
                    group.update(plan.override)
            step_without_global_hooks(self.base_optimizer)
        finally:
            for group, values in zip(groups, saved, strict=True):
                group.update(values)
        self._spd_decay(measured)
        for group, plan, params in zip(groups, plans, stepped, strict=True):
            if plan is None:
                continue
            if plan.after != 1.0:
                if plan.after_scope == "stepped":
                    targets = params
                elif plan.after_scope == "all":
                    targets = list(group["params"])
                else:  # "idle": the fused AdamW call skipped them
                    targets = [p for p in group["params"] if p.grad is None]
                if targets:
                    self._scale(targets, plan.after, held if plan.anchored else None)
            if record and plan.record is not None:
                ledger.record(group, plan.record)


def _check_factor(
    index: int, group: dict[str, Any], eta: float, lam: float, decay: float, what: str = "lr"
) -> None:
    """η must be finite and >= 0, and the per-step decay d < 1 (else 1 − d <= 0 flips the weights' signs)."""
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(
            f"LPWD: {_group_label(index, group)} has {what}={eta}; η must be a finite number >= 0"
        )
    check_decay_factor(
        decay,
        f"LPWD: {_group_label(index, group)} has {what}={eta} and weight_decay={lam}",
        "lower weight_decay or lr",
    )
