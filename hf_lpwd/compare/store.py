"""``OUT/results.jsonl``: one JSON line per finished run, appended and synced only once the run has succeeded.

A rerun reads it to skip what is done; a line cut by an interruption is skipped, so that run is redone.  The
same two functions keep the benchmarks' run logs (``benchmarks/common.py``). """

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["RESULTS_NAME", "append_result", "read_jsonl", "read_results"]

RESULTS_NAME = "results.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object line of ``path`` (none when it does not exist); a cut or foreign line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def read_results(path: Path) -> list[dict[str, Any]]:
    """The finished runs of a compare: the lines with a ``settings`` and a ``seed``."""
    return [row for row in read_jsonl(path) if "settings" in row and "seed" in row]


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one line and sync it to disk (after a line cut by a crash, start a fresh line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
