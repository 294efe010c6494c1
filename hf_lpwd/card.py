"""The model card's LPWD section: what transformers' own card cannot say about the decay."""

from __future__ import annotations

from typing import Any

_TIMING_TEXT = {
    "wd": "decoupled decay, as AdamW: θ ← θ − ηu − dθ",
    "rwd": "real-time decay: θ ← (1 − d)(θ − ηu)",
    "pwd": "pre-weight decay: θ ← (1 − d)θ before each forward pass",
}
_COUPLING_TEXT = {
    "coupled": "d = η_t·λ",
    "independent": "d = (η_t/η̄)·λ, independent of the peak lr",
    "corrected": "d = (η_t²/η̄)·λ, lr²-corrected",
}


def _per_depth(values: dict[str, float]) -> str:
    return ", ".join(f"{d}: {v:.3g}" for d, v in sorted(values.items(), key=lambda kv: int(kv[0])))


def model_card_section(config: Any, config_name: str = "lpwd_config.json") -> str:
    """Markdown for one :class:`hf_lpwd.LPWDConfig`: timing, profile, λ (and the timescale it came from)."""
    profile = "layer-wise, λ·(d+1)/(N+2) at depth d" if config.layerwise else "uniform"
    rule = _TIMING_TEXT[config.timing] + (", decayed only where u⊙θ ≥ 0 (cautious)" if config.cautious else "")
    lines = [
        "## Weight decay: LPWD",
        "",
        f"This model was trained with `hf_lpwd` {config.lpwd_version}, weight decay mode `{config.mode}`: "
        f"timing {rule}; λ profile {profile}; {_COUPLING_TEXT[config.lr_coupling]}.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| λ (weight_decay) | {config.weight_decay:g} |",
    ]
    if config.decay_timescale is not None:
        lines.append(f"| decay timescale τ | {config.decay_timescale:g} epochs (λ above is what it gave) |")
    lines += [
        f"| timing / profile | {config.timing} / {'layer-wise' if config.layerwise else 'uniform'} |",
        f"| lr coupling | {config.lr_coupling} |",
        f"| base optimizer | {config.base_optimizer or 'adamw'} |",
        f"| decay embeddings | {config.decay_embeddings} |",
        f"| tied embedding depth | {config.tied_depth} |",
    ]
    if config.cautious:
        lines.append("| cautious | True |")
    if config.layer_lr_decay != 1.0:
        lines.append(f"| layer-wise lr decay γ | {config.layer_lr_decay:g} (lr·γ^(N+1−d)) |")
    if config.layer_pattern:
        lines.append(f"| layer pattern | `{config.layer_pattern}` |")
    if config.num_blocks is not None:
        lines.append(f"| blocks (N) | {config.num_blocks} |")
    if config.depth_weight_decay:
        lines.append(f"| λ per depth | {_per_depth(config.depth_weight_decay)} |")
    if config.depth_shrink:
        lines.append(f"| shrink S = Σ_t d_t per depth | {_per_depth(config.depth_shrink)} |")
    lines += ["", f"The full settings are in `{config_name}`.", ""]
    return "\n".join(lines)
