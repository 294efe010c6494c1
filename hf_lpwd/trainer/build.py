"""What ``create_optimizer`` builds, as plain functions: the base the Trainer chose, λ, the groups, LPWD, the
record.

The mixin calls these in order; none of them knows the training loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from torch import nn
from transformers.utils import logging as hf_logging

from ..config import LPWDConfig
from ..optim import LPWD
from ..optim.functional import weight_decay_for_timescale
from ..settings import optimizer_keywords, resolve_settings
from .refusals import check_base, check_timescale

logger = hf_logging.get_logger("transformers.hf_lpwd")

__all__ = ["base_optimizer_of", "build_lpwd", "class_path", "record_groups", "resolve_lambda"]


def base_optimizer_of(trainer: Any, model: nn.Module) -> tuple[Any, dict[str, Any]]:
    """The optimizer the Trainer itself would build (``optimizer_cls_and_kwargs``, else ``--optim``), without
    λ.

    λ is LPWD's, per group, so the base's own ``weight_decay`` is dropped.
    """
    given = trainer.optimizer_cls_and_kwargs
    base_cls, base_kwargs = (given if given is not None
                             else trainer.get_optimizer_cls_and_kwargs(trainer.args, model))
    base_kwargs = dict(base_kwargs)
    check_base(trainer.args, (base_cls, base_kwargs),
               "optimizer_cls_and_kwargs" if given is not None else None)
    base_kwargs.pop("weight_decay", None)
    return base_cls, base_kwargs


def class_path(cls: Any) -> str:
    """``torch.optim.sgd.SGD``: what ``base_optimizer`` records for a base given as
    ``optimizer_cls_and_kwargs`` (no ``--optim`` value builds it)."""
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


def resolve_lambda(config: LPWDConfig, steps_per_epoch: Callable[[], int], lr: float,
                   should_log: bool) -> None:
    """With a timescale τ, set ``config.weight_decay`` = 1/(η̄·τ·S_e) (independent: 1/(τ·S_e)), S_e the
    optimizer steps per epoch (asked only then), η̄ = the base's lr (:func:`.refusals.peak_lr`); else λ is
    the one given."""
    tau = config.decay_timescale
    if tau is None:
        return
    per_epoch = steps_per_epoch()
    check_timescale(tau, per_epoch)
    config.weight_decay = weight_decay_for_timescale(config.lr_coupling, tau * per_epoch, lr)
    if should_log:
        logger.info("LPWD: --lpwd_decay_timescale %g epochs × %d steps per epoch at lr %g (%s) "
                    "gives λ = %.6g", tau, per_epoch, lr, config.lr_coupling, config.weight_decay)


def build_lpwd(
    model: nn.Module,
    config: LPWDConfig,
    base: tuple[Any, dict[str, Any]],
    decay_names: Any,
    depths: tuple[dict[str, int], int] | None,
) -> LPWD:
    """LPWD around ``base`` with the groups ``config`` gives ``model`` (``depths`` parsed by the caller)."""
    base_cls, base_kwargs = base
    groups = config.param_groups(model, decay_names=decay_names,
                                 depths=depths if config.needs_depths else None)
    keywords = optimizer_keywords(resolve_settings(config.settings()))
    return LPWD(groups, base=base_cls, **keywords, **base_kwargs)


def record_groups(config: LPWDConfig, groups: list[dict[str, Any]], base_kwargs: dict[str, Any],
                  num_blocks: int | None) -> None:
    """What the build measured, into ``config.record`` (and the base's JSON-able kwargs into the config)."""
    config.base_optimizer_kwargs = json.loads(json.dumps(base_kwargs, default=repr))
    if num_blocks is not None:
        config.record.num_blocks = num_blocks
    if config.layerwise:
        config.record.depth_weight_decay = {
            str(g["depth"]): float(g["weight_decay"]) for g in groups if g["weight_decay"] > 0
        }
