"""The LPWD section of a saved model's ``README.md`` (:func:`hf_lpwd.card.add_card_section`), where the
Trainer glue has always imported it from."""

from __future__ import annotations

from ..card import add_card_section

__all__ = ["add_card_section"]
