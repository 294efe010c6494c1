"""The LPWD section of a saved model's ``README.md``: appended to a card (PEFT writes one for adapters) or a
new one.

The section's text is :func:`hf_lpwd.card.model_card_section`; this module only puts it in a folder,
atomically.
"""

from __future__ import annotations

import os

from ..card import CARD_HEADING, CARD_LAST_LINE
from ..config import LPWDConfig

__all__ = ["add_card_section"]


def add_card_section(folder: str, config: LPWDConfig) -> None:
    """Put ``config``'s section in ``folder/README.md``: appended, in place of the section an earlier save
    wrote (a folder saved again by another run), or in a new card with the ``lpwd`` tag."""
    card = os.path.join(folder, "README.md")
    section = config.model_card_section()
    if os.path.isfile(card):
        with open(card, encoding="utf-8") as f:
            text = f.read()
        start = text.find(CARD_HEADING)
        if start < 0:
            text = text.rstrip("\n") + "\n\n" + section
        else:
            text = text[:start] + section.rstrip("\n") + "\n" + _after_section(text, start)
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
