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

from transformers.trainer_utils import get_last_checkpoint

from ..config import LPWDConfig
from ..names import LPWD_CONFIG_NAME
from ..settings import CONFIG_SETTINGS, SETTING, argument_label, config_label, resolve_settings, timing_of

__all__ = ["checkpoint_to_resume", "check_resume"]

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
    if saved.mode != now.mode and before["mode"] == after["mode"]:
        before["mode"], after["mode"] = saved.mode, now.mode  # lpwd vs pwd: say what the user wrote
    return [(name, before[name], after[name]) for name in names if before[name] != after[name]]


def _has_optimizer_state(checkpoint: str) -> bool:
    """Whether the Trainer saved an optimizer there (``optimizer.pt`` / ``.bin`` / sharded, or DeepSpeed's
    ``global_step*``); ``--save_only_model`` saves none."""
    return bool(glob.glob(os.path.join(checkpoint, "optimizer*"))
                or glob.glob(os.path.join(checkpoint, "global_step*")))


def check_resume(checkpoint: str, now: LPWDConfig, from_arguments: bool = True) -> None:
    """Refuse, before anything is loaded, a resume whose LPWD settings differ from the checkpoint's, and a
    checkpoint without optimizer state where θ₀ or pwd's pending decay would be lost.

    ``from_arguments``: name the settings as command-line flags (else as ``LPWDConfig`` fields).
    """
    if not os.path.isdir(checkpoint):
        return  # the Trainer's own error says so
    label = argument_label if from_arguments else config_label
    config_file = os.path.join(checkpoint, LPWD_CONFIG_NAME)
    if os.path.isfile(config_file):
        changed = _differences(LPWDConfig.from_json_file(config_file), now)
        if changed:
            listed = ", ".join(f"{label(SETTING[name])} {after!r} (checkpoint: {before!r})"
                               for name, before, after in changed)
            raise ValueError(
                f"resuming {checkpoint} with other LPWD settings than it was trained with: {listed}. A "
                "resumed run continues the checkpoint's optimizer, whose param groups keep the checkpoint's "
                "settings, so these would be ignored. Resume with the checkpoint's values (they are in its "
                f"{LPWD_CONFIG_NAME}), or start a new run from its weights (the checkpoint folder as the "
                "model) to change them."
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
