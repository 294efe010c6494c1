"""``OUT/results.jsonl``: one JSON line per finished run, appended and synced only once the run has succeeded.

A rerun reads it to skip what is done; a line cut by an interruption is skipped, so that run is redone.  The
same two functions keep the benchmarks' run logs (``benchmarks/common.py``). """

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CompareError

__all__ = ["LOCK_NAME", "RESULTS_NAME", "append_result", "out_lock", "read_jsonl", "read_results"]

RESULTS_NAME = "results.jsonl"
LOCK_NAME = ".compare.lock"


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """One compare at a time runs in ``out``: a second would run the same missing pairs again and append them
    twice. ``OUT/.compare.lock`` holds the host and pid; one left by a process that is gone is taken over."""
    lock = Path(out) / LOCK_NAME
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text(encoding="utf-8").split() if lock.is_file() else []
            if len(holder) == 2 and _alive(*holder):
                raise CompareError(f"--out {out}: another hf-lpwd compare (pid {holder[1]} on {holder[0]}) "
                                   "is running there; wait for it, or give another --out") from None
            lock.unlink(missing_ok=True)  # left by a process that is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        break
    else:
        raise CompareError(f"--out {out}: could not take {LOCK_NAME}; is another compare starting there?")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(host: str, pid: str) -> bool:
    """Whether the lock's process may still run: on another host it cannot be checked, so it is."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


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
