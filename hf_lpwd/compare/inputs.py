"""The files a compare's command names (its script, YAML configs, data): a fingerprint of each, kept with
every run, so that a compare into an ``OUT`` whose files changed since its runs is refused.

The runs are recognised by their command line; a config edited between two compares leaves the line as it was,
and the new runs would be paired with runs of another configuration.  A file of up to :data:`HASHED_BYTES` is
fingerprinted by its SHA-256; a larger one (a data set) by its size and modification time. """

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CompareError

__all__ = ["HASHED_BYTES", "INPUTS_KEY", "check_inputs", "input_fingerprints"]

HASHED_BYTES = 16 * 2**20
INPUTS_KEY = "inputs"
"""The key of a run's fingerprints in ``results.jsonl`` (``{path as written: fingerprint}``)."""


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > HASHED_BYTES:
        return f"size {stat.st_size}, modified {stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return f"sha256 {digest.hexdigest()}"


def _is_interpreter(token: str) -> bool:
    return Path(token).name.startswith("python")


def input_fingerprints(command: Sequence[str], cwd: str | os.PathLike[str]) -> dict[str, str]:
    """``{token: fingerprint}`` of every command-line token (or ``--flag=value``'s value) that is an existing
    file, seen from ``cwd``; the Python interpreter is left out."""
    out: dict[str, str] = {}
    for i, token in enumerate(command):
        if i == 0 and _is_interpreter(token):
            continue
        for text in (token, token.partition("=")[2] if token.startswith("-") else ""):
            if not text or text in out:
                continue
            path = Path(cwd) / text
            try:
                if path.is_file():
                    out[text] = _fingerprint(path)
            except OSError:  # unreadable, a name too long: not an input we can follow
                continue
    return out


def check_inputs(rows: Sequence[dict[str, Any]], now: dict[str, str], out: Path) -> None:
    """Refuse to add runs to ``rows`` (runs of this command line) when a file they read has changed."""
    for row in rows:
        before = row.get(INPUTS_KEY)
        if not isinstance(before, dict):  # a run of an hf_lpwd before 0.8.3: nothing to compare
            continue
        for name, print_before in before.items():
            if now.get(name) != print_before:
                state = "is gone" if name not in now else "changed"
                raise CompareError(
                    f"--out {out}: {name} {state} since its runs there (run {row.get('cell')} seed "
                    f"{row.get('seed')} read the earlier file), so new runs would be paired with runs of "
                    "another configuration: put the file back as it was, or give another --out"
                )
