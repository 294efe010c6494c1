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

logger = logging.getLogger("hf_lpwd")


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
            # Not fullgraph: past dynamo's recompile limit the function runs eagerly, still this equation.
            self._compiled = torch.compile(self.fn, dynamic=True)
        if self._succeeded:
            return self._compiled(*args)
        try:  # the first call compiles; nothing is written before it succeeds
            result = self._compiled(*args)
        except Exception as exc:  # no C++ compiler / Triton: the eager path computes the same equation
            self.failed = True
            logger.warning("LPWD: %s takes the eager path (torch.compile failed: %s)", self.what, exc)
            return self.fn(*args)
        self._succeeded = True
        return result
