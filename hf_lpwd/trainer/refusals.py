"""What LPWDTrainer refuses from the training arguments alone, before anything is written.

One home for these checks: ``LPWDMixin.__init__`` makes them, and so do the recipes before they create the
output folder (the Trainer's own ``__init__`` creates it).  Each message names the flag and the way out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import has_length

from .._compat.transformers import deepspeed_config_dict
from ..model.layers import LayerPatternError, NoBlockStackError, layer_depths_with_count
from ..optim.bases import base_setting, refuse_cautious_base, refuse_own_decay_rule, refuse_schedule_free
from ..schedule import highest_decay, schedule_rise
from ..settings import (
    SCHEDULE_FREE_REASON,
    SETTING,
    SETTINGS,
    argument_label,
    check_decay_factor,
    check_peak_decay,
)
from .arguments import check_spd_arguments, settings_of

_UNSUPPORTED_OPTIM_KWARGS = ("params", "model", "optimizer_dict")
_OWN_STEP_FAMILIES = {
    "galore_": "GaLore",
    "apollo_": "APOLLO",
}
_LOMO = ("lomo", "adalomo")


def _optim_name(args: Any) -> str:
    return str(getattr(args.optim, "value", args.optim))


def check_deepspeed(args: TrainingArguments) -> None:
    """Refuse, before training, the DeepSpeed configs LPWD cannot serve.

    With an ``optimizer`` section DeepSpeed builds its own optimizer and never asks the Trainer's
    ``create_optimizer``, so there is nothing for LPWD to wrap.  Every timing works without one:
    wd / rwd are AdamW with other (η, λ), and pwd's decay is folded into the step on DeepSpeed's
    fp32 master partitions (a pass over the model's weights before the forward would be overwritten).
    """
    ds_config = deepspeed_config_dict(args)
    if ds_config is not None and "optimizer" in ds_config:
        raise ValueError(
            "the DeepSpeed config has an 'optimizer' section, so DeepSpeed would build its own optimizer and "
            "LPWD could not wrap it. Remove the 'optimizer' key from the DeepSpeed config: the Trainer then "
            "builds LPWD around --optim (adamw_torch_fused by default), with --learning_rate and --adam_* as "
            "usual"
        )


def check_training_arguments(
    args: TrainingArguments, optimizer_cls_and_kwargs: tuple[Any, dict[str, Any]] | None = None
) -> None:
    """Every refusal that needs only the arguments (and the Trainer's ``optimizer_cls_and_kwargs``, when
    given), so a script can make them before it writes anything.

    The DeepSpeed ``optimizer`` section; ``--optim`` values LPWD cannot wrap (schedule-free; GaLore, APOLLO
    and LOMO, which build their own groups or step outside ``step()``; any other that builds its own parameter
    groups); bases whose own decay is another rule (StableAdamW's ``decouple_lr``, Adafactor's
    ``scale_parameter``); cautious decay on a base without a readable direction; a negative lr; and η·λ ≥ 1
    (the base's lr × ``--weight_decay``: a decay factor <= 0).  ``LPWDMixin`` makes the same checks when it
    is constructed.
    """
    check_deepspeed(args)
    _refuse_schedule_free(args)
    _refuse_own_step_optim(args)
    _refuse_stable_adamw_decouple_lr(args)
    base = _base_of(args, optimizer_cls_and_kwargs)
    if base is not None:
        check_base(args, base, None if optimizer_cls_and_kwargs is None else "optimizer_cls_and_kwargs")
    lr_label = "--learning_rate" if optimizer_cls_and_kwargs is None else "optimizer_cls_and_kwargs' lr"
    lr = peak_lr(args, base)
    if lr < 0:  # torch's optimizers refuse it when built: after the Trainer made the output folder
        raise ValueError(f"{lr_label}={lr:g} is negative: the base optimizer refuses it when it is built, "
                         "after the output folder exists; give a learning rate >= 0")
    _check_peak_decay(args, lr, lr_label)
    _refuse_spd(args)


def check_timescale(tau: float | None, steps_per_epoch: int, at_most: str = "") -> None:
    """τ epochs must span more than one optimizer step: the decay at the peak lr is d = 1/(τ·S_e) under every
    coupling (λ is set so), so τ·S_e <= 1 would remove the whole weight, or more, in one step.  ``at_most``:
    why ``steps_per_epoch`` is only a bound (before the Trainer counts them)."""
    if tau is None or tau * steps_per_epoch > 1.0:
        return
    flag = argument_label(SETTING["decay_timescale"])
    bound, least = ("at most ", "at least ") if at_most else ("", "")
    why = f"; {at_most}" if at_most else ""
    raise ValueError(
        f"{flag}={tau:g} epochs is {bound}{tau * steps_per_epoch:g} optimizer steps "
        f"({bound}{steps_per_epoch} steps per epoch{why}): the per-step decay at the peak lr, "
        f"d = 1/(τ·steps per epoch), is {least}{1 / (tau * steps_per_epoch):g} and must stay below 1 "
        f"(the factor 1 − d <= 0 would flip the weights' signs); give {flag} above "
        f"{1 / steps_per_epoch:g} epochs"
    )


def refuse_short_timescale(tau: float | None, train_dataset: Any, args: TrainingArguments) -> None:
    """:func:`check_timescale` before the Trainer exists, against the most optimizer steps an epoch of
    ``train_dataset`` can have (one batch per step; more processes or accumulation only give fewer)."""
    if tau is None or not has_length(train_dataset) or getattr(args, "parallelism_config", None) is not None:
        return  # (sequence parallelism multiplies the Trainer's count)
    batch = int(args.per_device_train_batch_size)
    most = max(1, math.ceil(len(train_dataset) / batch))
    check_timescale(tau, most, f"{len(train_dataset)} examples in batches of {batch}")


def refuse_schedule_decay(groups: list[dict[str, Any]], base_lrs: list[float] | None,
                          scales: list[list[float]] | None, lr_coupling: str,
                          timescale: float | None = None) -> None:
    """The per-step decay at the highest lr the built schedule reaches, in any param group, must stay below
    1: the arguments' check probes the Trainer's schedule, this one reads the run's own (a scheduler passed in
    ``optimizers``, the real length), before the first step."""
    if scales is None or base_lrs is None:  # reduce_lr_on_plateau only lowers the lr
        return
    decay, group, step = highest_decay(groups, base_lrs, scales, lr_coupling)
    rate = (f"give a longer {argument_label(SETTING['decay_timescale'])} (λ comes from it)"
            if timescale is not None else f"lower {argument_label(SETTING['weight_decay'])}")
    lr = base_lrs[group] * scales[group][step]
    check_decay_factor(
        decay, f"LPWD: the lr schedule reaches lr={lr:g} in param group {group} at step {step}, with "
        f"weight_decay={float(groups[group]['weight_decay']):g} and {lr_coupling} coupling",
        f"{rate}, or the schedule's highest lr (--learning_rate, --lr_scheduler_kwargs, or the scheduler "
        "passed in optimizers=)")


def _base_of(
    args: TrainingArguments, given: tuple[Any, dict[str, Any]] | None
) -> tuple[Any, dict[str, Any]] | None:
    """The (class, kwargs) the Trainer will build: ``optimizer_cls_and_kwargs`` when given, else ``--optim``'s
    (``None`` where that needs the model or a package: ``create_optimizer`` checks it then)."""
    if given is not None:
        return given
    try:
        return Trainer.get_optimizer_cls_and_kwargs(args)
    except Exception:  # noqa: BLE001 - needs the model or a package: create_optimizer will say
        return None


def peak_lr(args: TrainingArguments, base: tuple[Any, dict[str, Any]] | None) -> float:
    """η̄, the lr the base is built with: its kwargs' (``optimizer_cls_and_kwargs`` may carry its own), else
    its class's default, else ``--learning_rate``."""
    if base is not None and isinstance(base[0], type):
        lr = base_setting(base[0], dict(base[1]), "lr")
        if isinstance(lr, (int, float)) or hasattr(lr, "item"):
            return float(lr)
    return float(args.learning_rate)


def check_base(args: TrainingArguments, base: tuple[Any, dict[str, Any]], source: str | None) -> None:
    """What LPWD cannot wrap in the base itself: a class that builds its own groups, a schedule-free one, one
    whose own decay follows another rule, and (with cautious decay) one whose direction LPWD cannot read."""
    refuse_unwrappable_optim(args, base, source)
    label = source or f"--optim {_optim_name(args)}"
    base_cls, base_kwargs = base
    if source is not None:  # --optim's schedule-free values are refused by name, earlier
        refuse_schedule_free(base_cls)
    refuse_own_decay_rule(base_cls, dict(base_kwargs), label)
    if getattr(args, SETTING["cautious"].flag, False):
        refuse_cautious_base(base_cls)


def _refuse_spd(args: TrainingArguments) -> None:
    """SPD's settings (:func:`hf_lpwd.optim.spd.check_spd` in the flags' words), and DeepSpeed: ZeRO hands
    the optimizer flat partitions of many tensors, so SPD's per-tensor condition and norms would be taken
    over a partition, not a layer."""
    values = settings_of(args)
    if not values["spd"]:
        return
    check_spd_arguments(values)
    if deepspeed_config_dict(args) is not None:
        raise ValueError(
            f"{argument_label(SETTING['spd'])}=true with DeepSpeed: ZeRO steps flat partitions of many "
            "parameters, so SPD's per-layer condition and norms would be taken over a partition, not a "
            "layer. Train SPD without --deepspeed (one device or DDP)"
        )


def _check_peak_decay(args: TrainingArguments, lr: float, lr_label: str) -> None:
    """The per-step decay at the peak lr must stay below 1 (:func:`hf_lpwd.settings.check_peak_decay`)."""
    values = {s.name: getattr(args, s.flag, s.default) for s in SETTINGS}
    rise = schedule_rise(args, lr)
    given = getattr(args, "lr_scheduler_kwargs", None)
    kwargs = f" with --lr_scheduler_kwargs {given}" if given else ""
    check_peak_decay(values, lr, lr_label=lr_label, rise=rise,
                     rise_label=f"the highest lr of --lr_scheduler_type {_scheduler_name(args)}{kwargs}")


def _scheduler_name(args: TrainingArguments) -> str:
    kind = getattr(args, "lr_scheduler_type", None)
    return str(getattr(kind, "value", kind))


def refuse_unwrappable_optim(
    args: TrainingArguments, base: tuple[Any, dict[str, Any]] | None = None, source: str | None = None
) -> None:
    """LPWD wraps an optimizer class that takes param groups; some ``--optim`` values build something else."""
    if base is None:
        try:
            base = Trainer.get_optimizer_cls_and_kwargs(args)
        except Exception:  # noqa: BLE001 - needs the model or a package: create_optimizer will say
            return
    base_cls, base_kwargs = base
    if not isinstance(base_cls, type) or any(key in base_kwargs for key in _UNSUPPORTED_OPTIM_KWARGS):
        raise ValueError(
            f"{source or '--optim ' + _optim_name(args)} builds its own parameter groups "
            "or optimizers, so LPWD cannot wrap it. Use an optimizer that takes param groups: "
            "adamw_torch_fused (default), adamw_torch, sgd, adafactor, adagrad, rmsprop, ..."
        )


def _refuse_schedule_free(args: TrainingArguments) -> None:
    optim = _optim_name(args)
    if "schedule_free" in optim:
        raise ValueError(
            f"--optim {optim}: {SCHEDULE_FREE_REASON}. Use the stock Trainer for schedule-free training, or "
            "--optim adamw_torch_fused with LPWD"
        )


def _refuse_own_step_optim(args: TrainingArguments) -> None:
    """GaLore / APOLLO build their own param groups around a low-rank projection of ``--optim_target_modules``
    (their ``*_layerwise`` variants step each parameter inside a backward hook); LOMO / AdaLomo fuse the
    update into the backward pass over the whole model and are never ``step()``-ed.  Neither has the param
    groups and the ``step()`` LPWD's decay timings act on.  Refused by name: ``get_optimizer_cls_and_kwargs``
    needs the model (and the package) to say so, i.e. only when the output folder exists already."""
    optim = _optim_name(args)
    family = next((name for prefix, name in _OWN_STEP_FAMILIES.items() if optim.startswith(prefix)), None)
    if family is not None:
        raise ValueError(
            f"--optim {optim}: {family} builds its own parameter groups (a low-rank projection of "
            "--optim_target_modules), and its *_layerwise variants step each parameter inside a backward "
            "hook, so LPWD cannot wrap it. Use the stock Trainer for it, or with LPWD an optimizer that "
            "takes param groups: adamw_torch_fused (default), adamw_torch, adamw_8bit, adafactor, ..."
        )
    if optim in _LOMO:
        raise ValueError(
            f"--optim {optim}: LOMO / AdaLomo fuse the update into the backward pass over the whole model "
            "(the Trainer never calls step()), so there are no param groups and no step for LPWD's decay. "
            "Use the stock Trainer for it, or with LPWD an optimizer that takes param groups: "
            "adamw_torch_fused (default), adamw_8bit, adafactor, ..."
        )


def _optim_args(args: Any) -> dict[str, str]:
    """``--optim_args`` as the Trainer reads it: ``key=value`` pairs separated by commas, spaces dropped."""
    text = getattr(args, "optim_args", None)
    if not text:
        return {}
    pairs = (item.split("=", 1) for item in text.replace(" ", "").split(",") if "=" in item)
    return {key: value for key, value in pairs}


def _refuse_stable_adamw_decouple_lr(args: TrainingArguments) -> None:
    """StableAdamW's ``decouple_lr`` decays by (1 − (η/max_lr)·λ): the decay follows the schedule but not the
    lr's size.  LPWD drops the base's own decay and applies its timing's (1 − η·λ), which would silently
    change that rule (1000× less decay at lr = max_lr = 1e-3)."""
    if _optim_name(args) != "stable_adamw":
        return
    value = _optim_args(args).get("decouple_lr")
    if value:  # the Trainer passes bool(value): any non-empty value turns it on, "False" included
        raise ValueError(
            f"--optim stable_adamw --optim_args decouple_lr={value}: the Trainer passes bool('{value}'), "
            "which is True for any non-empty text, 'False' included, and StableAdamW then decays by "
            "(1 - (lr/max_lr)·λ), a decay that does not scale with the lr; LPWD replaces StableAdamW's own "
            "decay with its timing's (1 - lr·λ), so it would train a different decay without a word. Remove "
            "decouple_lr (and max_lr) from --optim_args and give --lpwd_lr_coupling independent, LPWD's rule "
            "for a decay that follows the schedule but not the lr's size (d = (lr_t/lr)·λ, the peak lr in "
            "the place of max_lr)"
        )


def depths_in_flag_words(model: torch.nn.Module, layer_pattern: Any) -> tuple[dict[str, int], int]:
    """:func:`layer_depths_with_count`, with a missing block stack said in the Trainer's flags (and what
    trains without depths)."""
    try:
        return layer_depths_with_count(model, layer_pattern)
    except LayerPatternError as exc:
        message = exc.describe(argument_label(SETTING["layer_pattern"]), command_line=True)
        if isinstance(exc, NoBlockStackError):
            message += (f" Or train without depths: {argument_label(SETTING['mode'])} pwd, rwd or wd "
                        f"(a uniform λ) with {argument_label(SETTING['layer_lr_decay'])} 1.")
        raise ValueError(message) from None


__all__ = [
    "check_base", "check_deepspeed", "check_timescale", "check_training_arguments", "depths_in_flag_words",
    "peak_lr", "refuse_short_timescale",
    "refuse_unwrappable_optim",
]
