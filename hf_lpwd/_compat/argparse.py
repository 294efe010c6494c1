"""argparse's private names the package relies on (guarded by ``tests/test_compat.py``)."""

from __future__ import annotations

import argparse

PRIVATE_NAMES = ("ArgumentParser._actions",)


def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's actions (one per argument, help included), in the order they were added.

    ``add_argument`` returns each action, but ``HfArgumentParser`` adds them from dataclass fields itself, so
    the only way to reach them (to change their defaults or list their option strings) is this list.
    """
    return parser._actions
