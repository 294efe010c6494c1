"""DeepSpeed's private names the package relies on (guarded by ``tests/test_compat.py`` where installed)."""

from __future__ import annotations

import torch

PRIVATE_NAMES = ("ZeRO-3 Parameter.ds_tensor",)


def zero3_partition(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding a parameter's values: its local partition under ZeRO-3's ``zero.Init``, else itself.

    Under ZeRO-3 the parameter itself is an empty placeholder between forwards; DeepSpeed has no public
    accessor for the partition it keeps in the attribute ``ds_tensor``.
    """
    partition = getattr(param, "ds_tensor", None)
    return partition if partition is not None else param
