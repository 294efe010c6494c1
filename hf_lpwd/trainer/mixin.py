"""``LPWDMixin``: the only part of the package that knows the Trainer's order of calls.

It changes these things and nothing else, through the Trainer's seams (no callback: ``wd`` mode is the stock
Trainer, callbacks included):

* ``create_optimizer`` reads the settings *now* (a hyperparameter search changes the arguments between
  trials), builds the param groups (depths parsed once per model) and wraps the optimizer the Trainer itself
  would have chosen (``--optim``) in :class:`hf_lpwd.LPWD` (:mod:`hf_lpwd.trainer.build`);
* ``create_scheduler`` hands LPWD the schedule and ``max_steps`` (pwd folds the next step's decay into this
  step's update) and logs the layer table;
* ``training_step`` calls ``LPWD.pre_step()`` before the forward pass (free when the fold predicted the lr);
  under DeepSpeed the decay acts on its fp32 master weights inside the step instead;
* ``train()`` ends pwd exactly (a run stopped early divides out the decay folded in for the step that never
  came); ``load_best_model_at_end`` leaves the best checkpoint's weights as saved; a resume whose settings
  differ from the checkpoint's is refused when the optimizer is built; a checkpoint saved under a model's
  legacy names (ViT) is loaded in full, to resume and as the best model (the two private loads overridden);
* ``save_model`` writes ``lpwd_config.json`` (settings and the run's record) and the card section, and
  ``hub_strategy`` pushes during training carry both (the private push seam overridden); the logs get a
  weight norm per depth, at every logging step and at the first and last step.

Resuming: a checkpoint holds the decayed weights and, in the optimizer's param groups, the factor they carry,
so a resumed run is bitwise the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import has_length
from transformers.utils import logging as hf_logging

from .._compat.transformers import reload_renamed_checkpoint, steps_per_epoch, will_push_from_checkpoint
from ..card import add_card_section
from ..config import LPWDConfig
from ..integrations import deepspeed as deepspeed_glue
from ..integrations.bitsandbytes import keep_embeddings_in_32_bit
from ..names import LPWD_CONFIG_NAME, distance_log_key
from ..optim import LPWD
from ..schedule import first_step_scale, scheduler_scales
from ..settings import SETTING, SETTINGS, argument_label, config_label
from .arguments import refusal_key, run_config
from .build import base_optimizer_of, build_lpwd, class_path, record_groups, resolve_lambda
from .layer_log import log_layer_table
from .norms import anchors_of, layer_norms, params_by_depth, weights_before_resume
from .refusals import (
    check_training_arguments,
    depths_in_flag_words,
    peak_lr,
    refuse_schedule_decay,
    refuse_short_timescale,
)
from .resume import (
    check_resume,
    checkpoint_to_resume,
    keep_resumed_lambda,
    peak_lrs_going_on,
    resumed_base_lrs,
)

logger = hf_logging.get_logger("transformers.hf_lpwd")

__all__ = ["LPWDMixin", "LPWDTrainer"]


def _check_before_training(args: TrainingArguments, given: LPWDConfig | None, model: Any,
                           optimizer_cls_and_kwargs: tuple[Any, dict[str, Any]] | None,
                           train_dataset: Any, optimizer: Any = None) -> None:
    """Every refusal the arguments (and a model, the base, the data and an optimizer passed in, when given)
    allow before anything is written: those of :func:`check_training_arguments`, a timescale shorter than a
    step, a layer-wise profile on a model without blocks, and an LPWD built unlike the run's settings."""
    check_training_arguments(args, optimizer_cls_and_kwargs)
    config = run_config(args, given)
    _refuse_lpwd_unlike_its_record(optimizer, config, given is None)
    refuse_short_timescale(config.decay_timescale, train_dataset, args)
    if config.needs_depths and isinstance(model, nn.Module):
        depths_in_flag_words(model, config.layer_pattern)  # parsed once per model


def _refuse_built_optimizer(optimizer: Any) -> None:
    """``optimizers=(optimizer, scheduler)`` with an optimizer other than LPWD: its groups are made, so LPWD
    cannot wrap it, and the run would train without LPWD while its files recorded LPWD's settings."""
    if optimizer is None or _unwrap_lpwd(optimizer) is not None:
        return
    name = type(optimizer).__name__
    raise ValueError(
        f"LPWDTrainer(optimizers=({name}(...), ...)): an optimizer built outside the Trainer, which LPWD "
        "cannot wrap (its param groups are already made), so the run would train without LPWD while "
        f"lpwd_config.json recorded it. Pass optimizer_cls_and_kwargs=({name}, {{...}}) instead (LPWD wraps "
        "the class with its own groups), or an hf_lpwd.LPWD you built, or train with transformers.Trainer."
    )


def _refuse_lpwd_unlike_its_record(optimizer: Any, config: LPWDConfig, from_arguments: bool) -> None:
    """An ``LPWD`` passed in ``optimizers=`` trains as it was built, while ``lpwd_config.json`` and the model
    card record the run's settings (arguments or ``lpwd_config``): where they differ the record would be
    false, so the run is refused naming each difference (λ and the profile are not read back here)."""
    lpwd = _unwrap_lpwd(optimizer)
    if lpwd is None:
        return
    label = argument_label if from_arguments else config_label
    recorded = {"mode": config.timing, "lr_coupling": config.lr_coupling, "cautious": config.cautious,
                "decay_target": config.decay_target, "spd": config.spd}
    built = {"mode": lpwd.mode, "lr_coupling": lpwd.lr_coupling, "cautious": lpwd.cautious,
             "decay_target": lpwd.decay_target, "spd": lpwd.spd}
    shown = {**recorded, "mode": config.mode}  # lpwd, as written; compared as its timing, pwd
    differ = [f"{label(SETTING[name])} {shown[name]!r} (the LPWD: {built[name]!r})"
              for name in recorded if recorded[name] != built[name]]
    if differ:
        raise ValueError(
            f"LPWDTrainer(optimizers=(LPWD(...), ...)): the LPWD you built is not what this run would "
            f"record: {', '.join(differ)}. lpwd_config.json and the model card record the run's settings, so "
            "give the settings it was built with (mode: its timing; lpwd is pwd with --lpwd_layerwise true), "
            "or let the Trainer build it from them"
        )


def _keep_none(args: TrainingArguments, values: dict[str, Any]) -> None:
    """Set the fields a trial gives as None to None first: the Trainer casts a value to the type of the one
    it replaces, and skips the cast only when that is None."""
    for name, value in values.items():
        if value is None and hasattr(args, name):
            setattr(args, name, None)


def _unwrap_lpwd(optimizer: Any) -> LPWD | None:
    """LPWD inside Accelerate's / DeepSpeed's optimizer wrappers (each keeps the inner one as
    ``.optimizer``)."""
    while optimizer is not None and not isinstance(optimizer, LPWD):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


def _named_arguments(init: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's arguments by name, positional ones too, read from the signature of the ``__init__`` the
    mixin calls: ``Trainer(model, args, ...)``, but ``DPOTrainer(model, ref_model, args, ...)``."""
    try:
        signature = inspect.signature(init)
        bound = signature.bind_partial(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = None
    params = signature.parameters if bound is not None else {}
    if bound is None or any(params[name].kind is inspect.Parameter.VAR_POSITIONAL for name in bound):
        names = ("model", "args", "data_collator", "train_dataset")  # no names to read: Trainer's order
        return {**dict(zip(names, args, strict=False)), **kwargs}
    named: dict[str, Any] = {}
    for name, value in bound.items():
        if params[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


class LPWDMixin:
    """Put in front of any ``transformers.Trainer`` subclass to train with LPWD.

    Settings come from ``lpwd_config`` when given, else from the Trainer's arguments, read when the optimizer
    is built (:class:`LPWDTrainingArguments`, or LPWD's defaults on plain ``TrainingArguments``, e.g. TRL's
    ``SFTConfig``, with λ = ``args.weight_decay``).  With ``lpwd_config``, λ is the config's: a different
    ``args.weight_decay`` is reported in a warning, and the base optimizer is always the one ``args.optim``
    builds (recorded in the config).
    """

    def __init__(self, *args: Any, lpwd_config: LPWDConfig | None = None, **kwargs: Any) -> None:
        given = _named_arguments(super().__init__, args, kwargs)
        given_args, given_model = given.get("args"), given.get("model")
        _refuse_built_optimizer((given.get("optimizers") or (None, None))[0])
        if isinstance(given_args, TrainingArguments):
            # before Trainer.__init__, which creates the output folder
            _check_before_training(given_args, lpwd_config, given_model,
                                   given.get("optimizer_cls_and_kwargs"), given.get("train_dataset"),
                                   (given.get("optimizers") or (None, None))[0])
        super().__init__(*args, **kwargs)
        _refuse_built_optimizer(self.optimizer)
        self._lpwd_given_config = None if lpwd_config is None else dataclasses.replace(lpwd_config)
        self._lpwd_built_config: LPWDConfig | None = None
        self._lpwd_peak_lr = float(self.args.learning_rate)  # the base's lr once built (refusals.peak_lr)
        self._lpwd_resumed_lrs: list[float] | None = None  # the peak lrs a resumed checkpoint goes on with
        self._lpwd_depth_params: dict[int, list[torch.Tensor]] = {}
        self._lpwd_norms_step: int | None = None
        if self.args is not given_args or self.model is not given_model:  # a subclass made its own
            _check_before_training(self.args, lpwd_config, self.model, self.optimizer_cls_and_kwargs,
                                   self.train_dataset, self.optimizer)
        self._lpwd_checked_args = self._lpwd_argument_key()

    # ------------------------------------------------------------------ the settings of the run
    @property
    def lpwd_config(self) -> LPWDConfig:
        """The run's settings and record: those of the optimizer built last, else what the arguments say
        now."""
        return self._lpwd_built_config if self._lpwd_built_config is not None else self._lpwd_settings_now()

    def _lpwd_settings_now(self, warn: bool = False) -> LPWDConfig:
        return run_config(self.args, self._lpwd_given_config, warn)

    def _lpwd_argument_key(self) -> tuple:
        return refusal_key(self.args)

    @property
    def lpwd_optimizer(self) -> LPWD | None:
        """The :class:`hf_lpwd.LPWD` inside the Trainer's (possibly wrapped) optimizer, once built."""
        return _unwrap_lpwd(self.optimizer)

    def lpwd_depths(self, model: nn.Module | None = None) -> tuple[dict[str, int], int]:
        """``(depth of each parameter name, N)`` of ``model`` (default: the Trainer's), parsed once per
        model."""
        model = self.model if model is None else model
        return depths_in_flag_words(model, self.lpwd_config.layer_pattern)  # parsed once per model

    def _optional_depths(self, model: nn.Module, required: bool) -> tuple[dict[str, int], int] | None:
        try:
            return self.lpwd_depths(model)
        except ValueError:
            if required:
                raise
            return None  # a uniform, LLRD-free run on a model without a block stack: no per-depth view

    # ------------------------------------------------------------------ optimizer and schedule
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.optimizer is not None:
            self._lpwd_check_resume(self.lpwd_config)
            self._lpwd_restart_attempt(opt_model)
            return self.optimizer
        if self._lpwd_argument_key() != self._lpwd_checked_args:  # a search trial changed them
            check_training_arguments(self.args, self.optimizer_cls_and_kwargs)
            self._lpwd_checked_args = self._lpwd_argument_key()
        config = self._lpwd_settings_now(warn=True)
        saved = self._lpwd_check_resume(config)
        base = base_optimizer_of(self, opt_model)
        if self.optimizer_cls_and_kwargs is not None:  # not --optim's: the file names the class it was
            config.base_optimizer = class_path(base[0])
        self._lpwd_peak_lr = peak_lr(self.args, base)
        resolve_lambda(config, self._lpwd_steps_per_epoch, self._lpwd_peak_lr, self.args.should_log)
        if saved is not None and config.decay_timescale is not None:
            keep_resumed_lambda(config, saved, self.args.should_log)
        depths = self._optional_depths(opt_model, required=config.needs_depths)
        self.optimizer = build_lpwd(opt_model, config, base, self.get_decay_parameter_names(opt_model),
                                    depths)
        keep_embeddings_in_32_bit(*base, opt_model)
        if getattr(self, "is_deepspeed_enabled", False):
            # The weights become copies of DeepSpeed's fp32 masters: no pre-forward pass. Step 0's decay goes
            # on the weights now, before DeepSpeed copies them into its masters.
            self.optimizer.require_pre_step = False
            self.optimizer.decay_initial_weights(first_step_scale(self.args), deepspeed_glue.storage)
            self.optimizer.defer_initial_weights()  # θ₀ from ZeRO's partitions: no full copy per rank
        record_groups(config, self.optimizer.param_groups, base[1], None if depths is None else depths[1])
        self._lpwd_depth_params = {} if depths is None else params_by_depth(opt_model, depths[0])
        before_resume = getattr(self, "_lpwd_weights_before_resume", None)
        self._lpwd_weights_before_resume = None
        self._lpwd_anchors = (anchors_of(self._lpwd_depth_params, before_resume)
                              if self._lpwd_logs_distance() else None)
        self._lpwd_built_config = config
        return self.optimizer

    def _lpwd_restart_attempt(self, model: nn.Module) -> None:
        """The Trainer keeps its optimizer for a new attempt (``auto_find_batch_size`` after an out-of-memory
        error, a second ``train()``): pwd's decay applied for a step the failed attempt never took is divided
        out, and a λ set by ``--lpwd_decay_timescale`` follows the new attempt's steps per epoch."""
        lpwd = self.lpwd_optimizer
        if lpwd is None or getattr(self, "is_deepspeed_enabled", False):
            return
        if lpwd.mode == "pwd":
            lpwd.settle()
        config = self._lpwd_built_config
        if config is None or config.decay_timescale is None:
            return
        config = dataclasses.replace(config)
        resolve_lambda(config, self._lpwd_steps_per_epoch, self._lpwd_peak_lr, self.args.should_log)
        if config.weight_decay == self._lpwd_built_config.weight_decay:
            return
        depths = self._optional_depths(model, required=config.needs_depths)
        groups = config.param_groups(model, decay_names=self.get_decay_parameter_names(model),
                                     depths=depths if config.needs_depths else None)
        for group, rebuilt in zip(lpwd.param_groups, groups, strict=True):
            group["weight_decay"] = rebuilt["weight_decay"]
        record_groups(config, lpwd.param_groups, config.base_optimizer_kwargs,
                      None if depths is None else depths[1])
        self._lpwd_built_config = config

    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any) -> tuple:
        """The Trainer's own count of steps; LPWD keeps its optimizer steps per epoch for the timescale."""
        values = super().set_initial_training_values(args, dataloader)
        self._lpwd_steps_per_epoch_seen = steps_per_epoch(values)
        tau = self._lpwd_settings_now().decay_timescale
        if tau is not None and not has_length(dataloader) and args.should_log:
            logger.warning("LPWD: the training data has no length, so the Trainer counts the whole run "
                           "(--max_steps %d) as one epoch: --lpwd_decay_timescale %g epochs is %g optimizer "
                           "steps", self._lpwd_steps_per_epoch_seen, tau,
                           tau * self._lpwd_steps_per_epoch_seen)
        return values

    def _lpwd_steps_per_epoch(self) -> int:
        seen = getattr(self, "_lpwd_steps_per_epoch_seen", None)
        if seen is None:  # create_optimizer called outside train(): count as train() would
            seen = steps_per_epoch(self.set_initial_training_values(self.args, self.get_train_dataloader()))
        return seen

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> Any:
        """The Trainer's scheduler, handed to LPWD so that pwd can fold the next step's decay."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        lpwd = _unwrap_lpwd(optimizer if optimizer is not None else self.optimizer)
        if lpwd is not None:
            lpwd.set_lr_scheduler(scheduler, num_training_steps, steps_taken=self._lpwd_steps_taken)
            base_lrs = peak_lrs_going_on(scheduler, self._lpwd_resumed_lrs, self.lpwd_config,
                                         self.args.should_log)
            scales = scheduler_scales(scheduler, num_training_steps)  # one pass over the schedule
            refuse_schedule_decay(lpwd.param_groups, base_lrs, scales, self.lpwd_config.lr_coupling,
                                  self.lpwd_config.decay_timescale)
            log_layer_table(lpwd, scheduler, num_training_steps, self.lpwd_config, self.args.should_log,
                            base_lrs, scales)
        return scheduler

    def _lpwd_steps_taken(self) -> int:
        """Optimizer steps done, the index of the step being taken (the fold's clock where the scheduler's
        own counts evaluations)."""
        return self.state.global_step

    # ------------------------------------------------------------------ the step
    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any,
                      **kwargs: Any) -> torch.Tensor:
        if self.state.global_step == 0 and self._lpwd_norms_step is None:
            self._log_lpwd_norms()  # the weights training starts from
        optimizer = self.lpwd_optimizer
        if optimizer is not None and optimizer.require_pre_step:
            optimizer.pre_step()  # once per optimizer step; free when the fold predicted the lr
        return super().training_step(model, inputs, *args, **kwargs)

    # ------------------------------------------------------------------ the end of training
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's ``train()``, then pwd's decay for a step that never came is divided out.

        A run that ends at ``max_steps`` folded nothing into its last step; one stopped earlier (early
        stopping) holds θ'_{T+1} = (1 − η_{T+1}·λ)·θ_T and leaves with θ_T, the final parameters of unfolded
        pwd.  The last weights' norms are logged unless the last logging step logged them.  A resume whose
        settings the checkpoint's optimizer would override is refused first (:mod:`.resume`).
        """
        self._lpwd_resume_request = resume_from_checkpoint  # checked when the optimizer is built
        self._lpwd_norms_step = None
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._lpwd_resume_request = None
        settled = self._lpwd_settle()
        if settled or self._lpwd_norms_step != self.state.global_step:
            self._log_lpwd_norms()  # the weights returned (an early stop's settled ones)
        return output

    def _hp_search_setup(self, trial: Any) -> None:
        """A search trial's values on the arguments, with two things the Trainer's own setting gets wrong.

        Each trial starts from the run's own LPWD settings (the flags transformers does not declare): a
        conditional space that sets ``lpwd_cautious`` in one trial leaves it unset, not inherited, in the
        next. A trial's ``None`` (``lpwd_layerwise``: the mode's default; ``lpwd_decay_timescale``: none)
        stays None, where the Trainer casts it to the type of the value before it (``bool(None)`` is uniform
        decay, ``float(None)`` raises).
        """
        if trial is not None and getattr(self, "hp_search_backend", None) is not None:
            if getattr(self, "_lpwd_search_base", None) is None:
                self._lpwd_search_base = {s.flag: getattr(self.args, s.flag) for s in SETTINGS
                                          if not s.trainer_owned and hasattr(self.args, s.flag)}
            for flag, value in self._lpwd_search_base.items():
                setattr(self.args, flag, value)
        space = original = getattr(self, "hp_space", None)
        if isinstance(trial, dict):  # Ray, W&B: the trial is the values
            _keep_none(self.args, trial)
        elif callable(original):  # Optuna: the values come from hp_space(trial)
            def space(t: Any) -> dict[str, Any]:
                values = original(t)
                _keep_none(self.args, values)
                return values

            self.hp_space = space
        try:
            super()._hp_search_setup(trial)
        finally:
            if space is not original:
                self.hp_space = original

    def _lpwd_check_resume(self, config: LPWDConfig) -> LPWDConfig | None:
        """Refuse a resume whose settings differ from the checkpoint's (:mod:`.resume`), once per ``train()``;
        the checkpoint's saved settings.

        Made when the optimizer is built, not at ``train()``'s start: a hyperparameter search sets the trial's
        values (and its output folder) in between.
        """
        request, self._lpwd_resume_request = getattr(self, "_lpwd_resume_request", None), None
        checkpoint = checkpoint_to_resume(request, self.args.output_dir)
        self._lpwd_resumed_lrs = resumed_base_lrs(checkpoint)
        if checkpoint is None:
            return None
        return check_resume(checkpoint, config, from_arguments=self._lpwd_given_config is None)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the final model is the best checkpoint's weights, bit for bit.

        A checkpoint holds θ' (the weights its metric was computed on), so the loaded weights are left as they
        are; the run's own last weights are settled first, and no decay is pending after the load.  A private
        method overridden: the Trainer's only place that loads the best model, before ``on_train_end``.
        """
        self._lpwd_settle(warn=False)
        super()._load_best_model()
        self._lpwd_reload_renamed(self.state.best_model_checkpoint)
        lpwd = self.lpwd_optimizer
        if lpwd is not None and lpwd.mode == "pwd":
            lpwd.forget_applied_decay()  # DeepSpeed's load also restored the checkpoint's bookkeeping

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """The Trainer's load of a checkpoint to resume, then the tensors it missed (saved under a model's
        legacy names: :func:`reload_renamed_checkpoint`); resumed runs are bitwise the uninterrupted ones.

        With ``--lpwd_log_distance_to_init`` the weights before the load (the pretrained ones, built as in the
        first run) are kept as θ₀ of the distance: the optimizer is built after this load, and would
        otherwise measure from the checkpoint (ZeRO and FSDP load after the optimizer is built)."""
        if self._lpwd_logs_distance():
            self._lpwd_weights_before_resume = weights_before_resume(self.model if model is None else model)
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._lpwd_reload_renamed(resume_from_checkpoint, model)

    def _lpwd_reload_renamed(self, folder: str | None, model: nn.Module | None = None) -> None:
        sharded = getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False)
        if folder is None or sharded:
            return
        renamed = reload_renamed_checkpoint(self.model if model is None else model, folder)
        if renamed:
            logger.info("LPWD: %d tensors of %s are saved under the model's legacy names, which the "
                        "Trainer's load missed; loaded through from_pretrained", renamed, folder)

    def _lpwd_settle(self, warn: bool = True) -> bool:
        """pwd: divide out the decay applied for a step that will not come (a no-op after the last step);
        whether there was one."""
        lpwd = self.lpwd_optimizer
        if lpwd is None or lpwd.mode != "pwd":
            return False
        pending = bool(lpwd.pending_decay)
        if getattr(self, "is_deepspeed_enabled", False):
            deepspeed_glue.settle(lpwd, self.optimizer, warn=warn and self.is_world_process_zero())
        else:
            lpwd.settle()
        return pending

    # ------------------------------------------------------------------ logging
    def _lpwd_logs_norms(self) -> bool:
        return bool(getattr(self.args, "lpwd_log_layer_norms", True)) and bool(self._lpwd_depth_params)

    def _lpwd_logs_distance(self) -> bool:
        return bool(getattr(self.args, SETTING["log_distance_to_init"].flag, False))

    def _log_lpwd_norms(self) -> None:
        if self._lpwd_logs_norms():
            self.log(self.lpwd_layer_norms())

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and self._lpwd_logs_norms():
            logs.update(self.lpwd_layer_norms())
        super().log(logs, *args, **kwargs)

    def lpwd_layer_norms(self) -> dict[str, float]:
        """‖θ‖₂ of all trainable parameters of each depth, keyed ``lpwd/weight_norm/depth_DD``."""
        self._lpwd_norms_step = self.state.global_step
        logs = layer_norms(self._lpwd_depth_params)
        if getattr(self, "_lpwd_anchors", None):
            logs.update(layer_norms(self._lpwd_depth_params, self._lpwd_anchors, distance_log_key))
        return logs

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's ``save_model`` (checkpoints, final model), plus ``lpwd_config.json`` and the card
        section.

        The config goes in first, so that a ``push_to_hub`` inside ``save_model`` uploads it too. A Trainer
        that never built an optimizer (evaluation only) trained nothing: it writes neither, and leaves the
        record and card of the run that trained the weights as they are (as the stock Trainer does).
        """
        target = output_dir if output_dir is not None else self.args.output_dir
        trained = self._lpwd_trained()
        if self.args.should_save and trained:
            self.lpwd_config.save_pretrained(target)
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save and trained:
            add_card_section(target, self.lpwd_config)

    def _lpwd_trained(self) -> bool:
        return getattr(self, "optimizer", None) is not None

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``hub_strategy`` pushes during training upload ``output_dir`` after the Trainer copied a fixed list
        of model files into it from the checkpoint: ``lpwd_config.json`` and the card section go in too, so
        every pushed revision says how its weights were trained (a private seam: ``_compat.transformers``)."""
        if will_push_from_checkpoint(self):
            saved = os.path.join(checkpoint_folder, LPWD_CONFIG_NAME)
            if os.path.isfile(saved):
                shutil.copy(saved, os.path.join(self.args.output_dir, LPWD_CONFIG_NAME))
            add_card_section(self.args.output_dir, self.lpwd_config)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        trained = self._lpwd_trained()  # the card of an evaluation-only Trainer claims no LPWD training
        if trained and "lpwd" not in tags:
            tags.append("lpwd")
        super().create_model_card(*args, tags=tags, **kwargs)
        if self.is_world_process_zero() and trained:
            add_card_section(self.args.output_dir, self.lpwd_config)


class LPWDTrainer(LPWDMixin, Trainer):
    """``transformers.Trainer`` with LPWD: pass :class:`LPWDTrainingArguments` (or any
    ``TrainingArguments``)."""
