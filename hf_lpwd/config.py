"""``LPWDConfig``: the decay settings a model was trained with, as JSON beside its weights.

Modelled on transformers' ``GenerationConfig``: a small object with ``save_pretrained`` /
``from_pretrained`` / ``push_to_hub`` and one JSON file (``lpwd_config.json``) in the model folder or
Hub repo.  Safety first: JSON only (never pickle, never remote code), and loading is strict: an
unknown key, a wrong type or an out-of-range value is an error that names the key.  A file written
by a newer hf_lpwd with keys this version does not know fails with a message saying to upgrade,
rather than silently training with settings the user did not ask for.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .version import __version__
from .card import model_card_section
from .groups import lpwd_param_groups
from .settings import (
    DEFAULT_WEIGHT_DECAY,
    DEFAULTS,
    LR_COUPLINGS,
    TIED_DEPTHS,
    WEIGHT_DECAY_MODES,
    validate_bool,
    validate_cautious,
    validate_choice,
    validate_decay_timescale,
    validate_layer_lr_decay,
    validate_layer_pattern,
    validate_weight_decay,
)

LPWD_CONFIG_NAME = "lpwd_config.json"

__all__ = ["LPWD_CONFIG_NAME", "LPWDConfig", "TIED_DEPTHS", "WEIGHT_DECAY_MODES", "validate_layer_lr_decay",
           "validate_layer_pattern"]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


@dataclass
class LPWDConfig:
    """Everything needed to rebuild LPWD's decay for a model.

    Two independent axes: *when* the decay is applied (the timing: ``wd``, ``rwd`` or ``pwd``) and
    *how λ varies with depth* (the profile: uniform, or layer-wise λ·(d+1)/(N+2) at depth d of N
    blocks).  ``mode`` names the timing, ``layerwise`` the profile; ``lpwd`` is the paper's method,
    ``pwd`` × layer-wise, and the default of ``layerwise`` follows the mode (true for ``lpwd`` only),
    so a config written by hf_lpwd 0.1.0 (which has no ``layerwise`` key) means what it meant.

    Args:
        mode: ``wd`` (AdamW's decoupled decay), ``rwd`` (real-time), ``pwd`` (pre-weight) or
            ``lpwd`` (pre-weight with λ growing with depth: λ·(d+1)/(N+2) at depth d of N blocks).
        weight_decay: λ, the rate of the deepest level (the head) with the layer-wise profile, of
            every decayed parameter otherwise.
        layerwise: the λ profile: ``True`` layer-wise, ``False`` uniform; ``None`` (unset) resolves
            to ``mode == "lpwd"``.  ``mode="lpwd"`` with ``layerwise=False`` is refused (that is ``pwd``).
        layer_lr_decay: γ of layer-wise learning-rate decay (LLRD): the lr at depth d is
            lr·γ^(N+1−d), so the head trains at the full lr and the embeddings at lr·γ^(N+1).
            ``1.0`` (default) is off; 0 < γ ≤ 1.
        tied_depth: where a matrix shared by the input embedding and the output head sits:
            ``"input"`` (depth 0, where it is registered: the default, as in 0.1.0) or ``"output"``
            (depth N+1, the head's λ and lr).
        layer_pattern: regex with one capture group for the block index, overriding the automatic
            block detection of :func:`hf_lpwd.layer_depths`.
        decay_embeddings: whether depth 0 (embeddings, stem) is decayed at all in ``lpwd``.
        stochastic_rounding: keep the decay effective on bf16/fp16 weights.
        lr_coupling: how the per-step decay follows the lr: ``coupled`` η_t·λ (AdamW), ``independent``
            (η_t/η̄)·λ, ``corrected`` (η_t²/η̄)·λ, with η̄ each group's base (peak) lr.
        cautious: decay only where update and weight agree in sign (wd timing, AdamW/SGD).
        decay_timescale: τ in epochs; when set, λ is chosen so that the weights' EMA timescale at the
            base lr is τ epochs (λ = 1/(η̄·τ·steps per epoch), independent: 1/(τ·steps per epoch)), and
            ``weight_decay`` records the λ it produced.
        base_optimizer: the base optimizer's name (the Trainer's ``--optim``, e.g. ``adamw_torch_fused``).
        base_optimizer_kwargs: its JSON-able keyword arguments (betas, eps, momentum, ...).
        num_blocks: N, the number of blocks found (filled in when the optimizer is built).
        depth_weight_decay: λ per depth, keys are depths as strings (filled in likewise).
        depth_shrink: S_d = Σ_t d_t per decayed depth over the whole run, the log-shrink of a weight that
            no gradient moves (filled in when the schedule is known).
        shrink: the run's largest S over its decayed parameters (filled in likewise, for any profile): what
            ``hf-lpwd compare`` plots the metric against.
        lpwd_version: the hf_lpwd version that wrote the config.
    """

    mode: str = DEFAULTS["mode"]
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    layerwise: bool | None = DEFAULTS["layerwise"]
    layer_lr_decay: float = DEFAULTS["layer_lr_decay"]
    tied_depth: str = DEFAULTS["tied_depth"]
    layer_pattern: str | None = DEFAULTS["layer_pattern"]
    decay_embeddings: bool = DEFAULTS["decay_embeddings"]
    stochastic_rounding: bool = DEFAULTS["stochastic_rounding"]
    lr_coupling: str = DEFAULTS["lr_coupling"]
    cautious: bool = DEFAULTS["cautious"]
    decay_timescale: float | None = DEFAULTS["decay_timescale"]
    base_optimizer: str | None = None
    base_optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    num_blocks: int | None = None
    depth_weight_decay: dict[str, float] | None = None
    depth_shrink: dict[str, float] | None = None
    shrink: float | None = None
    lpwd_version: str = __version__

    def __post_init__(self) -> None:
        if self.layerwise is None:
            self.layerwise = self.mode == "lpwd"
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def timing(self) -> str:
        """When the decay is applied, the :class:`hf_lpwd.LPWD` ``mode``: ``lpwd`` is the ``pwd`` timing."""
        return "pwd" if self.mode == "lpwd" else self.mode

    @property
    def optimizer_mode(self) -> str:
        """Alias of :attr:`timing` (hf_lpwd 0.1.0's name)."""
        return self.timing

    @property
    def needs_depths(self) -> bool:
        """Whether the param groups depend on the depth of each parameter."""
        return bool(self.layerwise) or self.layer_lr_decay != 1.0

    def param_groups(
        self, model: Any, decay_names: Any = None, depths: tuple[dict[str, int], int] | None = None
    ) -> list[dict[str, Any]]:
        """The optimizer param groups these settings give for ``model`` (see :func:`hf_lpwd.lpwd_param_groups`)."""
        return lpwd_param_groups(
            model,
            self.weight_decay,
            layerwise=bool(self.layerwise),
            layer_pattern=self.layer_pattern,
            decay_embeddings=self.decay_embeddings,
            decay_names=decay_names,
            layer_lr_decay=self.layer_lr_decay,
            tied_depth=self.tied_depth,
            depths=depths,
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        validate_choice(self.mode, WEIGHT_DECAY_MODES, "LPWDConfig.mode")
        validate_weight_decay(self.weight_decay, "LPWDConfig.weight_decay")
        validate_bool(self.layerwise, "LPWDConfig.layerwise")
        if self.mode == "lpwd" and not self.layerwise:
            raise ValueError(
                "LPWDConfig: mode='lpwd' is pwd with the layer-wise profile, so layerwise=False contradicts it; "
                "use mode='pwd' for pre-weight decay with a uniform λ"
            )
        validate_layer_lr_decay(self.layer_lr_decay, "LPWDConfig.layer_lr_decay")
        validate_choice(self.tied_depth, TIED_DEPTHS, "LPWDConfig.tied_depth")
        validate_layer_pattern(self.layer_pattern, "LPWDConfig.layer_pattern")
        for name in ("decay_embeddings", "stochastic_rounding"):
            validate_bool(getattr(self, name), f"LPWDConfig.{name}")
        validate_choice(self.lr_coupling, LR_COUPLINGS, "LPWDConfig.lr_coupling")
        validate_cautious(self.cautious, self.timing, "LPWDConfig.cautious")
        validate_decay_timescale(self.decay_timescale, "LPWDConfig.decay_timescale")
        if self.base_optimizer is not None and not isinstance(self.base_optimizer, str):
            raise ValueError(f"LPWDConfig.base_optimizer must be a string, got {self.base_optimizer!r}")
        if not isinstance(self.base_optimizer_kwargs, dict):
            raise ValueError("LPWDConfig.base_optimizer_kwargs must be a JSON object")
        try:
            json.dumps(self.base_optimizer_kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"LPWDConfig.base_optimizer_kwargs must hold only JSON values ({exc})") from None
        if self.num_blocks is not None and (
            isinstance(self.num_blocks, bool) or not isinstance(self.num_blocks, int) or self.num_blocks < 0
        ):
            raise ValueError(f"LPWDConfig.num_blocks must be an integer >= 0, got {self.num_blocks!r}")
        for name, what in (("depth_weight_decay", "λ"), ("depth_shrink", "S")):
            per_depth = getattr(self, name)
            if per_depth is None:
                continue
            if not isinstance(per_depth, dict):
                raise ValueError(f"LPWDConfig.{name} must be a JSON object {{depth: {what}}}")
            for depth, value in per_depth.items():
                if not str(depth).isdigit() or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"LPWDConfig.{name}[{depth!r}]={value!r}: keys are depths, values {what} >= 0")
        if self.shrink is not None and (isinstance(self.shrink, bool) or not isinstance(self.shrink, (int, float))
                                        or not self.shrink >= 0):
            raise ValueError(f"LPWDConfig.shrink must be a number >= 0, got {self.shrink!r}")
        if not isinstance(self.lpwd_version, str):
            raise ValueError("LPWDConfig.lpwd_version must be a string")

    # ------------------------------------------------------------------ dict / JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        known = {f.name for f in dataclasses.fields(cls)}
        data = {**config_dict, **overrides}
        unknown = sorted(set(data) - known)
        if unknown:
            written_by = str(data.get("lpwd_version", "?"))
            if written_by != "?" and _version_tuple(written_by) > _version_tuple(__version__):
                raise ValueError(
                    f"this LPWD config was written by hf_lpwd {written_by}, newer than the installed {__version__}, "
                    f"and has keys this version does not know: {unknown}. Upgrade hf_lpwd (pip install -U hf_lpwd)."
                )
            raise ValueError(f"unknown LPWD config key(s) {unknown}; valid keys are {sorted(known)}")
        if "base_optimizer_kwargs" in data and isinstance(data["base_optimizer_kwargs"], dict):
            data["base_optimizer_kwargs"] = dict(data["base_optimizer_kwargs"])
        for key in ("weight_decay", "layer_lr_decay", "decay_timescale", "shrink"):
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
        return cls.from_dict(data)

    # ------------------------------------------------------------------ folders and the Hub
    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``lpwd_config.json`` into ``save_directory`` (and push it when ``push_to_hub``)."""
        self.validate()
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory={save_directory} is a file; pass a directory")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, LPWD_CONFIG_NAME))
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
        """Read ``lpwd_config.json`` from a folder, a JSON file, or a Hub repo id."""
        path = os.fspath(pretrained_name_or_path)
        if os.path.isdir(path):
            file = os.path.join(path, LPWD_CONFIG_NAME)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{path} has no {LPWD_CONFIG_NAME}; was the model trained with hf_lpwd?")
            return cls.from_json_file(file)
        if os.path.isfile(path):
            return cls.from_json_file(path)
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise FileNotFoundError(f"no such file or folder: {path}")
        from huggingface_hub import hf_hub_download

        file = hf_hub_download(
            repo_id=path,
            filename=LPWD_CONFIG_NAME,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
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
        return model_card_section(self)
