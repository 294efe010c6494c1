"""Every LPWD setting declared once: name, type, default, choices, help, validator, flag and model-card label.

The Trainer's arguments (:mod:`hf_lpwd.trainer.arguments`), the config's JSON keys (:mod:`hf_lpwd.config`),
the ``--lpwd_config`` merge rule, ``hf-lpwd inspect``'s options and the model card's rows are derived from
:data:`SETTINGS`; adding a setting is one :class:`Setting` here plus the code that acts on it.  Validation
runs once per entry point (:func:`check_settings`), with the names of that entry point (``--lpwd_cautious`` on
the command line, ``LPWDConfig.cautious`` in a file, ``cautious`` for a keyword), so a bad value reads the
same wherever it comes from.  This module imports nothing else of hf_lpwd (but the pattern parser, lazily).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TIMINGS: tuple[str, ...] = ("wd", "rwd", "pwd")
"""When the decay is applied: the ``mode`` of :class:`hf_lpwd.LPWD`."""

WEIGHT_DECAY_MODES: tuple[str, ...] = (*TIMINGS, "lpwd")
"""User-facing modes: a timing, or ``lpwd`` = the ``pwd`` timing × layer-wise λ."""

TIED_DEPTHS: tuple[str, ...] = ("input", "output")
"""Where a matrix shared by the input embedding and the output head sits: depth 0 or depth N+1."""

LR_COUPLINGS: tuple[str, ...] = ("coupled", "independent", "corrected")
"""How the per-step decay d_t follows the lr: η_t·λ, (η_t/η̄)·λ, (η_t²/η̄)·λ (η̄ the group's base lr)."""

CAUTIOUS_TIMINGS: tuple[str, ...] = ("wd",)
"""Timings cautious decay is defined for: the mask 1[u_t ⊙ θ_t ≥ 0] needs u_t when the decay is applied."""

CAUTIOUS_KERNELS: tuple[str, ...] = ("compiled", "eager")
"""How cautious decay on an AdamW/Adam base runs: one ``torch.compile``'d pass per tensor (the default; the
eager path where it does not apply), or the eager mask pass before the base's own step."""

DEFAULT_WEIGHT_DECAY = 0.01
"""λ when none is given (:class:`hf_lpwd.LPWD`, :class:`hf_lpwd.LPWDConfig`, the CLI); the Trainer's
``--weight_decay`` keeps transformers' own default."""

def validate_choice(value: Any, choices: tuple[str, ...], field_name: str) -> None:
    if value not in choices:
        raise ValueError(f"{field_name}={value!r} is not one of {list(choices)}")


def parse_bool(text: str) -> bool:
    """A command line's boolean, as ``HfArgumentParser`` reads it: true/false, yes/no, 1/0."""
    lowered = str(text).lower()
    if lowered in ("true", "yes", "1", "t", "y"):
        return True
    if lowered in ("false", "no", "0", "f", "n"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def validate_bool(value: Any, field_name: str) -> None:
    if not isinstance(value, bool):
        hint = ""
        if isinstance(value, str):
            hint = " (text, from quotes in a YAML or JSON file: write true or false without quotes)"
        raise ValueError(f"{field_name} must be true or false, got {value!r}{hint}")


def validate_weight_decay(value: Any, field_name: str = "weight_decay") -> float:
    """λ is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field_name} must be a number (it is λ), got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field_name}={value} must be a finite number >= 0 (it is λ)")
    return float(value)


def validate_layer_lr_decay(gamma: Any, field_name: str = "layer_lr_decay") -> None:
    """γ of layer-wise lr decay must be in (0, 1].

    γ ≤ 0 gives zero or sign-flipping learning rates; γ > 1 would give the embeddings the largest
    rate, the opposite of what discriminative fine-tuning is for.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma):
        raise ValueError(f"{field_name} must be a number in (0, 1], got {gamma!r}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(
            f"{field_name}={gamma:g} must be in (0, 1]: the lr at depth d is lr·γ^(N+1−d), so γ > 1 would "
            "train the embeddings fastest and γ <= 0 gives zero or negative rates (1.0 turns layer-wise lr "
            "decay off)"
        )


def validate_layer_pattern(pattern: Any, field_name: str = "layer_pattern") -> None:
    """A layer pattern is a regex with exactly one capture group: the block index."""
    if pattern is None or isinstance(pattern, re.Pattern) or callable(pattern):
        return
    if not isinstance(pattern, str):
        raise ValueError(f"{field_name} must be a regex string, got {type(pattern).__name__}")
    from .model.layers import compile_layer_pattern  # the one parser of patterns

    compile_layer_pattern(pattern, field_name)


def validate_decay_timescale(tau: Any, field_name: str = "decay_timescale") -> None:
    """τ, in epochs, is a finite number > 0 (or ``None``: λ is given directly)."""
    if tau is None:
        return
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(
            f"{field_name}={tau!r} must be a number of epochs > 0: the EMA timescale of the weights, "
            "τ = 1/(η̄·λ·steps per epoch)"
        )


def validate_cautious(cautious: bool, timing: str, field_name: str = "cautious") -> None:
    """Cautious decay masks with the sign of u_t ⊙ θ_t, so the decay must act when u_t exists.

    pwd decays before the forward pass, before u_t is computed; rwd decays θ_t − η_t·u_t, a weight
    the mask was not defined on.  Only the wd timing keeps the meaning of Chen et al.'s rule.
    """
    validate_bool(cautious, field_name)
    if cautious and timing not in CAUTIOUS_TIMINGS:
        why = ("pwd decays before the forward pass, before the update u_t the mask needs exists"
               if timing == "pwd" else "rwd decays θ_t − η_t·u_t, not the θ_t the mask compares u_t with")
        raise ValueError(
            f"{field_name}=true needs the wd timing (θ ← θ − η·u − d·1[u⊙θ ≥ 0]⊙θ); with timing {timing}: "
            f"{why}. Use --weight_decay_mode wd (add --lpwd_layerwise true for the layer-wise profile)"
        )


def check_decay_factor(decay: float, where: str, fix: str = "lower weight_decay or lr") -> None:
    """d_t, the per-step decay, must be finite, >= 0 and < 1 (else 1 − d_t <= 0 flips the weights' signs)."""
    if not math.isfinite(decay) or decay < 0:
        raise ValueError(f"{where}: the per-step decay is {decay}; it must be a finite number >= 0")
    if decay >= 1.0:
        raise ValueError(
            f"{where}: the per-step decay d = {decay:g} must stay below 1 (the factor 1 − d = "
            f"{1.0 - decay:g} would be <= 0 and flip the weights' signs); {fix}"
        )


def check_peak_decay(values: Mapping[str, Any], lr: float, label: Callable[[Setting], str] | None = None,
                     lr_label: str = "--learning_rate", rise: float = 1.0, rise_label: str = "") -> None:
    """The per-step decay at the run's highest lr must stay below 1: η̂·λ (coupled, corrected), (η̂/η̄)·λ
    (independent), with η̂ = η̄·``rise`` where the schedule lifts the lr above the peak η̄ (``rise_label``
    says how: a ``min_lr`` above ``--learning_rate``).

    The one rule behind the Trainer's refusal and ``hf-lpwd inspect``'s, in the words of the caller's flags
    (``label``: :func:`argument_label` by default).
    """
    label = label or argument_label
    lam, lam_label = float(values["weight_decay"]), label(SETTING["weight_decay"])
    coupling = SETTING["lr_coupling"]
    risen = f" × {rise:g} ({rise_label})" if rise > 1.0 else ""
    above = f", or keep the schedule's lr at or below {lr_label}" if rise > 1.0 else ""
    if values.get(coupling.name, coupling.default) == "independent":  # d = (η_t/η̄)·λ
        where = "d = λ at the peak lr" if rise <= 1.0 else "d = (η_t/η̄)·λ"
        check_decay_factor(rise * lam, f"{lam_label}={lam:g}{risen} with {label(coupling)} independent "
                           f"({where})", f"lower {lam_label}{above}")
    else:
        check_decay_factor(lr * rise * lam, f"{lr_label}={lr:g}{risen} × {lam_label}={lam:g}",
                           f"lower {lam_label} or {lr_label}{above}")


SCHEDULE_FREE_REASON = (
    "schedule-free optimizers keep two weight sequences (x and z) and the model holds a third, their "
    "interpolation y, switched by optimizer.train()/eval(), with their own decay rule; LPWD's timings act on "
    "one weight sequence"
)
"""Why LPWD refuses schedule-free optimizers, in the words of both of its refusals."""


# ------------------------------------------------------------------------------------------- the declarations
Check = Callable[[Any, str], Any]
"""A validator: ``check(value, label)`` raises ``ValueError`` naming ``label`` (the setting as the user wrote
it)."""


@dataclass(frozen=True)
class Setting:
    """One LPWD setting, declared once.

    ``name`` is the keyword and the config's JSON key; ``argument`` the ``TrainingArguments`` field
    (``--flag``), ``lpwd_<name>`` unless given; ``trainer_owned`` when transformers declares that field itself
    (``weight_decay``, whose default stays transformers' own).  ``kind`` is ``bool``, ``float`` or ``str``;
    ``optional`` admits ``None``.  ``card`` labels the model card's row (``None``: no row; ``card_unit``
    follows the value), ``in_config`` says whether the setting is shared in ``lpwd_config.json`` (a logging
    switch is not), ``optimizer_keyword`` whether :class:`hf_lpwd.LPWD` takes it.
    """

    name: str
    kind: type
    default: Any
    help: str
    optional: bool = False
    choices: tuple[str, ...] | None = None
    check: Check | None = None
    argument: str | None = None
    trainer_owned: bool = False
    card: str | None = None
    card_unit: str = ""
    in_config: bool = True
    optimizer_keyword: bool = False

    @property
    def flag(self) -> str:
        """The ``TrainingArguments`` field, i.e. the command line's ``--flag`` without the dashes."""
        return self.argument or f"lpwd_{self.name}"

    @property
    def annotation(self) -> Any:
        """The field's type, as ``HfArgumentParser`` reads it."""
        return self.kind | None if self.optional else self.kind


def _check_number(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label} must be a number, got {value!r}{text_number_hint(value)}")


def text_number_hint(value: Any) -> str:
    """Why a number arrives as text: quotes, or YAML 1.1 (PyYAML), which reads ``1e-2`` (no dot) as a
    string."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return (" (text: PyYAML reads 1e-2 without a dot, or any quoted number, as a string; write 1.0e-2, or "
            "0.01, without quotes)")


def _check_string(value: Any, label: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{label} must be a string, got {value!r}")


_KIND_CHECKS: dict[type, Check] = {bool: validate_bool, float: _check_number, str: _check_string}

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "mode", str, "lpwd", choices=WEIGHT_DECAY_MODES, argument="weight_decay_mode",
        card="weight decay mode",
        help="When the decay is applied. wd: AdamW's decoupled decay; rwd: real-time decay "
        "(1-lr*wd)(θ-lr*u); pwd: pre-weight decay before the forward pass; lpwd: pwd with λ growing with "
        "depth, λ*(d+1)/(N+2) (= pwd with --lpwd_layerwise true).",
    ),
    Setting(
        "weight_decay", float, DEFAULT_WEIGHT_DECAY, check=validate_weight_decay, argument="weight_decay",
        trainer_owned=True, card="λ (weight_decay)", optimizer_keyword=True,
        help="λ: the rate of the deepest level (the head) with the layer-wise profile, of every decayed "
        "parameter otherwise.",
    ),
    Setting(
        "layerwise", bool, None, optional=True, card="layer-wise λ profile",
        help="The λ profile, independent of the timing: true = layer-wise λ*(d+1)/(N+2), false = one λ for "
        "every decayed parameter. Unset: true for lpwd, false for wd/rwd/pwd.",
    ),
    Setting(
        "layer_lr_decay", float, 1.0, check=validate_layer_lr_decay, card="layer-wise lr decay γ",
        help="Layer-wise learning-rate decay γ in (0, 1]: the lr at depth d is lr*γ^(N+1-d) (head: full lr). "
        "1.0 = off. Any timing, any base.",
    ),
    Setting(
        "tied_depth", str, "input", choices=TIED_DEPTHS, card="tied embedding depth",
        help="Depth of a matrix tied between the input embedding and the output head: input (depth 0) or "
        "output (depth N+1, the head's λ and lr).",
    ),
    Setting(
        "layer_pattern", str, None, optional=True, check=validate_layer_pattern,
        card="layer pattern",
        help=r"Regex with one capture group for the block index (e.g. '\.layers\.(\d+)\.'), overriding the "
        "automatic block detection.",
    ),
    Setting(
        "decay_embeddings", bool, True, card="decay embeddings",
        help="lpwd: decay depth 0 (embeddings, stem) at λ/(N+2); False gives it 0.",
    ),
    Setting(
        "stochastic_rounding", bool, True, card="stochastic rounding", optimizer_keyword=True,
        help="On bf16/fp16 weights, write the whole step (update + decay) with one stochastic rounding "
        "(adamw_torch, adamw_torch_fused, sgd; other --optim: the decay only).",
    ),
    Setting(
        "lr_coupling", str, "coupled", choices=LR_COUPLINGS, card="lr coupling", optimizer_keyword=True,
        help="How the per-step decay d follows the lr: coupled d = lr_t*λ (AdamW); independent d = "
        "(lr_t/lr)*λ, not multiplied by the peak lr; corrected d = (lr_t²/lr)*λ (AdamC).",
    ),
    Setting(
        "cautious", bool, False, card="cautious", optimizer_keyword=True,
        help="Cautious weight decay: decay only the coordinates where the update and the weight have the "
        "same sign (wd timing; adamw/sgd bases). On AdamW it runs as one torch.compile'd pass per tensor, "
        "compiled at the first step.",
    ),
    Setting(
        "spd", bool, False, card="selective projection decay (SPD)", optimizer_keyword=True,
        help="Selective Projection Decay (Tian et al. 2024): after the base step, a tensor whose gradient "
        "opposes its progress from the target loses λ·r of its deviation, r the step's new share of it; "
        "λ = --weight_decay is a fraction in [0, 1], not multiplied by the lr. rwd timing only; "
        "--lpwd_decay_target init is the paper's, zero its LoRA form. Not with --lpwd_cautious.",
    ),
    Setting(
        "decay_target", str, "zero", choices=("zero", "init"), card="decay target", optimizer_keyword=True,
        help="What the decay pulls the weights toward: zero (weight decay) or init, the weights when the "
        "optimizer is built (the pretrained ones; L2-SP's target): wd θ − lr*u − d(θ − θ₀). Parameters the "
        "checkpoint lacked (a new head) decay toward zero. θ₀ costs one copy of the decayed weights.",
    ),
    Setting(
        "decay_timescale", float, None, optional=True, check=validate_decay_timescale,
        card="decay timescale τ", card_unit=" epochs (λ above is what it gave)",
        help="Set λ from the weights' EMA timescale τ in epochs: λ = 1/(lr*τ*steps per epoch) (independent: "
        "1/(τ*steps per epoch)). Like --weight_decay it sets λ, the head's rate under the layer-wise "
        "profile; give one or the other.",
    ),
    Setting(
        "log_distance_to_init", bool, False, in_config=False,
        help="Also log ‖θ − θ₀‖₂ per depth (θ₀: the weights when the optimizer is built; after a resume, "
        "the model's before the checkpoint is loaded) with the weight norms; keeps one copy of the "
        "trainable weights (not under DeepSpeed ZeRO-3).",
    ),
    Setting(
        "log_layer_norms", bool, True, in_config=False,
        help="Log the weight norm of each depth with the training logs (and at the first and last step).",
    ),
)
"""Every setting, in the order of the Trainer's ``--help`` and of the model card."""

SETTING: dict[str, Setting] = {s.name: s for s in SETTINGS}
CONFIG_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.in_config)

DEFAULTS: dict[str, Any] = {s.name: s.default for s in SETTINGS}
"""Defaults of the settings.  A 0.1.0 / 0.2.0 config without the newer keys means these: coupled, not
cautious, no timescale."""


# --------------------------------------------------------------------------------------------- labels
def argument_label(setting: Setting) -> str:
    """How the command line names a setting: ``--lpwd_cautious``."""
    return f"--{setting.flag}"


def config_label(setting: Setting) -> str:
    """How ``lpwd_config.json`` names it: ``LPWDConfig.cautious``."""
    return f"LPWDConfig.{setting.name}"


def keyword_label(setting: Setting) -> str:
    """How Python names it: ``cautious``."""
    return setting.name


# --------------------------------------------------------------------------------------------- validation
def timing_of(mode: str) -> str:
    """The timing of a mode: ``lpwd`` is the ``pwd`` timing with the layer-wise profile."""
    return "pwd" if mode == "lpwd" else mode


def check_value(setting: Setting, value: Any, label: str) -> None:
    """One value against its declaration: type, choices, validator."""
    if value is None and setting.optional:
        return
    if setting.choices is not None:
        validate_choice(value, setting.choices, label)
    else:
        _KIND_CHECKS[setting.kind](value, label)
    if setting.check is not None:
        setting.check(value, label)


def check_settings(values: Mapping[str, Any], label: Callable[[Setting], str] = keyword_label) -> None:
    """Validate ``{name: value}`` (any subset of :data:`SETTINGS`) and the rules that join settings.

    ``label`` names a setting in the words of the entry point (:func:`argument_label`, :func:`config_label`,
    :func:`keyword_label`).  Raises ``ValueError`` naming the first bad setting.
    """
    for name, value in values.items():
        check_value(SETTING[name], value, label(SETTING[name]))
    mode = values.get("mode", DEFAULTS["mode"])
    if mode == "lpwd" and values.get("layerwise") is False:
        mode_label, layerwise_label = label(SETTING["mode"]), label(SETTING["layerwise"])
        raise ValueError(
            f"{mode_label}='lpwd' is pwd with the layer-wise profile, so {layerwise_label}=False contradicts "
            f"it; use {mode_label}='pwd' for pre-weight decay with a uniform λ"
        )
    validate_mask(values, label)
    validate_cautious(values.get("cautious", False), timing_of(mode), label(SETTING["cautious"]))


def validate_mask(values: Mapping[str, Any], label: Callable[[Setting], str] = keyword_label) -> None:
    """The decay's mask is one of none, cautious (per coordinate), SPD (per tensor): not two at once."""
    if values.get("cautious", False) and values.get("spd", False):
        raise ValueError(
            f"{label(SETTING['spd'])}=true and {label(SETTING['cautious'])}=true: SPD and cautious decay are "
            "two values of the decay's mask (SPD selects whole tensors, cautious decay coordinates); turn "
            "one of them off"
        )


def resolve_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting, defaults filled in, and what an unset value means (``layerwise``: the mode's
    profile)."""
    resolved = {**DEFAULTS, **values}
    if resolved["layerwise"] is None:
        resolved["layerwise"] = resolved["mode"] == "lpwd"
    return resolved


def optimizer_keywords(values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings :class:`hf_lpwd.LPWD` takes as keywords, and its ``mode`` (the timing)."""
    return {"mode": timing_of(values["mode"]),
            **{s.name: values[s.name] for s in SETTINGS if s.optimizer_keyword}}


def needs_depths(values: Mapping[str, Any]) -> bool:
    """Whether the param groups depend on each parameter's depth (a layer-wise λ or lr profile)."""
    return bool(values["layerwise"]) or values["layer_lr_decay"] != 1.0


_TIMING_WORDS = {
    "wd": "decoupled decay, as AdamW: θ ← θ − ηu − dθ",
    "rwd": "real-time decay: θ ← (1 − d)(θ − ηu)",
    "pwd": "pre-weight decay: θ ← (1 − d)θ before each forward pass",
}
# The same timings toward the pretrained weights θ₀ (decay target init).
_TIMING_WORDS_INIT = {
    "wd": "decoupled decay toward θ₀, as AdamW's: θ ← θ − ηu − d(θ − θ₀)",
    "rwd": "real-time decay toward θ₀: θ ← θ₀ + (1 − d)(θ − ηu − θ₀)",
    "pwd": "pre-weight decay toward θ₀: θ ← θ₀ + (1 − d)(θ − θ₀) before each forward pass",
}
_COUPLING_WORDS = {
    "coupled": "d = η_t·λ",
    "independent": "d = (η_t/η̄)·λ, independent of the peak lr",
    "corrected": "d = (η_t²/η̄)·λ, lr²-corrected",
}


def rule_in_words(values: Mapping[str, Any]) -> str:
    """The decay rule of resolved settings, for people: timing (and mask) toward the target, λ profile, lr
    coupling. Under SPD the base steps without decay and only the projection acts."""
    toward_init = values.get("decay_target") == "init"
    masked = (f", decayed only where u⊙{'(θ − θ₀)' if toward_init else 'θ'} ≥ 0 (cautious)"
              if values["cautious"] else "")
    timing = (_TIMING_WORDS_INIT if toward_init else _TIMING_WORDS)[timing_of(values["mode"])]
    if values.get("spd"):
        timing = f"{timing_of(values['mode'])} (the base steps without decay)"
        toward = "θ₀" if values.get("decay_target") == "init" else "0"
        masked = (f", selective projection decay (SPD) toward {toward}: a tensor whose gradient opposes its "
                  f"progress θ − {toward} loses λ·r of its deviation after the step, r the step's new share "
                  "of it, λ a fraction in [0, 1] not multiplied by the lr")
    profile = "layer-wise, λ·(d+1)/(N+2) at depth d" if values["layerwise"] else "uniform"
    coupling = ("d = λ·r, not lr-coupled (SPD)" if values.get("spd")
                else _COUPLING_WORDS[values["lr_coupling"]])
    return f"timing {timing}{masked}; λ profile {profile}; {coupling}"


def describe(values: Mapping[str, Any]) -> str:
    """One line for the logs: mode, λ, and every other setting that differs from its default."""
    changed = [f"{s.name}={values[s.name]}" for s in SETTINGS
               if s.in_config and s.name not in ("mode", "weight_decay", "layerwise")
               and values.get(s.name, s.default) != s.default]
    profile = "layer-wise" if values["layerwise"] else "uniform"
    return (f"mode={values['mode']} (timing {timing_of(values['mode'])}, {profile} λ) "
            f"λ={values['weight_decay']:g}" + (" " + " ".join(changed) if changed else ""))


def card_rows(values: Mapping[str, Any]) -> Iterable[tuple[Setting, Any]]:
    """``(setting, value)`` of the model card's rows: every carded setting that is set."""
    for setting in SETTINGS:
        value = values.get(setting.name)
        if setting.card is not None and value is not None:
            yield setting, value
