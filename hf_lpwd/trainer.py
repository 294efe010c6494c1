"""Trainer glue: LPWD in any ``transformers.Trainer`` with one flag.

``LPWDMixin`` goes in front of any Trainer subclass (``Trainer``, ``Seq2SeqTrainer``, TRL's
``SFTTrainer``)::

    class MySFTTrainer(LPWDMixin, SFTTrainer): ...

It changes three things and nothing else:

* ``create_optimizer`` builds the layer-wise param groups and wraps *the optimizer the Trainer itself
  would have chosen* (``get_optimizer_cls_and_kwargs``: ``--optim adamw_torch_fused``, ``sgd``,
  ``adafactor``, ...) in :class:`hf_lpwd.LPWD`;
* ``training_step`` calls ``LPWD.pre_step()`` before the forward pass.  ``pre_step`` acts once per
  optimizer step, so calling it before every micro-batch decays exactly once per step, before the
  first micro-batch, whatever the gradient accumulation, a short last accumulation group, an
  evaluation or a step skipped by the gradient scaler.  The lr it reads is the coming step's: the
  scheduler stepped right after the previous ``optimizer.step()``;
* checkpoints and the output folder get ``lpwd_config.json``, the model card an LPWD section, and
  the logs a weight norm per depth.

Checkpoints are written after ``optimizer.step()`` and before the next ``pre_step()``, so resuming
needs nothing but the base optimizer's state: the next step decays at the restored scheduler's lr.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from .config import LPWD_CONFIG_NAME, WEIGHT_DECAY_MODES, LPWDConfig, validate_layer_pattern
from .groups import format_layer_table, layer_table
from .layers import layer_depths, layer_depths_with_count
from .optim import LPWD

logger = logging.getLogger("hf_lpwd")

_UNSUPPORTED_OPTIM_KWARGS = ("params", "model", "optimizer_dict")


@dataclass
class LPWDTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus LPWD's settings; λ is the usual ``--weight_decay``.

    With ``--lpwd_config PATH_OR_REPO_ID`` the settings start from a saved ``lpwd_config.json``;
    any LPWD flag (or ``--weight_decay`` / ``--optim``) given with a value other than its default
    overrides the file.
    """

    weight_decay_mode: str = field(
        default="lpwd",
        metadata={
            "help": "wd: AdamW's decoupled decay; rwd: real-time decay (1-lr*wd)(θ-lr*u); pwd: pre-weight decay "
            "before the forward pass; lpwd: pwd with λ growing with depth, λ*(d+1)/(N+2).",
            "choices": list(WEIGHT_DECAY_MODES),
        },
    )
    lpwd_layer_pattern: str | None = field(
        default=None,
        metadata={"help": r"Regex with one capture group for the block index (e.g. '\.layers\.(\d+)\.'), "
                  "overriding the automatic block detection."},
    )
    lpwd_decay_embeddings: bool = field(
        default=True, metadata={"help": "lpwd: decay depth 0 (embeddings, stem) at λ/(N+2); False gives it 0."}
    )
    lpwd_stochastic_rounding: bool = field(
        default=True, metadata={"help": "Keep the decay effective on bf16/fp16 weights (stochastic rounding)."}
    )
    lpwd_log_layer_norms: bool = field(
        default=True, metadata={"help": "Log the weight norm of each depth with the training logs."}
    )
    lpwd_config: str | None = field(
        default=None,
        metadata={"help": "Start from a saved lpwd_config.json (a folder, a file or a Hub repo id); "
                  "flags given with non-default values override it."},
    )

    def __post_init__(self) -> None:
        if self.lpwd_config:
            self._merge_saved_config(LPWDConfig.from_pretrained(self.lpwd_config))
        if self.weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"--weight_decay_mode={self.weight_decay_mode!r} is not one of {list(WEIGHT_DECAY_MODES)}"
            )
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise ValueError(f"--weight_decay={self.weight_decay} must be >= 0 (it is λ)")
        validate_layer_pattern(self.lpwd_layer_pattern, "--lpwd_layer_pattern")
        super().__post_init__()

    def _merge_saved_config(self, saved: LPWDConfig) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        mapping = {
            "weight_decay_mode": saved.mode,
            "weight_decay": saved.weight_decay,
            "lpwd_layer_pattern": saved.layer_pattern,
            "lpwd_decay_embeddings": saved.decay_embeddings,
            "lpwd_stochastic_rounding": saved.stochastic_rounding,
        }
        if saved.base_optimizer:
            mapping["optim"] = saved.base_optimizer
        for name, value in mapping.items():
            current = getattr(self, name)
            default = defaults[name]
            if current == default or str(current) == str(default):
                setattr(self, name, value)

    def to_lpwd_config(self) -> LPWDConfig:
        return lpwd_config_from_args(self)


def lpwd_config_from_args(args: TrainingArguments) -> LPWDConfig:
    """The LPWD settings of any ``TrainingArguments`` (plain ones get LPWD's defaults)."""
    return LPWDConfig(
        mode=getattr(args, "weight_decay_mode", "lpwd"),
        weight_decay=float(args.weight_decay),
        layer_pattern=getattr(args, "lpwd_layer_pattern", None),
        decay_embeddings=getattr(args, "lpwd_decay_embeddings", True),
        stochastic_rounding=getattr(args, "lpwd_stochastic_rounding", True),
        base_optimizer=str(getattr(args.optim, "value", args.optim)),
    )


def _json_safe(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The base optimizer's kwargs as JSON values (tuples become lists; anything else its repr)."""
    return json.loads(json.dumps(kwargs, default=repr))


def check_deepspeed(is_deepspeed_enabled: bool, config: LPWDConfig) -> None:
    """DeepSpeed steps its own fp32 master weights, so a decay of the model's weights would be lost."""
    if is_deepspeed_enabled and config.optimizer_mode == "pwd":
        raise ValueError(
            f"weight_decay_mode={config.mode!r} decays the model's weights before the forward pass, but DeepSpeed "
            "keeps its own fp32 master copy and would overwrite that decay at its next step. Use FSDP or DDP "
            "(accelerate launch) for pwd/lpwd, or weight_decay_mode='rwd'/'wd' with DeepSpeed (not tested here)."
        )


def _show_info_logs() -> None:
    """Make the one-off layer table visible on the main process unless the user configured ``hf_lpwd`` logging."""
    if not logger.handlers and logger.level == logging.NOTSET and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[hf_lpwd] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


class LPWDMixin:
    """Put in front of any ``transformers.Trainer`` subclass to train with LPWD.

    Settings come from ``lpwd_config`` when given, else from the Trainer's arguments
    (:class:`LPWDTrainingArguments`, or LPWD's defaults on plain ``TrainingArguments``, e.g. TRL's
    ``SFTConfig``, with λ = ``args.weight_decay``).
    """

    def __init__(self, *args: Any, lpwd_config: LPWDConfig | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lpwd_config = lpwd_config if lpwd_config is not None else lpwd_config_from_args(self.args)
        self._lpwd_optimizer: LPWD | None = None
        self._lpwd_depth_params: dict[int, list[torch.Tensor]] = {}
        check_deepspeed(getattr(self, "is_deepspeed_enabled", False), self.lpwd_config)
        if self.lpwd_config.layerwise and self.model is not None:
            # Fail before training, not at the first step, when the blocks cannot be found.
            layer_depths(self.model, self.lpwd_config.layer_pattern)

    # ------------------------------------------------------------------ optimizer
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
        if not isinstance(base_cls, type) or any(key in base_kwargs for key in _UNSUPPORTED_OPTIM_KWARGS):
            raise ValueError(
                f"--optim {self.args.optim} builds its own parameter groups or optimizers, so LPWD cannot wrap it. "
                "Use an optimizer that takes param groups: adamw_torch_fused (default), adamw_torch, sgd, "
                "adafactor, adagrad, rmsprop, ..."
            )
        base_kwargs.pop("weight_decay", None)  # λ is LPWD's, per group
        groups = cfg.param_groups(opt_model, decay_names=self.get_decay_parameter_names(opt_model))
        self.optimizer = LPWD(
            groups,
            base=base_cls,
            mode=cfg.optimizer_mode,
            weight_decay=cfg.weight_decay,
            stochastic_rounding=cfg.stochastic_rounding,
            **base_kwargs,
        )
        self._lpwd_optimizer = self.optimizer
        self._record_layers(opt_model, groups, base_kwargs)
        return self.optimizer

    def _record_layers(self, model: nn.Module, groups: list[dict[str, Any]], base_kwargs: dict[str, Any]) -> None:
        """Fill the config's layer summary, log the table once, and remember params per depth for logging."""
        cfg = self.lpwd_config
        cfg.base_optimizer_kwargs = _json_safe(base_kwargs)
        try:
            depths, cfg.num_blocks = layer_depths_with_count(model, cfg.layer_pattern)
        except ValueError:
            depths = None  # wd / rwd / pwd on a model without a block stack: no per-depth view
        if depths is not None:
            by_depth: dict[int, list[torch.Tensor]] = defaultdict(list)
            for name, param in model.named_parameters():
                if param.requires_grad and name in depths:
                    by_depth[depths[name]].append(param)
            self._lpwd_depth_params = dict(sorted(by_depth.items()))
        if cfg.layerwise:
            cfg.depth_weight_decay = {
                str(g["depth"]): float(g["weight_decay"]) for g in groups if g["weight_decay"] > 0
            }
        if self.args.should_log:
            _show_info_logs()
            logger.info("LPWD mode=%s λ=%g base=%s\n%s", cfg.mode, cfg.weight_decay, cfg.base_optimizer,
                        format_layer_table(layer_table(groups)))

    def _find_lpwd(self) -> LPWD | None:
        if self._lpwd_optimizer is None:
            opt = self.optimizer
            while opt is not None and not isinstance(opt, LPWD):
                opt = getattr(opt, "optimizer", None)
            self._lpwd_optimizer = opt
        return self._lpwd_optimizer

    # ------------------------------------------------------------------ the pre-forward decay
    def training_step(self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        optimizer = self._find_lpwd()
        if optimizer is not None:
            optimizer.pre_step()  # once per optimizer step; later micro-batches are no-ops
        return super().training_step(model, inputs, *args, **kwargs)

    # ------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and getattr(self.args, "lpwd_log_layer_norms", True) and self._lpwd_depth_params:
            logs.update(self.lpwd_layer_norms())
        super().log(logs, *args, **kwargs)

    @torch.no_grad()
    def lpwd_layer_norms(self) -> dict[str, float]:
        """‖θ‖₂ of all trainable parameters of each depth, keyed ``lpwd/weight_norm/depth_DD``."""
        out = {}
        for depth, params in self._lpwd_depth_params.items():
            local = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in params]
            norms = torch._foreach_norm([p.detach() for p in local if p.numel() > 0])
            value = torch.linalg.vector_norm(torch.stack([n.float() for n in norms])) if norms else torch.zeros(())
            out[f"lpwd/weight_norm/depth_{depth:02d}"] = round(float(value), 6)
        return out

    # ------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            self.lpwd_config.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        if "lpwd" not in tags:
            tags.append("lpwd")
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        card = os.path.join(self.args.output_dir, "README.md")
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                text = f.read()
            if "## Weight decay: LPWD" not in text:
                with open(card, "a", encoding="utf-8") as f:
                    f.write("\n" + self.lpwd_config.model_card_section())


class LPWDTrainer(LPWDMixin, Trainer):
    """``transformers.Trainer`` with LPWD: pass :class:`LPWDTrainingArguments` (or any ``TrainingArguments``)."""


__all__ = [
    "LPWD_CONFIG_NAME",
    "LPWDMixin",
    "LPWDTrainer",
    "LPWDTrainingArguments",
    "check_deepspeed",
    "lpwd_config_from_args",
]
