"""Trainer glue: LPWD in any ``transformers.Trainer`` with one flag.

``LPWDMixin`` goes in front of any Trainer subclass (``Trainer``, ``Seq2SeqTrainer``, TRL's
``SFTTrainer``)::

    class MySFTTrainer(LPWDMixin, SFTTrainer): ...

It changes these things and nothing else, through the Trainer's seams (no callback: ``wd`` mode is
the stock Trainer, callbacks included):

* ``create_optimizer`` builds the param groups (λ and lr per depth, depths parsed once) and wraps
  *the optimizer the Trainer itself would have chosen* (``get_optimizer_cls_and_kwargs``:
  ``--optim adamw_torch_fused``, ``sgd``, ``adafactor``, ...) in :class:`hf_lpwd.LPWD`;
* ``create_scheduler`` tells LPWD the schedule and ``max_steps``, so pwd folds the next step's decay
  into this step's AdamW call (see :mod:`hf_lpwd.optim`): between steps the model holds the weights
  the next forward will see, already decayed, and so do evaluation and checkpoints;
* ``training_step`` calls ``LPWD.pre_step()`` before the forward pass: once per optimizer step,
  free whenever the fold predicted the lr (always, with the Trainer's ``LambdaLR`` schedules), one
  pass otherwise.  Under DeepSpeed the decay acts on DeepSpeed's fp32 master weights inside the step
  instead (a pass on the model's weights would be overwritten);
* ``train()`` ends pwd exactly: a run stopped before ``max_steps`` (early stopping) divides out the
  decay folded in for the step that never came, and ``load_best_model_at_end`` leaves the best
  checkpoint's weights as saved (``_load_best_model``, the one private method overridden);
* ``save_model`` (every checkpoint and the final model) writes ``lpwd_config.json`` and an LPWD
  section in the folder's model card; the logs get a weight norm per depth.

Resuming: a checkpoint holds the decayed weights and, in the optimizer's param groups, the factor
they carry, so a resumed run is bitwise the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from .config import LPWD_CONFIG_NAME, LPWDConfig
from .groups import format_layer_table, group_shrink, layer_table, shrink_warning
from .integrations import deepspeed as deepspeed_glue
from .layers import layer_depths_with_count
from .optim import LPWD
from .optim.functional import weight_decay_for_timescale
from .refusals import check_deepspeed, check_training_arguments, refuse_unwrappable_optim
from .schedule import first_step_scale, scheduler_scales
from .settings import (
    DEFAULTS,
    LR_COUPLINGS,
    TIED_DEPTHS,
    WEIGHT_DECAY_MODES,
    validate_cautious,
    validate_choice,
    validate_decay_timescale,
    validate_layer_lr_decay,
    validate_layer_pattern,
    validate_weight_decay,
)

# A child of transformers' library logger: ``--log_level`` / ``transformers.logging.set_verbosity_*``
# decide what shows, on the Trainer's own handler, as for the Trainer's own messages.
logger = hf_logging.get_logger("transformers.hf_lpwd")


@dataclass
class LPWDTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus LPWD's settings; λ is the usual ``--weight_decay``.

    With ``--lpwd_config PATH_OR_REPO_ID`` the settings start from a saved ``lpwd_config.json``;
    any LPWD flag (or ``--weight_decay`` / ``--optim``) given with a value other than its default
    overrides the file.
    """

    weight_decay_mode: str = field(
        default=DEFAULTS["mode"],
        metadata={
            "help": "When the decay is applied. wd: AdamW's decoupled decay; rwd: real-time decay (1-lr*wd)(θ-lr*u); "
            "pwd: pre-weight decay before the forward pass; lpwd: pwd with λ growing with depth, λ*(d+1)/(N+2) "
            "(= pwd with --lpwd_layerwise true).",
            "choices": list(WEIGHT_DECAY_MODES),
        },
    )
    lpwd_layerwise: bool | None = field(
        default=DEFAULTS["layerwise"],
        metadata={"help": "The λ profile, independent of the timing: true = layer-wise λ*(d+1)/(N+2), false = one "
                  "λ for every decayed parameter. Unset: true for lpwd, false for wd/rwd/pwd."},
    )
    lpwd_layer_lr_decay: float = field(
        default=DEFAULTS["layer_lr_decay"],
        metadata={"help": "Layer-wise learning-rate decay γ in (0, 1]: the lr at depth d is lr*γ^(N+1-d) "
                  "(head: full lr). 1.0 = off. Any timing, any base."},
    )
    lpwd_tied_depth: str = field(
        default=DEFAULTS["tied_depth"],
        metadata={"help": "Depth of a matrix tied between the input embedding and the output head: input "
                  "(depth 0) or output (depth N+1, the head's λ and lr).", "choices": list(TIED_DEPTHS)},
    )
    lpwd_layer_pattern: str | None = field(
        default=DEFAULTS["layer_pattern"],
        metadata={"help": r"Regex with one capture group for the block index (e.g. '\.layers\.(\d+)\.'), "
                  "overriding the automatic block detection."},
    )
    lpwd_decay_embeddings: bool = field(
        default=DEFAULTS["decay_embeddings"], metadata={"help": "lpwd: decay depth 0 (embeddings, stem) at λ/(N+2); False gives it 0."}
    )
    lpwd_stochastic_rounding: bool = field(
        default=DEFAULTS["stochastic_rounding"], metadata={"help": "Keep the decay effective on bf16/fp16 weights (stochastic rounding)."}
    )
    lpwd_log_layer_norms: bool = field(
        default=True, metadata={"help": "Log the weight norm of each depth with the training logs."}
    )
    lpwd_lr_coupling: str = field(
        default=DEFAULTS["lr_coupling"],
        metadata={"help": "How the per-step decay d follows the lr: coupled d = lr_t*λ (AdamW); independent "
                  "d = (lr_t/lr)*λ, not multiplied by the peak lr; corrected d = (lr_t²/lr)*λ (AdamC).",
                  "choices": list(LR_COUPLINGS)},
    )
    lpwd_cautious: bool = field(
        default=DEFAULTS["cautious"],
        metadata={"help": "Cautious weight decay: decay only the coordinates where the update and the weight have "
                  "the same sign (wd timing; adamw/sgd bases). On AdamW it runs as one torch.compile'd pass per "
                  "tensor, compiled at the first step."},
    )
    lpwd_decay_timescale: float | None = field(
        default=DEFAULTS["decay_timescale"],
        metadata={"help": "Set λ from the weights' EMA timescale τ in epochs: λ = 1/(lr*τ*steps per epoch) "
                  "(independent: 1/(τ*steps per epoch)). Like --weight_decay it sets λ, the head's rate under the "
                  "layer-wise profile; give one or the other."},
    )
    lpwd_config: str | None = field(
        default=None,
        metadata={"help": "Start from a saved lpwd_config.json (a folder, a file or a Hub repo id). A flag given "
                  "with a value other than its default overrides the file; one left at (or given with) its "
                  "default value takes the file's."},
    )

    def __post_init__(self) -> None:
        if self.lpwd_config:
            self._merge_saved_config(LPWDConfig.from_pretrained(self.lpwd_config))
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"--weight_decay_mode={self.weight_decay_mode!r} is not one of {list(WEIGHT_DECAY_MODES)}"
            )
        validate_weight_decay(self.weight_decay, "--weight_decay")
        validate_layer_pattern(self.lpwd_layer_pattern, "--lpwd_layer_pattern")
        validate_layer_lr_decay(self.lpwd_layer_lr_decay, "--lpwd_layer_lr_decay")
        if self.weight_decay_mode == "lpwd" and self.lpwd_layerwise is False:
            raise ValueError(
                "--weight_decay_mode lpwd is pwd with the layer-wise profile; with --lpwd_layerwise false use "
                "--weight_decay_mode pwd"
            )
        validate_choice(self.lpwd_tied_depth, TIED_DEPTHS, "--lpwd_tied_depth")
        validate_choice(self.lpwd_lr_coupling, LR_COUPLINGS, "--lpwd_lr_coupling")
        timing = "pwd" if self.weight_decay_mode == "lpwd" else self.weight_decay_mode
        validate_cautious(self.lpwd_cautious, timing, "--lpwd_cautious")
        validate_decay_timescale(self.lpwd_decay_timescale, "--lpwd_decay_timescale")
        default_lambda = next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == "weight_decay")
        if self.lpwd_decay_timescale is not None and self.weight_decay != default_lambda:
            raise ValueError(
                f"--lpwd_decay_timescale={self.lpwd_decay_timescale:g} and --weight_decay={self.weight_decay:g} both set "
                "λ: give one of them (the timescale chooses λ = 1/(lr·τ·steps per epoch))"
            )
        super().__post_init__()

    @staticmethod
    def saved_config_values(saved: LPWDConfig) -> dict[str, Any]:
        """The argument values a saved config stands for: ``{field name: value}``.

        ``mode`` → ``weight_decay_mode``, ``base_optimizer`` → ``optim``, and so on.  ``layerwise`` is
        carried only where it was a choice (it differs from its mode's default): a config saved as
        ``lpwd`` then run with ``--weight_decay_mode pwd`` is plain pwd, as the mode says, and one saved
        as ``wd`` with ``--lpwd_layerwise true`` stays layer-wise whatever mode is given.
        """
        values: dict[str, Any] = {
            "weight_decay_mode": saved.mode,
            "weight_decay": saved.weight_decay,
            "lpwd_layerwise": saved.layerwise if saved.layerwise != (saved.mode == "lpwd") else None,
            "lpwd_layer_lr_decay": saved.layer_lr_decay,
            "lpwd_tied_depth": saved.tied_depth,
            "lpwd_layer_pattern": saved.layer_pattern,
            "lpwd_decay_embeddings": saved.decay_embeddings,
            "lpwd_stochastic_rounding": saved.stochastic_rounding,
            "lpwd_lr_coupling": saved.lr_coupling,
            "lpwd_cautious": saved.cautious,
            "lpwd_decay_timescale": saved.decay_timescale,
        }
        if saved.decay_timescale is not None:
            # λ comes from τ in the new run (its steps per epoch); the saved λ was the old run's.
            values.pop("weight_decay")
        if saved.base_optimizer:
            values["optim"] = saved.base_optimizer
        return values

    @classmethod
    def saved_config_overrides(cls, saved: LPWDConfig, explicit: Collection[str]) -> dict[str, Any]:
        """What ``--lpwd_config`` sets: every value of :meth:`saved_config_values` whose argument is not in
        ``explicit`` (the arguments the user set).  The one rule of merging a saved config, for this class
        (explicit = differs from its default) and for scripts that know which flags were given (the recipes)."""
        return {name: value for name, value in cls.saved_config_values(saved).items() if name not in explicit}

    def _merge_saved_config(self, saved: LPWDConfig) -> None:
        """Fields still at their default take the saved value."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        explicit = {name for name in defaults
                    if getattr(self, name) != defaults[name] and str(getattr(self, name)) != str(defaults[name])}
        for name, value in self.saved_config_overrides(saved, explicit).items():
            setattr(self, name, value)

    def to_lpwd_config(self) -> LPWDConfig:
        return lpwd_config_from_args(self)


def lpwd_config_from_args(args: TrainingArguments) -> LPWDConfig:
    """The LPWD settings of any ``TrainingArguments`` (plain ones get LPWD's defaults)."""
    return LPWDConfig(
        mode=getattr(args, "weight_decay_mode", DEFAULTS["mode"]),
        weight_decay=float(args.weight_decay),
        layerwise=getattr(args, "lpwd_layerwise", DEFAULTS["layerwise"]),
        layer_lr_decay=float(getattr(args, "lpwd_layer_lr_decay", DEFAULTS["layer_lr_decay"])),
        tied_depth=getattr(args, "lpwd_tied_depth", DEFAULTS["tied_depth"]),
        layer_pattern=getattr(args, "lpwd_layer_pattern", DEFAULTS["layer_pattern"]),
        decay_embeddings=getattr(args, "lpwd_decay_embeddings", DEFAULTS["decay_embeddings"]),
        stochastic_rounding=getattr(args, "lpwd_stochastic_rounding", DEFAULTS["stochastic_rounding"]),
        lr_coupling=getattr(args, "lpwd_lr_coupling", DEFAULTS["lr_coupling"]),
        cautious=getattr(args, "lpwd_cautious", DEFAULTS["cautious"]),
        decay_timescale=getattr(args, "lpwd_decay_timescale", DEFAULTS["decay_timescale"]),
        base_optimizer=str(getattr(args.optim, "value", args.optim)),
    )


def _json_safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The base optimizer's kwargs as JSON values (tuples become lists; anything else its repr)."""
    return json.loads(json.dumps(kwargs, default=repr))


def _keep_embeddings_in_32_bit(base_cls: Any, base_kwargs: dict[str, Any], model: nn.Module) -> None:
    """bitsandbytes 8-bit optimizers: 32-bit state for every ``nn.Embedding``, as the stock ``create_optimizer``.

    The stock Trainer registers the override with bitsandbytes' process-global manager
    (``GlobalOptimManager.register_module_override``); it takes effect at the optimizer's first step.
    Without it the embeddings get uint8 Adam state and ``wd`` is no longer the stock Trainer.
    """
    if "bitsandbytes" not in str(base_cls) or base_kwargs.get("optim_bits", None) != 8:
        return
    bitsandbytes = sys.modules[base_cls.__module__.split(".")[0]]  # imported already: the base is its class
    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
            logger.debug("bitsandbytes: will optimize %s in fp32", module)


def _squared_norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Σ‖t‖² over ``tensors`` as a float32 0-d tensor on ``device`` (one fused norm, no host sync)."""
    tensors = [t for t in tensors if t.numel() > 0]
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    return torch.stack(norms).square().sum()


def _unwrap_lpwd(optimizer: Any) -> LPWD | None:
    """LPWD inside Accelerate's / DeepSpeed's optimizer wrappers (each keeps the inner one as ``.optimizer``)."""
    while optimizer is not None and not isinstance(optimizer, LPWD):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


class LPWDMixin:
    """Put in front of any ``transformers.Trainer`` subclass to train with LPWD.

    Settings come from ``lpwd_config`` when given, else from the Trainer's arguments
    (:class:`LPWDTrainingArguments`, or LPWD's defaults on plain ``TrainingArguments``, e.g. TRL's
    ``SFTConfig``, with λ = ``args.weight_decay``).  With ``lpwd_config``, λ is the config's: a
    different ``args.weight_decay`` is reported in a warning, and the base optimizer is always the
    one ``args.optim`` builds (recorded in the config).
    """

    def __init__(self, *args: Any, lpwd_config: LPWDConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if lpwd_config is None:
            self.lpwd_config = lpwd_config_from_args(self.args)
        else:
            self.lpwd_config = dataclasses.replace(lpwd_config)
            self._reconcile_config_with_args()
        self._lpwd_depth_params: dict[int, list[torch.Tensor]] = {}
        self._lpwd_depths: tuple[int, tuple[dict[str, int], int]] | None = None  # (id(model), depths)
        check_training_arguments(self.args)
        if self.lpwd_config.needs_depths and self.model is not None:
            # Fail before training, not at the first step, when the blocks cannot be found.
            self._depths_of(self.model)

    def _reconcile_config_with_args(self) -> None:
        cfg = self.lpwd_config
        optim = str(getattr(self.args.optim, "value", self.args.optim))
        if float(self.args.weight_decay) != cfg.weight_decay:
            logger.warning(
                "LPWDMixin: lpwd_config.weight_decay=%g is the λ used; args.weight_decay=%g is ignored "
                "(pass the λ you want in LPWDConfig, or build the config from the arguments)",
                cfg.weight_decay, float(self.args.weight_decay),
            )
        if cfg.base_optimizer not in (None, optim):
            logger.warning(
                "LPWDMixin: lpwd_config.base_optimizer=%s, but args.optim=%s builds the base optimizer; "
                "recording %s", cfg.base_optimizer, optim, optim,
            )
        cfg.base_optimizer = optim

    @property
    def lpwd_optimizer(self) -> LPWD | None:
        """The :class:`hf_lpwd.LPWD` inside the Trainer's (possibly wrapped) optimizer, once built."""
        return _unwrap_lpwd(self.optimizer)

    def _depths_of(self, model: nn.Module) -> tuple[dict[str, int], int]:
        """Depths of ``model``'s parameters, parsed once per model object."""
        if self._lpwd_depths is None or self._lpwd_depths[0] != id(model):
            self._lpwd_depths = (id(model), layer_depths_with_count(model, self.lpwd_config.layer_pattern))
        return self._lpwd_depths[1]

    # ------------------------------------------------------------------ optimizer and schedule
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        cfg = self.lpwd_config
        if self.optimizer_cls_and_kwargs is not None:
            base_cls, base_kwargs = self.optimizer_cls_and_kwargs
        else:
            base_cls, base_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        base_kwargs = dict(base_kwargs)
        source = "optimizer_cls_and_kwargs" if self.optimizer_cls_and_kwargs is not None else None
        refuse_unwrappable_optim(self.args, (base_cls, base_kwargs), source)
        base_kwargs.pop("weight_decay", None)  # λ is LPWD's, per group
        if cfg.decay_timescale is not None:
            cfg.weight_decay = self._weight_decay_from_timescale()
        depths = self._depths_of(opt_model) if cfg.needs_depths else self._optional_depths(opt_model)
        groups = cfg.param_groups(opt_model, decay_names=self.get_decay_parameter_names(opt_model),
                                  depths=depths if cfg.needs_depths else None)
        self.optimizer = LPWD(
            groups,
            base=base_cls,
            mode=cfg.timing,
            weight_decay=cfg.weight_decay,
            lr_coupling=cfg.lr_coupling,
            cautious=cfg.cautious,
            stochastic_rounding=cfg.stochastic_rounding,
            **base_kwargs,
        )
        _keep_embeddings_in_32_bit(base_cls, base_kwargs, opt_model)
        if getattr(self, "is_deepspeed_enabled", False):
            # The model's weights become copies of DeepSpeed's fp32 masters: no pre-forward pass. Step 0's
            # decay goes on the weights now, before DeepSpeed copies them into its masters.
            self.optimizer.require_pre_step = False
            self.optimizer.decay_initial_weights(first_step_scale(self.args), deepspeed_glue.storage)
        self._record_layers(opt_model, groups, base_kwargs, depths)
        return self.optimizer

    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any) -> tuple:
        """The Trainer's own count of steps; LPWD keeps its optimizer steps per epoch for the timescale."""
        values = super().set_initial_training_values(args, dataloader)
        self._lpwd_steps_per_epoch = int(values[1])
        return values

    def _weight_decay_from_timescale(self) -> float:
        """λ = 1/(η̄·τ·S_e) (independent: 1/(τ·S_e)), S_e the optimizer steps per epoch, η̄ = --learning_rate."""
        steps_per_epoch = getattr(self, "_lpwd_steps_per_epoch", None)
        if steps_per_epoch is None:  # create_optimizer called outside train(): count as train() would
            steps_per_epoch = int(self.set_initial_training_values(self.args, self.get_train_dataloader())[1])
        cfg = self.lpwd_config
        lam = weight_decay_for_timescale(cfg.lr_coupling, cfg.decay_timescale * steps_per_epoch,
                                         float(self.args.learning_rate))
        if self.args.should_log:
            logger.info("LPWD: --lpwd_decay_timescale %g epochs × %d steps per epoch at lr %g (%s) gives λ = %.6g",
                        cfg.decay_timescale, steps_per_epoch, self.args.learning_rate, cfg.lr_coupling, lam)
        return lam

    def _optional_depths(self, model: nn.Module) -> tuple[dict[str, int], int] | None:
        """Depths for the per-depth norm log of a uniform, LLRD-free run (which does not need them)."""
        try:
            return self._depths_of(model)
        except ValueError:
            return None  # a model without a block stack: no per-depth view

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The Trainer's scheduler, handed to LPWD so that pwd can fold the next step's decay."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        lpwd = _unwrap_lpwd(optimizer if optimizer is not None else self.optimizer)
        if lpwd is not None:
            lpwd.set_lr_scheduler(scheduler, num_training_steps)
            self._log_layer_table(lpwd, scheduler, num_training_steps)
        return scheduler

    def _log_layer_table(self, lpwd: LPWD, scheduler: Any, num_training_steps: int) -> None:
        """The start-of-training layer table, with the run's shrink S_d = Σ_t d_t from the schedule itself."""
        cfg = self.lpwd_config
        groups = lpwd.param_groups
        scales = scheduler_scales(scheduler, num_training_steps)
        shrink: list[float | None] | None = None
        if scales is not None:
            shrink = [group_shrink(float(g["weight_decay"]), float(base_lr), s, cfg.lr_coupling)
                      for g, base_lr, s in zip(groups, scheduler.base_lrs, scales, strict=True)]
        rows = layer_table(groups, shrink if shrink is not None else [None] * len(groups))
        if shrink is not None:
            decayed = [r for r in rows if r["weight_decay"] > 0]
            cfg.shrink = round(max((float(r["shrink"]) for r in decayed), default=0.0), 6)
            if cfg.needs_depths:
                cfg.depth_shrink = {str(r["depth"]): round(float(r["shrink"]), 6) for r in decayed}
        if not self.args.should_log:
            return
        logger.info(
            "LPWD mode=%s (timing %s, %s λ, %s%s) λ=%g%s layer_lr_decay=%g base=%s, %d steps\n%s",
            cfg.mode, cfg.timing, "layer-wise" if cfg.layerwise else "uniform", cfg.lr_coupling,
            ", cautious" if cfg.cautious else "", cfg.weight_decay,
            f" (from τ = {cfg.decay_timescale:g} epochs)" if cfg.decay_timescale is not None else "",
            cfg.layer_lr_decay, cfg.base_optimizer, num_training_steps, format_layer_table(rows),
        )
        warning = shrink_warning(rows)
        if warning:
            logger.warning(warning)

    def _record_layers(
        self,
        model: nn.Module,
        groups: list[dict[str, Any]],
        base_kwargs: dict[str, Any],
        depths: tuple[dict[str, int], int] | None,
    ) -> None:
        """Fill the config's layer summary, log the table once, and remember params per depth for logging."""
        cfg = self.lpwd_config
        cfg.base_optimizer_kwargs = _json_safe(base_kwargs)
        cfg.base_optimizer = str(getattr(self.args.optim, "value", self.args.optim))
        if depths is not None:
            depth_of, cfg.num_blocks = depths
            by_depth: dict[int, list[torch.Tensor]] = defaultdict(list)
            for name, param in model.named_parameters():
                if param.requires_grad and name in depth_of:
                    by_depth[depth_of[name]].append(param)
            self._lpwd_depth_params = dict(sorted(by_depth.items()))
        if cfg.layerwise:
            cfg.depth_weight_decay = {
                str(g["depth"]): float(g["weight_decay"]) for g in groups if g["weight_decay"] > 0
            }

    # ------------------------------------------------------------------ the pre-forward decay
    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        optimizer = self.lpwd_optimizer
        if optimizer is not None and optimizer.require_pre_step:
            optimizer.pre_step()  # once per optimizer step; free when the fold predicted the lr
        return super().training_step(model, inputs, *args, **kwargs)

    # ------------------------------------------------------------------ the end of training
    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's ``train()``, then pwd's decay for a step that never came is divided out.

        A run that ends at ``max_steps`` folded nothing into its last step; one stopped earlier (early
        stopping, ``control.should_training_stop``) holds θ'_{T+1} = (1 − η_{T+1}·λ)·θ_T, and leaves
        with θ_T, the final parameters of unfolded pwd.  wd / rwd: nothing happens.
        """
        output = super().train(*args, **kwargs)
        self._lpwd_settle()
        return output

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the final model is the best checkpoint's weights, bit for bit.

        A checkpoint holds θ' (the weights the next forward would have seen, already decayed: the ones its
        metric was computed on), so the loaded weights are left as they are.  The run's own last weights
        are settled first (the load replaces them; if it finds nothing to load, they stay unfolded pwd's),
        and after the load no decay is recorded as pending.  The Trainer calls this (a private method,
        the one place where it loads the best model) before ``on_train_end``, and ``train()`` returns
        after both.
        """
        self._lpwd_settle(warn=False)
        super()._load_best_model()
        lpwd = self.lpwd_optimizer
        if lpwd is not None and lpwd.mode == "pwd":
            lpwd.forget_applied_decay()  # DeepSpeed's load also restored the checkpoint's bookkeeping

    def _lpwd_settle(self, warn: bool = True) -> None:
        """pwd: divide out the decay applied for a step that will not come (a no-op after the last step).

        ``warn``: under ZeRO-3, where the decay stays, say so (not when a best checkpoint replaces the weights).
        """
        lpwd = self.lpwd_optimizer
        if lpwd is None or lpwd.mode != "pwd":
            return
        if getattr(self, "is_deepspeed_enabled", False):
            deepspeed_glue.settle(lpwd, self.optimizer, warn=warn and self.is_world_process_zero())
        else:
            lpwd.settle()

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and getattr(self.args, "lpwd_log_layer_norms", True) and self._lpwd_depth_params:
            logs.update(self.lpwd_layer_norms())
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def lpwd_layer_norms(self) -> dict[str, float]:
        """‖θ‖₂ of all trainable parameters of each depth, keyed ``lpwd/weight_norm/depth_DD``.

        Sharded parameters (FSDP2's DTensors) contribute the squared norm of their local shard, summed
        over ranks in one all-reduce per log: no parameter is ever gathered.
        """
        depths = list(self._lpwd_depth_params)
        first = next(p for params in self._lpwd_depth_params.values() for p in params)
        device = (first.to_local() if hasattr(first, "to_local") else first).device
        sharded_rows, replicated_rows = [], []
        mesh_group = None
        for depth in depths:
            sharded, replicated = [], []
            for param in self._lpwd_depth_params[depth]:
                if hasattr(param, "to_local"):  # DTensor
                    if any(p.is_shard() for p in param.placements):
                        mesh_group = param.device_mesh.get_group() if param.device_mesh.ndim == 1 else None
                        sharded.append(param.to_local().detach())
                    else:
                        replicated.append(param.to_local().detach())
                else:
                    replicated.append(param.detach())
            sharded_rows.append(_squared_norm(sharded, device))
            replicated_rows.append(_squared_norm(replicated, device))
        sharded_sq, replicated_sq = torch.stack(sharded_rows), torch.stack(replicated_rows)  # on the params' device
        if mesh_group is not None or (
            sharded_sq.any() and torch.distributed.is_available() and torch.distributed.is_initialized()
        ):
            torch.distributed.all_reduce(sharded_sq, group=mesh_group)  # one all-reduce per log
        totals = (sharded_sq + replicated_sq).sqrt().cpu()  # one device-to-host copy per log
        return {f"lpwd/weight_norm/depth_{depth:02d}": round(float(v), 6) for depth, v in zip(depths, totals, strict=True)}

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's ``save_model`` (checkpoints and final model), plus ``lpwd_config.json`` and the card section.

        The config goes in first, so that a ``push_to_hub`` inside ``save_model`` uploads it too.
        """
        target = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            self.lpwd_config.save_pretrained(target)
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            self._add_card_section(target)

    def _add_card_section(self, folder: str) -> None:
        """Append the LPWD section to ``folder/README.md`` (PEFT writes one for adapters), or start a card."""
        card = os.path.join(folder, "README.md")
        section = self.lpwd_config.model_card_section()
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                text = f.read()
            if "## Weight decay: LPWD" in text:
                return
            text = text.rstrip("\n") + "\n\n" + section
        else:
            text = "---\nlibrary_name: transformers\ntags:\n- lpwd\n---\n\n" + section
        tmp = f"{card}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, card)

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        if "lpwd" not in tags:
            tags.append("lpwd")
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.is_world_process_zero():
            self._add_card_section(self.args.output_dir)


class LPWDTrainer(LPWDMixin, Trainer):
    """``transformers.Trainer`` with LPWD: pass :class:`LPWDTrainingArguments` (or any ``TrainingArguments``)."""


__all__ = [
    "LPWD_CONFIG_NAME",
    "LPWDMixin",
    "LPWDTrainer",
    "LPWDTrainingArguments",
    "check_deepspeed",
    "check_training_arguments",
    "lpwd_config_from_args",
]
