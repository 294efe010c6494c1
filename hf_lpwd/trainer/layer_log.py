"""The start-of-training layer table, with the run's shrink S_d = Σ_t d_t computed from the schedule
itself."""

from __future__ import annotations

from typing import Any

from transformers.utils import logging as hf_logging

from ..config import LPWDConfig
from ..model.groups import format_layer_table, layer_table, shrink_warning
from ..optim import LPWD, rounding_path
from ..schedule import groups_shrink, scheduler_scales
from ..settings import describe, resolve_settings, rule_in_words

logger = hf_logging.get_logger("transformers.hf_lpwd")

__all__ = ["log_layer_table"]


def weights_paths(lpwd: LPWD) -> str:
    """How each depth's step is written to its weights (:func:`hf_lpwd.optim.rounding_path`), one line a path:
    ``weights: bf16 weights: update + decay stochastically rounded (depths 0, 1)`` or ``fp32 weights``."""
    depths_of: dict[str, list[str]] = {}
    for group in lpwd.param_groups:
        if group["params"]:
            label = "all" if group.get("depth") is None else str(group["depth"])
            path = rounding_path(group, lpwd)
            depths_of.setdefault(path, [])
            if label not in depths_of[path]:
                depths_of[path].append(label)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for g in lpwd.param_groups for p in g["params"]})
    lines = [f"weights dtype: {', '.join(dtypes)}"]
    lines += [f"weights: {path} (depths {', '.join(depths)})" for path, depths in depths_of.items()]
    return "\n".join(lines)


def log_layer_table(lpwd: LPWD, scheduler: Any, num_training_steps: int, config: LPWDConfig,
                    should_log: bool, base_lrs: list[float] | None = None,
                    scales: list[list[float]] | None = None) -> None:
    """Record the shrink in ``config.record`` and, on the logging rank, log the table and the shrink
    warning; ``base_lrs``: the peak lr per group (default: the scheduler's; a resume's come from its
    checkpoint); ``scales``: the schedule's s_t per group when the caller has them (else read here)."""
    groups = lpwd.param_groups
    # SPD's per-step decay λ·r_t depends on the data, not on the schedule: no shrink S to compute.
    if config.spd:
        scales = None
    elif scales is None:
        scales = scheduler_scales(scheduler, num_training_steps)
    shrink: list[float | None] = [None] * len(groups)
    if scales is not None:
        peaks = scheduler.base_lrs if base_lrs is None else base_lrs
        shrink = list(groups_shrink(groups, peaks, scales, config.settings()))
    rows = layer_table(groups, shrink, lpwd.decay_target)
    if scales is not None:
        decayed = [r for r in rows if r["weight_decay"] > 0]
        config.record.shrink = _significant(max((float(r["shrink"]) for r in decayed), default=0.0))
        if config.needs_depths:
            config.record.depth_shrink = {str(r["depth"]): _significant(float(r["shrink"])) for r in decayed}
    if not should_log:
        return
    settings = resolve_settings(config.settings())
    rule = f"\nrule: {rule_in_words(settings)}" if config.spd else ""
    logger.info("LPWD %s base=%s, %d steps\n%s\n%s%s", describe(settings), config.base_optimizer,
                num_training_steps, format_layer_table(rows), weights_paths(lpwd), rule)
    warning = shrink_warning(rows)
    if warning:
        logger.warning(warning)


def _significant(shrink: float) -> float:
    """S to 6 significant digits: fine-tuning runs have S ~ 1e-5, which 6 decimals would cut to 0 or 1e-5."""
    return float(f"{shrink:.6g}")
