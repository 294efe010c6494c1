"""``LPWDConfig``: the decay settings a model was trained with, as JSON beside its weights.

Modelled on transformers' ``GenerationConfig``: a small object with ``save_pretrained`` /
``from_pretrained`` / ``push_to_hub`` and one JSON file (``lpwd_config.json``) in the model folder or
Hub repo.  Safety first: JSON only (never pickle, never remote code), and loading is strict: an
unknown key, a wrong type or an out-of-range value is an error that names the key.  A file written
by a newer hf_lpwd with keys this version does not know fails with a message saying to upgrade,
rather than silently training with settings the user did not ask for.

The config's fields are the settings of :data:`hf_lpwd.settings.SETTINGS` (declared there once) plus the base
optimizer; what one run measured (blocks, λ per depth, shrink) is a :class:`RunRecord` held beside the
settings (``config.record``) and written into the same file under the same keys as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import InitVar, dataclass, field
from typing import Any

from .names import LPWD_CONFIG_NAME, RECORD_DEPTH_SHRINK_KEY, RECORD_SHRINK_KEY
from .optim.spd import check_spd
from .settings import (
    CONFIG_SETTINGS,
    SETTING,
    TIED_DEPTHS,
    WEIGHT_DECAY_MODES,
    check_settings,
    config_label,
    needs_depths,
    resolve_settings,
    timing_of,
    validate_layer_lr_decay,
    validate_layer_pattern,
)
from .version import __version__

__all__ = ["LPWD_CONFIG_NAME", "LPWDConfig", "RunRecord", "TIED_DEPTHS", "WEIGHT_DECAY_MODES",
           "validate_layer_lr_decay", "validate_layer_pattern"]

RECORD_KEYS = ("num_blocks", "depth_weight_decay", RECORD_DEPTH_SHRINK_KEY, RECORD_SHRINK_KEY)
"""The keys of :class:`RunRecord` in ``lpwd_config.json``."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


@dataclass
class RunRecord:
    """What one run measured, written beside the settings so a reader sees the decay it got.

    Args:
        num_blocks: N, the number of blocks found.
        depth_weight_decay: λ per depth (layer-wise profile), keys are depths as strings.
        depth_shrink: S_d = Σ_t d_t per decayed depth over the whole run, the log-shrink of a weight that no
            gradient moves.
        shrink: the run's largest S over its decayed parameters (any profile): what ``hf-lpwd compare`` plots
            the metric against.
    """

    num_blocks: int | None = None
    depth_weight_decay: dict[str, float] | None = None
    depth_shrink: dict[str, float] | None = None
    shrink: float | None = None

    def validate(self, prefix: str = "LPWDConfig") -> None:
        """Raise ``ValueError`` naming the first bad key."""
        if self.num_blocks is not None and (
            isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 0
        ):
            raise ValueError(f"{prefix}.num_blocks must be an integer >= 0, got {self.num_blocks!r}")
        for name, what in (("depth_weight_decay", "λ"), ("depth_shrink", "S")):
            per_depth = getattr(self, name)
            if per_depth is None:
                continue
            if not isinstance(per_depth, dict):
                raise ValueError(f"{prefix}.{name} must be a JSON object {{depth: {what}}}")
            for depth, value in per_depth.items():
                if not str(depth).isdigit() or not _finite_non_negative(value):
                    raise ValueError(f"{prefix}.{name}[{depth!r}]={value!r}: keys are depths, "
                                     f"values {what} >= 0 (finite)")
        if self.shrink is not None and not _finite_non_negative(self.shrink):
            raise ValueError(f"{prefix}.shrink must be a finite number >= 0, got {self.shrink!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _finite_non_negative(value: Any) -> bool:
    """A recorded λ or S: a JSON number, finite (JSON has no NaN or infinity to write it back), >= 0."""
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and value >= 0)


def _with_setting_fields(cls: type) -> type:
    """Give ``cls`` one field per shared setting (declared in :mod:`hf_lpwd.settings`), before its own
    fields."""
    own = dict(cls.__dict__.get("__annotations__", {}))
    for setting in CONFIG_SETTINGS:
        # None, bools, numbers and strings: safe as class defaults
        setattr(cls, setting.name, setting.default)
    cls.__annotations__ = {**{s.name: s.annotation for s in CONFIG_SETTINGS}, **own}
    return cls


@dataclass
@_with_setting_fields
class LPWDConfig:
    """Everything needed to rebuild LPWD's decay for a model.

    One field per shared setting of :data:`hf_lpwd.settings.SETTINGS` (name, type, default and help are
    declared there), plus:

    Args:
        base_optimizer: the base optimizer's name (the Trainer's ``--optim``, e.g. ``adamw_torch_fused``).
        base_optimizer_kwargs: its JSON-able keyword arguments (betas, eps, momentum, ...).
        record: what one run measured (:class:`RunRecord`); ``num_blocks``, ``depth_weight_decay``,
            ``depth_shrink`` and ``shrink`` are accepted as keywords and read as attributes, as in 0.3.0.
        lpwd_version: the hf_lpwd version that wrote the config.

    Two independent axes: *when* the decay is applied (the timing: ``wd``, ``rwd`` or ``pwd``) and *how λ
    varies with depth* (the profile).  ``mode`` names the timing, ``layerwise`` the profile; ``lpwd`` is the
    paper's method, ``pwd`` × layer-wise, and an unset ``layerwise`` follows the mode (true for ``lpwd``
    only), so a config written by hf_lpwd 0.1.0 (which has no ``layerwise`` key) means what it meant.
    """

    base_optimizer: str | None = None
    base_optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    record: RunRecord = field(default_factory=RunRecord)
    lpwd_version: str = __version__
    num_blocks: InitVar[int | None] = None
    depth_weight_decay: InitVar[dict[str, float] | None] = None
    depth_shrink: InitVar[dict[str, float] | None] = None
    shrink: InitVar[float | None] = None

    def __post_init__(self, num_blocks: Any, depth_weight_decay: Any, depth_shrink: Any, shrink: Any) -> None:
        measured = {"num_blocks": num_blocks, "depth_weight_decay": depth_weight_decay,
                    "depth_shrink": depth_shrink, "shrink": shrink}
        given = {key: value for key, value in measured.items()
                 if value is not None and not isinstance(value, property)}
        self.record = dataclasses.replace(self.record, **given)  # never shared between two configs
        self.validate()
        self.layerwise = resolve_settings({"mode": self.mode, "layerwise": self.layerwise})["layerwise"]

    @classmethod
    def from_settings(cls, values: dict[str, Any], **other: Any) -> LPWDConfig:
        """A config from settings an entry point has validated already (in its own words): no second check."""
        config = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            object.__setattr__(config, f.name, other.get(f.name, values.get(f.name, default)))
        config.layerwise = resolve_settings(config.settings())["layerwise"]
        return config

    # ------------------------------------------------------------------ derived
    def settings(self) -> dict[str, Any]:
        """``{name: value}`` of the shared settings."""
        return {s.name: getattr(self, s.name) for s in CONFIG_SETTINGS}

    @property
    def timing(self) -> str:
        """When the decay is applied, the :class:`hf_lpwd.LPWD` ``mode``: ``lpwd`` is the ``pwd`` timing."""
        return timing_of(self.mode)

    @property
    def optimizer_mode(self) -> str:
        """Alias of :attr:`timing` (hf_lpwd 0.1.0's name)."""
        return self.timing

    @property
    def needs_depths(self) -> bool:
        """Whether the param groups depend on the depth of each parameter."""
        return needs_depths(resolve_settings(self.settings()))

    def param_groups(
        self, model: Any, decay_names: Any = None, depths: tuple[dict[str, int], int] | None = None
    ) -> list[dict[str, Any]]:
        """The optimizer param groups these settings give for ``model``
        (:func:`hf_lpwd.lpwd_param_groups`)."""
        from .model.groups import param_groups_for_settings

        return param_groups_for_settings(model, resolve_settings(self.settings()), decay_names, depths)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        check_settings(self.settings(), config_label)
        if self.spd:
            check_spd(self.settings(), lambda name: config_label(SETTING[name]))
        if self.base_optimizer is not None and not isinstance(self.base_optimizer, str):
            raise ValueError(f"LPWDConfig.base_optimizer must be a string, got {self.base_optimizer!r}")
        if not isinstance(self.base_optimizer_kwargs, dict):
            raise ValueError("LPWDConfig.base_optimizer_kwargs must be a JSON object")
        try:
            json.dumps(self.base_optimizer_kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"LPWDConfig.base_optimizer_kwargs must hold only JSON values ({exc})") from None
        if not isinstance(self.record, RunRecord):
            raise ValueError("LPWDConfig.record must be a RunRecord")
        self.record.validate()
        if not isinstance(self.lpwd_version, str):
            raise ValueError("LPWDConfig.lpwd_version must be a string")

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``lpwd_config.json``: the settings, the base optimizer, the run record, the
        version."""
        return {**self.settings(), "base_optimizer": self.base_optimizer,
                "base_optimizer_kwargs": json.loads(json.dumps(self.base_optimizer_kwargs)),
                **self.record.to_dict(), "lpwd_version": self.lpwd_version}

    def to_json_string(self) -> str:
        """Byte-stable JSON: sorted keys, fixed indent, trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write atomically: a crash never leaves a half-written config behind."""
        text = self.to_json_string()
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> LPWDConfig:
        if not isinstance(config_dict, dict):
            raise ValueError(f"an LPWD config must be a JSON object, got {type(config_dict).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.name != "record"} | set(RECORD_KEYS)
        data = {**config_dict, **overrides}
        unknown = sorted(set(data) - known)
        if unknown:
            written_by = str(data.get("lpwd_version", "?"))
            if written_by != "?" and _version_tuple(written_by) > _version_tuple(__version__):
                raise ValueError(
                    f"this LPWD config was written by hf_lpwd {written_by}, newer than the installed "
                    f"{__version__}, and has keys this version does not know: {unknown}. Upgrade hf_lpwd "
                    "(pip install -U hf_lpwd)."
                )
            raise ValueError(f"unknown LPWD config key(s) {unknown}; valid keys are {sorted(known)}")
        if "base_optimizer_kwargs" in data and isinstance(data["base_optimizer_kwargs"], dict):
            data["base_optimizer_kwargs"] = dict(data["base_optimizer_kwargs"])
        for key in (*(s.name for s in CONFIG_SETTINGS if s.kind is float), "shrink"):
            if isinstance(data.get(key), int) and not isinstance(data.get(key), bool):
                data[key] = float(data[key])
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> LPWDConfig:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); LPWD configs are JSON only") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:  # a hand-edited value: say which file holds it
            raise ValueError(f"{path}: {exc}") from None

    # ------------------------------------------------------------------ folders and the Hub
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False,
                        **kwargs: Any) -> None:
        """Write ``lpwd_config.json`` into ``save_directory`` (and push it when ``push_to_hub``); a model card
        already there with an LPWD section gets it rewritten to match (no card or section is created)."""
        from .card import add_card_section

        self.validate()
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory} is a file; pass a directory")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, LPWD_CONFIG_NAME))
        add_card_section(save_directory, self, replace_only=True)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            self.push_to_hub(repo_id, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
    ) -> LPWDConfig:
        """Read ``lpwd_config.json`` from a folder, a JSON file, or a Hub repo id.

        A name that is no local folder or file is tried as a Hub repo id; if that fails too the error says
        both (a mistyped ``run1/final`` would otherwise read as a connection problem).
        """
        path = os.path.expanduser(os.fspath(pretrained_name_or_path))
        if os.path.isdir(path):
            file = os.path.join(path, LPWD_CONFIG_NAME)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{path} has no {LPWD_CONFIG_NAME}; "
                                        "was the model trained with hf_lpwd?")
            return cls.from_json_file(file)
        if os.path.isfile(path):
            return cls.from_json_file(path)
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise FileNotFoundError(f"no such file or folder: {path}")
        from huggingface_hub import hf_hub_download

        try:
            file = hf_hub_download(
                repo_id=path,
                filename=LPWD_CONFIG_NAME,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
        except (OSError, ValueError) as exc:  # huggingface_hub's errors: not found, offline, bad id
            raise FileNotFoundError(
                f"{path}: no such local folder or file (from {os.getcwd()}), and as a Hub repo id: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        return cls.from_json_file(file)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload LPWD config",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Upload ``lpwd_config.json`` to ``repo_id`` (created if missing), next to the model's files."""
        from huggingface_hub import HfApi

        self.validate()
        api = HfApi(library_name="hf_lpwd", library_version=__version__, token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_file(
            path_or_fileobj=self.to_json_string().encode("utf-8"),
            path_in_repo=LPWD_CONFIG_NAME,
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )

    # ------------------------------------------------------------------ model card
    def model_card_section(self) -> str:
        """A short Markdown section for the model card (:func:`hf_lpwd.card.model_card_section`)."""
        from .card import model_card_section

        return model_card_section(self)


def _record_property(name: str) -> property:
    def get(self: LPWDConfig) -> Any:
        return getattr(self.record, name)

    def set_(self: LPWDConfig, value: Any) -> None:
        setattr(self.record, name, value)

    return property(get, set_,
                    doc=f"``record.{name}`` (what the run measured), as an attribute of the config.")


for _name in RECORD_KEYS:
    setattr(LPWDConfig, _name, _record_property(_name))
