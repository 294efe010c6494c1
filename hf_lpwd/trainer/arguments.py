"""``LPWDTrainingArguments``: ``TrainingArguments`` plus one field per LPWD setting, derived from the
registry.

Every field but ``lpwd_config`` comes from :data:`hf_lpwd.settings.SETTINGS` (name, type, default, choices,
help); this module adds the rules that only the command line has: merging a saved ``lpwd_config.json`` under
the flags a user gave, and refusing ``--lpwd_decay_timescale`` together with ``--weight_decay`` (both set λ).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.training_args import OptimizerNames
from transformers.utils import logging as hf_logging

from ..config import LPWDConfig, RunRecord
from ..optim.spd import check_spd
from ..settings import CONFIG_SETTINGS, SETTING, SETTINGS, argument_label, check_settings, text_number_hint

__all__ = ["LPWDTrainingArguments", "lpwd_config_from_args", "settings_of", "checked_settings_of",
           "check_spd_arguments", "run_config", "refusal_key"]

logger = hf_logging.get_logger("transformers.hf_lpwd")


def _with_setting_arguments(cls: type) -> type:
    """One dataclass field per setting transformers does not declare itself, ahead of ``cls``'s own."""
    own = dict(cls.__dict__.get("__annotations__", {}))
    added: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.trainer_owned:
            continue
        metadata: dict[str, Any] = {"help": setting.help}
        if setting.choices is not None:
            metadata["choices"] = list(setting.choices)
        setattr(cls, setting.flag, field(default=setting.default, metadata=metadata))
        added[setting.flag] = setting.annotation
    cls.__annotations__ = {**added, **own}
    return cls


def settings_of(args: Any) -> dict[str, Any]:
    """``{setting: value}`` of any ``TrainingArguments`` (plain ones, e.g. TRL's ``SFTConfig``, get the
    defaults).

    Read when the optimizer is built, not frozen before: ``Trainer.hyperparameter_search`` sets each trial's
    values on the arguments.  Integers of float settings (a search space's ``suggest_int``) become floats.
    """
    values = {}
    for setting in SETTINGS:
        value = getattr(args, setting.flag, setting.default)
        if setting.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[setting.name] = value
    return values


def _check_lambda_given_once(values: dict[str, Any], weight_decay_default: float) -> None:
    tau, lam = values["decay_timescale"], values["weight_decay"]
    if tau is not None and lam != weight_decay_default:
        raise ValueError(
            f"{argument_label(SETTING['decay_timescale'])}={tau:g} and --weight_decay={lam:g} both set λ: "
            "give one of them (the timescale chooses λ = 1/(lr·τ·steps per epoch))"
        )


def checked_settings_of(args: Any) -> dict[str, Any]:
    """:func:`settings_of`, validated in the command line's words (``--weight_decay``, ``--lpwd_...``)."""
    values = settings_of(args)
    check_settings(values, argument_label)
    _check_lambda_given_once(values, _TRAINER_WEIGHT_DECAY_DEFAULT)
    check_spd_arguments(values)
    return values


def check_spd_arguments(values: dict[str, Any]) -> None:
    """SPD's refusals (:func:`hf_lpwd.optim.spd.check_spd`, the one home of them) in the command line's
    words."""
    if values.get("spd"):
        check_spd(values, lambda name: argument_label(SETTING[name]))


def lpwd_config_from_args(args: Any, values: dict[str, Any] | None = None) -> LPWDConfig:
    """The LPWD settings of any ``TrainingArguments`` as a config (``values``: already read and checked)."""
    values = settings_of(args) if values is None else values
    shared = {s.name: values[s.name] for s in CONFIG_SETTINGS}
    return LPWDConfig.from_settings(shared, base_optimizer=str(getattr(args.optim, "value", args.optim)))


def run_config(args: Any, given: LPWDConfig | None, warn: bool = False) -> LPWDConfig:
    """The settings of a run, read now: from ``given`` (``LPWDMixin(lpwd_config=...)``: its λ wins, the base
    is the one ``args.optim`` builds; ``warn`` says so) or from the arguments, checked in the command line's
    words."""
    optim = str(getattr(args.optim, "value", args.optim))
    if given is None:
        return lpwd_config_from_args(args, checked_settings_of(args))
    if warn and float(args.weight_decay) != given.weight_decay:
        logger.warning("LPWDMixin: lpwd_config.weight_decay=%g is the λ used; args.weight_decay=%g is "
                       "ignored (pass the λ you want in LPWDConfig, or build the config from the "
                       "arguments)",
                       given.weight_decay, float(args.weight_decay))
    if warn and given.base_optimizer not in (None, optim):
        logger.warning("LPWDMixin: lpwd_config.base_optimizer=%s, but args.optim=%s builds the base "
                       "optimizer; recording %s", given.base_optimizer, optim, optim)
    config = dataclasses.replace(given, base_optimizer=optim)
    config.record = RunRecord()  # what this run's build measures, never a loaded config's (another run)
    return config


def refusal_key(args: Any) -> tuple:
    """What :func:`hf_lpwd.trainer.refusals.check_training_arguments` reads: checked again only when it
    changed."""
    return tuple(settings_of(args).items()), args.learning_rate, str(args.optim), args.optim_args


_TRAINER_WEIGHT_DECAY_DEFAULT = next(f.default for f in dataclasses.fields(TrainingArguments)
                                     if f.name == "weight_decay")


def _refuse_numbers_as_text(args: TrainingArguments) -> None:
    """A float argument given as text (``learning_rate: 2e-5`` in a YAML file: PyYAML reads it as a string)
    reaches the Trainer unconverted and fails mid-run, after the output folder; refused here, naming it."""
    for spec in dataclasses.fields(TrainingArguments):
        value = getattr(args, spec.name, None)
        if "float" in str(spec.type) and isinstance(value, str):
            raise ValueError(f"--{spec.name} must be a number, got {value!r}{text_number_hint(value)}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _warn_defaults_replaced(cls: type, other: type) -> None:
    """Warn that ``cls`` (LPWD's arguments listed before ``other``) keeps transformers' defaults where
    ``other`` has its own."""
    import warnings

    ours = TrainingArguments.__dataclass_fields__
    theirs = getattr(other, "__dataclass_fields__", {})
    replaced = [f"{name}={_field_default(ours[name])!r} (its {_field_default(f)!r})"
                for name, f in theirs.items()
                if name in ours and _field_default(f) != _field_default(ours[name])]
    if replaced:
        warnings.warn(
            f"{cls.__name__}(LPWDTrainingArguments, {other.__name__}) takes TrainingArguments' defaults over "
            f"{other.__name__}'s own: {', '.join(replaced[:6])}{', ...' if len(replaced) > 6 else ''}; list "
            f"{other.__name__} first: class {cls.__name__}({other.__name__}, LPWDTrainingArguments)",
            UserWarning, stacklevel=3)


@dataclass
@_with_setting_arguments
class LPWDTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus LPWD's settings (:data:`hf_lpwd.settings.SETTINGS`); λ is the usual
    ``--weight_decay``.

    With ``--lpwd_config PATH_OR_REPO_ID`` the settings start from a saved ``lpwd_config.json``; any LPWD flag
    (or ``--weight_decay`` / ``--optim``) given with a value other than its default overrides the file.
    """

    lpwd_config: str | None = field(
        default=None,
        metadata={"help": "Start from a saved lpwd_config.json (a folder, a file or a Hub repo id). A flag "
                  "given with a value other than its default overrides the file; one left at (or given "
                  "with) its default value takes the file's."},
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A config class that is both (``class C(LPWDTrainingArguments, SFTConfig)``) takes its fields'
        defaults from the first base: every ``TrainingArguments`` field of this class, at transformers'
        defaults, would replace the other config's own (TRL's lr 2e-5, DPO's 1e-6, ``bf16``): said here."""
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        later = [base for base in mro[mro.index(LPWDTrainingArguments) + 1:]
                 if issubclass(base, TrainingArguments) and base not in LPWDTrainingArguments.__mro__]
        if later:
            _warn_defaults_replaced(cls, later[0])

    def __post_init__(self) -> None:
        _refuse_numbers_as_text(self)
        taken: dict[str, Any] = {}
        if self.lpwd_config:
            try:
                taken = self._merge_saved_config(LPWDConfig.from_pretrained(self.lpwd_config))
            except ValueError as exc:
                raise ValueError(f"{exc} (read for --lpwd_config {self.lpwd_config}: fix the file)") from None
        try:
            checked_settings_of(self)
        except ValueError as exc:
            if not taken:
                raise
            values = ", ".join(f"--{name} {value}" for name, value in taken.items())
            raise ValueError(f"{exc} (from --lpwd_config {self.lpwd_config}: {values}; a flag left at, "
                             "or given with, its default value takes the file's value here: edit the file, "
                             "or run a recipe, where a flag given explicitly wins)") from None
        super().__post_init__()

    @staticmethod
    def saved_config_values(saved: LPWDConfig) -> dict[str, Any]:
        """The argument values a saved config stands for: ``{field name: value}``.

        Every shared setting maps to its flag (``mode`` → ``weight_decay_mode``), ``base_optimizer`` to
        ``optim``.  ``layerwise`` is carried only where it was a choice (it differs from its mode's default):
        a config saved as ``lpwd`` then run with ``--weight_decay_mode pwd`` is plain pwd, as the mode says,
        and one saved as ``wd`` with ``--lpwd_layerwise true`` stays layer-wise whatever mode is given.  With
        a timescale, λ comes from τ in the new run (its steps per epoch): the saved λ was the old run's.
        """
        values: dict[str, Any] = {s.flag: getattr(saved, s.name) for s in CONFIG_SETTINGS}
        layerwise = SETTING["layerwise"].flag
        if values[layerwise] == (saved.mode == "lpwd"):
            values[layerwise] = None
        if saved.decay_timescale is not None:
            values.pop(SETTING["weight_decay"].flag)
        if saved.base_optimizer and "." in saved.base_optimizer:  # a class given as optimizer_cls_and_kwargs
            logger.warning("the saved config's base optimizer is %s, given to its Trainer as "
                           "optimizer_cls_and_kwargs (no --optim builds it): pass optimizer_cls_and_kwargs="
                           "(%s, %s) to the Trainer yourself; --optim is left as it is", saved.base_optimizer,
                           saved.base_optimizer.rpartition(".")[2], saved.base_optimizer_kwargs)
        elif saved.base_optimizer:
            if saved.base_optimizer not in {name.value for name in OptimizerNames}:
                raise ValueError(
                    f"base_optimizer={saved.base_optimizer!r} is not an --optim value of this transformers "
                    f"(one of {[name.value for name in OptimizerNames]}); fix the file's base_optimizer"
                )
            values["optim"] = saved.base_optimizer
        return values

    @classmethod
    def saved_config_overrides(cls, saved: LPWDConfig, explicit: Collection[str]) -> dict[str, Any]:
        """What ``--lpwd_config`` sets: every value of :meth:`saved_config_values` whose argument is not in
        ``explicit`` (the arguments the user set).  The one rule of merging a saved config, for this class
        (explicit = differs from its default) and for scripts that know which flags were given (the
        recipes). λ and the timescale count as one: giving either replaces the file's."""
        values = cls.saved_config_values(saved)
        # λ and the timescale are two ways to give one number: the one the user gives replaces the file's
        rate_fields = (SETTING["weight_decay"].flag, SETTING["decay_timescale"].flag)
        if any(name in explicit for name in rate_fields):
            values = {name: value for name, value in values.items() if name not in rate_fields}
        return {name: value for name, value in values.items() if name not in explicit}

    def _merge_saved_config(self, saved: LPWDConfig) -> dict[str, Any]:
        """Fields still at their default take the saved value; the values taken."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        explicit = {name for name in defaults
                    if getattr(self, name) != defaults[name]
                    and str(getattr(self, name)) != str(defaults[name])}
        taken = {name: value for name, value in self.saved_config_overrides(saved, explicit).items()
                 if value != getattr(self, name)}
        for name, value in taken.items():
            setattr(self, name, value)
        return taken

    def to_lpwd_config(self) -> LPWDConfig:
        return lpwd_config_from_args(self)
