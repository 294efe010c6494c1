"""What a resumed run must agree with, checked before ``train()`` loads anything.

A resumed run continues the checkpoint's optimizer: torch's ``load_state_dict`` puts the checkpoint's param
groups back, λ per depth, lr multipliers and pwd's pending factor included, so a setting changed at resume
would be ignored by the optimizer while ``lpwd_config.json`` recorded the new value.  And a checkpoint saved
without its optimizer state (``--save_only_model``) has no θ₀ to return to, and pwd's weights in it already
carry the next step's decay, which a fresh optimizer would apply again.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging as hf_logging

from ..config import LPWDConfig
from ..names import LPWD_CONFIG_NAME
from ..settings import CONFIG_SETTINGS, SETTING, argument_label, config_label, resolve_settings, timing_of

logger = hf_logging.get_logger("transformers.hf_lpwd")

__all__ = ["checkpoint_to_resume", "check_resume", "keep_resumed_lambda", "peak_lrs_going_on",
           "resumed_base_lrs"]

# The file in which the Trainer saves its scheduler's state_dict in a checkpoint.
_SCHEDULER_FILE = "scheduler.pt"

_NOT_IN_THE_OPTIMIZER_STATE = ("stochastic_rounding",)
"""Settings a resumed run may change: how the step's result is written, not what is decayed or how much."""


def checkpoint_to_resume(resume_from_checkpoint: Any, output_dir: str) -> str | None:
    """The folder ``Trainer.train(resume_from_checkpoint=...)`` will load (``True``: the last in
    ``output_dir``), or ``None``."""
    if isinstance(resume_from_checkpoint, bool):
        found = resume_from_checkpoint and os.path.isdir(output_dir)
        return get_last_checkpoint(output_dir) if found else None
    return None if resume_from_checkpoint is None else str(resume_from_checkpoint)


def _effective(config: LPWDConfig) -> dict[str, Any]:
    """The settings as the optimizer applies them: ``lpwd`` is pwd with the layer-wise profile, and with a
    timescale λ is derived (compared through τ)."""
    values = resolve_settings(config.settings())
    values["mode"] = timing_of(values["mode"])
    return values


def _differences(saved: LPWDConfig, now: LPWDConfig) -> list[tuple[str, Any, Any]]:
    before, after = _effective(saved), _effective(now)
    skip = set(_NOT_IN_THE_OPTIMIZER_STATE)
    if before["decay_timescale"] is not None or after["decay_timescale"] is not None:
        skip.add("weight_decay")  # the timescale's λ follows the steps per epoch; τ is what was chosen
    names = [s.name for s in CONFIG_SETTINGS if s.name not in skip]
    if saved.mode != now.mode:  # lpwd, not its timing pwd: say what the user wrote
        before["mode"], after["mode"] = saved.mode, now.mode
    return [(name, before[name], after[name]) for name in names if before[name] != after[name]]


def _saved_without_lpwd(checkpoint: str) -> bool:
    """An ``optimizer.pt`` whose param groups hold none of LPWD's keys (``lpwd_*``, ``depth``): the stock
    Trainer's, whose groups another decay would not match (read memory-mapped: no tensor is loaded)."""
    path = os.path.join(checkpoint, "optimizer.pt")
    if not os.path.isfile(path):
        return False  # sharded or DeepSpeed's: not read here
    try:
        groups = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("param_groups", [])
    except Exception:  # noqa: BLE001 - unreadable here: the Trainer's own load will say
        return False
    return bool(groups) and not any(key == "depth" or str(key).startswith("lpwd")
                                    for group in groups for key in group)


def _has_optimizer_state(checkpoint: str) -> bool:
    """Whether the Trainer saved an optimizer there (``optimizer.pt`` / ``.bin`` / sharded, or DeepSpeed's
    ``global_step*``); ``--save_only_model`` saves none."""
    return bool(glob.glob(os.path.join(checkpoint, "optimizer*"))
                or glob.glob(os.path.join(checkpoint, "global_step*")))


def check_resume(checkpoint: str, now: LPWDConfig, from_arguments: bool = True) -> LPWDConfig | None:
    """Refuse, before anything is loaded, a resume whose LPWD settings differ from the checkpoint's, and a
    checkpoint without optimizer state where θ₀ or pwd's pending decay would be lost; the checkpoint's saved
    settings (None if it has none).

    ``from_arguments``: name the settings as command-line flags (else as ``LPWDConfig`` fields).
    """
    if not os.path.isdir(checkpoint):
        return None  # the Trainer's own error says so
    label = argument_label if from_arguments else config_label
    config_file = os.path.join(checkpoint, LPWD_CONFIG_NAME)
    saved = LPWDConfig.from_json_file(config_file) if os.path.isfile(config_file) else None
    if saved is not None:
        changed = _differences(saved, now)
        if changed:
            listed = ", ".join(f"{label(SETTING[name])} {after!r} (checkpoint: {before!r})"
                               for name, before, after in changed)
            raise ValueError(
                f"resuming {checkpoint} with other LPWD settings than it was trained with: {listed}. A "
                "resumed run continues the checkpoint's optimizer, whose param groups keep the checkpoint's "
                "settings, so these would be ignored. Resume with the checkpoint's values (they are in its "
                f"{LPWD_CONFIG_NAME}), or start a new run from its weights (the checkpoint folder as the "
                "model) to change them. (Ray Tune's population-based training resumes another trial's "
                "checkpoint this way: mutate what a checkpoint does not fix, or search with fresh trials.)"
            )
    if saved is None and _saved_without_lpwd(checkpoint):
        changed = _differences(LPWDConfig(mode="wd", weight_decay=now.weight_decay), now)
        if changed:
            listed = ", ".join(f"{label(SETTING[name])} {after!r}" for name, _, after in changed)
            raise ValueError(
                f"resuming {checkpoint} with {listed}: a Trainer without LPWD saved it (no "
                f"{LPWD_CONFIG_NAME}, and its optimizer state has none of LPWD's param-group keys), so its "
                "optimizer decays as "
                f"{label(SETTING['mode'])} 'wd' with one λ for every parameter. Resume it with that (bitwise "
                "the stock Trainer's run), or start a new run from its weights (the checkpoint folder as the "
                "model) to change the decay"
            )
    decays = now.weight_decay > 0 or now.decay_timescale is not None
    if decays and not _has_optimizer_state(checkpoint):
        lost = ("θ₀, the weights the decay returns to (" + label(SETTING["decay_target"]) + " init)"
                if now.decay_target == "init" else
                "which of its weights already carry pwd's decay for the next step (a fresh optimizer would "
                "apply it again)" if now.timing == "pwd" else None)
        if lost is not None:
            raise ValueError(
                f"{checkpoint} has no optimizer state (saved with --save_only_model), so the resumed run "
                f"would not know {lost}. Resume from a checkpoint saved without --save_only_model, or start "
                "a new run from its weights (the checkpoint folder as the model)."
            )
    return saved


def keep_resumed_lambda(config: LPWDConfig, saved: LPWDConfig, should_log: bool) -> None:
    """A timescale's λ on resume is the checkpoint's: its optimizer's param groups bring it back (as they
    bring back the lr, and the scheduler its base lr), so the λ = 1/(η̄·τ·S_e) of a changed ``--learning_rate``
    or steps per epoch would be recorded but never used."""
    if saved.weight_decay == config.weight_decay:
        return
    if should_log:
        logger.warning("LPWD: resuming keeps the checkpoint's λ = %.6g (its timescale at its lr and steps "
                       "per epoch), not the %.6g this run's lr and steps per epoch give: the loaded "
                       "optimizer keeps its param groups. Start a new run from the checkpoint's weights to "
                       "change it.",
                       saved.weight_decay, config.weight_decay)
    config.weight_decay = saved.weight_decay


def resumed_base_lrs(checkpoint: str | None) -> list[float] | None:
    """The peak lr of each param group the resumed run goes on with: the checkpoint scheduler's ``base_lrs``
    (the Trainer loads that state, so a changed ``--learning_rate`` is not used); None without one."""
    path = None if checkpoint is None else os.path.join(checkpoint, _SCHEDULER_FILE)
    if path is None or not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable here is the Trainer's to report when it loads it
        return None
    lrs = state.get("base_lrs") if isinstance(state, dict) else None
    return [float(lr) for lr in lrs] if isinstance(lrs, list) else None


def peak_lrs_going_on(scheduler: Any, resumed: list[float] | None, config: LPWDConfig,
                      should_log: bool) -> list[float] | None:
    """The peak lr per group the run trains with: the scheduler's, or a resumed checkpoint's where they
    differ (said in a warning, and the recorded base lr follows); None for a schedule without (plateau)."""
    base_lrs = getattr(scheduler, "base_lrs", None)
    if resumed is None or base_lrs is None or len(resumed) != len(base_lrs) or resumed == list(base_lrs):
        return base_lrs
    if should_log:
        logger.warning("LPWD: the resumed run goes on with the checkpoint's lr (peak %g), not "
                       "--learning_rate %g: the Trainer loads its scheduler's state. The layer table and the "
                       "recorded shrink use the checkpoint's.", max(resumed), max(base_lrs))
    recorded = config.base_optimizer_kwargs
    if isinstance(recorded, dict) and "lr" in recorded:
        recorded["lr"] = max(resumed)
    return resumed
