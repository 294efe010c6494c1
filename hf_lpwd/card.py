"""The model card's LPWD section: what transformers' own card cannot say about the decay.

The rows are the carded settings of :data:`hf_lpwd.settings.SETTINGS` (set ones only) and the run's record;
:func:`add_card_section` puts the section in a folder's card.
"""

from __future__ import annotations

import os
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


def add_card_section(folder: str | os.PathLike, config: Any, replace_only: bool = False) -> None:
    """Put ``config``'s section in ``folder/README.md``: in place of the section an earlier save wrote (a
    folder saved again by another run), else (unless ``replace_only``) appended, or in a new card with the
    ``lpwd`` tag; written atomically."""
    card = os.path.join(folder, "README.md")
    section = model_card_section(config)
    if os.path.isfile(card):
        with open(card, encoding="utf-8") as f:
            text = f.read()
        start = text.find(CARD_HEADING)
        if start < 0 and replace_only:
            return
        if start < 0:
            text = text.rstrip("\n") + "\n\n" + section
        else:
            text = text[:start] + section.rstrip("\n") + "\n" + _after_section(text, start)
    elif replace_only:
        return
    else:
        text = "---\nlibrary_name: transformers\ntags:\n- lpwd\n---\n\n" + section
    tmp = f"{card}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, card)


def _after_section(text: str, start: int) -> str:
    """What follows the section that starts at ``start``: from the line after its last line (an author's
    ``###`` notes under it stay), else from the next section of the card's level, else nothing."""
    next_section = text.find("\n## ", start + len(CARD_HEADING))
    last_line = text.find(CARD_LAST_LINE, start)
    if last_line >= 0 and (next_section < 0 or last_line < next_section):
        end = text.find("\n", last_line)
        return "" if end < 0 else text[end + 1:]
    return "" if next_section < 0 else "\n" + text[next_section:]
