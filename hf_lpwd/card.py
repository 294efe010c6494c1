"""The model card's LPWD section: what transformers' own card cannot say about the decay.

The rows are the carded settings of :data:`hf_lpwd.settings.SETTINGS` (set ones only) and the run's record.
"""

from __future__ import annotations

from typing import Any

from .names import LPWD_CONFIG_NAME
from .settings import card_rows, resolve_settings, rule_in_words

CARD_HEADING = "## Weight decay: LPWD"
"""The section's heading: a card that has it already gets the section replaced."""
CARD_LAST_LINE = "The full settings are in `"
"""How the section's last line starts (every release): what an author wrote after it stays on a re-save."""

def _per_depth(values: dict[str, float]) -> str:
    return ", ".join(f"{d}: {v:.3g}" for d, v in sorted(values.items(), key=lambda kv: int(kv[0])))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and any(ch in value for ch in "\\()[]|*"):
        # a table splits cells at every unescaped '|', inside a code span too (GFM); '\|' renders as '|'
        return "`" + value.replace("|", "\\|") + "`"
    return str(value)


def model_card_section(config: Any, config_name: str = LPWD_CONFIG_NAME) -> str:
    """Markdown for one :class:`hf_lpwd.LPWDConfig`: the rule in words, then one row per setting that is
    set."""
    settings = resolve_settings(config.settings())
    lines = [
        CARD_HEADING,
        "",
        f"This model was trained with `hf_lpwd` {config.lpwd_version}, weight decay mode `{config.mode}`: "
        f"{rule_in_words(settings)}.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines.append(f"| timing / profile | {config.timing} / "
                 f"{'layer-wise' if config.layerwise else 'uniform'} |")
    lines += [f"| {s.card} | {_cell(value)}{s.card_unit} |" for s, value in card_rows(settings)]
    lines.append(f"| base optimizer | {config.base_optimizer or 'adamw'} |")
    record = config.record
    if record.num_blocks is not None:
        lines.append(f"| blocks (N) | {record.num_blocks} |")
    if record.depth_weight_decay:
        lines.append(f"| λ per depth | {_per_depth(record.depth_weight_decay)} |")
    if record.depth_shrink:
        lines.append(f"| shrink S = Σ_t d_t per depth | {_per_depth(record.depth_shrink)} |")
    lines += ["", f"{CARD_LAST_LINE}{config_name}`.", ""]
    return "\n".join(lines)
