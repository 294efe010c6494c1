"""bitsandbytes' 8-bit optimizers as the stock Trainer sets them up: 32-bit state for every
``nn.Embedding``."""

from __future__ import annotations

import logging
import sys
from typing import Any

from torch import nn

logger = logging.getLogger("transformers.hf_lpwd")

__all__ = ["keep_embeddings_in_32_bit"]


def keep_embeddings_in_32_bit(base_cls: Any, base_kwargs: dict[str, Any], model: nn.Module) -> None:
    """Register the stock ``create_optimizer``'s override with bitsandbytes' process-global manager.

    (``GlobalOptimManager.register_module_override``; it takes effect at the optimizer's first step.)  Without
    it the embeddings get uint8 Adam state and ``wd`` is no longer the stock Trainer.  bitsandbytes is
    imported already when the base is one of its classes; nothing here imports it.
    """
    if "bitsandbytes" not in str(base_cls) or base_kwargs.get("optim_bits", None) != 8:
        return
    bitsandbytes = sys.modules[base_cls.__module__.split(".")[0]]
    manager = bitsandbytes.optim.GlobalOptimManager.get_instance()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            manager.register_module_override(module, "weight", {"optim_bits": 32})
            logger.debug("bitsandbytes: will optimize %s in fp32", module)
