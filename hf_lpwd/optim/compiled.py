"""One elementwise step compiled once with ``torch.compile``, run eagerly where compilation fails.

The rounded steps (:mod:`.rounded_step`, :func:`.rounding.scale_` with keys) are plain functions of tensors
and 0-d tensors.  Compiled with dynamic shapes, one kernel serves every tensor; where compilation is not
available (no C++ compiler, no Triton) the very same function runs eagerly, once a warning has said so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .._compat.torch import call_with_recompile_limit

logger = logging.getLogger("hf_lpwd")

RECOMPILE_LIMIT = 64
"""Compiled variants one kernel may hold: list lengths (up to 3 or 4), θ₀ or not, the mask or not, the
weights' and moments' dtypes, SGD's first step and Nesterov flags: a few dozen in a process that tries every
setting, a handful in one training run."""


class CompiledKernel:
    """``fn`` compiled on its first call; ``eager=True`` or a failed compilation runs ``fn`` itself."""

    def __init__(self, fn: Callable[..., Any], what: str) -> None:
        self.fn = fn
        self.what = what
        self._compiled: Any = None
        self.failed = False
        self._succeeded = False

    def __call__(self, *args: Any, eager: bool = False) -> Any:
        if eager or self.failed:
            return self.fn(*args)
        if self._compiled is None:
            # Not fullgraph: past the recompile limit the function runs eagerly, still this equation.
            self._compiled = torch.compile(self.fn, dynamic=True)
        if self._succeeded:
            return call_with_recompile_limit(self._compiled, args, RECOMPILE_LIMIT)
        try:  # the first call compiles; nothing is written before it succeeds
            result = call_with_recompile_limit(self._compiled, args, RECOMPILE_LIMIT)
        except Exception as exc:  # no C++ compiler / Triton: the eager path computes the same equation
            self.failed = True
            logger.warning("LPWD: %s takes the eager path (torch.compile failed: %s)", self.what, exc)
            return self.fn(*args)
        self._succeeded = True
        return result


def chunk_sizes(count: int, largest: int) -> list[int]:
    """``count`` tensors split into calls of ``largest`` (a power of 2), then halves down to 1: a compiled
    function over a list of tensors compiles one variant per list length, so at most log2(largest) + 1."""
    sizes: list[int] = []
    size = largest
    while count:
        sizes += [size] * (count // size)
        count %= size
        size //= 2
    return sizes
