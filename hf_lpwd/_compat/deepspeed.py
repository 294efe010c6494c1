"""DeepSpeed's private names the package relies on (guarded by ``tests/test_compat.py`` where installed)."""

from __future__ import annotations

from typing import Any

import torch

PRIVATE_NAMES = (
    "ZeRO-3 Parameter.ds_tensor",
    "DeepSpeedZeroOptimizer_Stage3.fp32_partitioned_groups_flat",
    "DeepSpeedZeroOptimizer_Stage3.sub_group_to_group_id",
    "DeepSpeedZeroOptimizer_Stage3._partition_all_parameters",
    "DeepSpeedZeroOptimizer_Stage3._reassign_or_swap_out_partitioned_parameters",
    "DeepSpeedZeroOptimizer_Stage3.persistent_parameters",
)


def zero3_partition(param: torch.Tensor) -> torch.Tensor:
    """The tensor holding a parameter's values: its local partition under ZeRO-3's ``zero.Init``, else itself.

    Under ZeRO-3 the parameter itself is an empty placeholder between forwards; DeepSpeed has no public
    accessor for the partition it keeps in the attribute ``ds_tensor``.
    """
    partition = getattr(param, "ds_tensor", None)
    return partition if partition is not None else param


def is_zero3_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is DeepSpeed's ZeRO-3 optimizer (it holds the fp32 masters per sub-group)."""
    return hasattr(optimizer, "fp32_partitioned_groups_flat") and hasattr(optimizer, "sub_group_to_group_id")


def zero3_masters(zero3: Any) -> list[tuple[int, torch.Tensor]] | None:
    """(param group index, fp32 master partition) of each ZeRO-3 sub-group, as its ``step()`` hands them to
    the client optimizer one at a time; ``None`` where some are not in memory (swapped out to NVMe)."""
    if getattr(zero3, "swap_optimizer", False):
        return None
    masters = list(zero3.fp32_partitioned_groups_flat)
    if any(m is None for m in masters):
        return None
    return [(zero3.sub_group_to_group_id[index], master) for index, master in enumerate(masters)]


def zero3_masters_to_model(zero3: Any) -> None:
    """Copy the fp32 masters into the model's weights as ``step()`` does: release every gathered parameter
    (the persistent ones, small and kept whole on every rank, included), copy each sub-group's masters into
    the partitions, gather the persistent ones again.  A collective: on every rank."""
    zero3._partition_all_parameters()
    for index in range(len(zero3.fp32_partitioned_groups_flat)):
        zero3._reassign_or_swap_out_partitioned_parameters(index)
    persistent = getattr(zero3, "persistent_parameters", None)
    if persistent:
        persistent[0].all_gather(persistent)
    invalidate = getattr(zero3, "invalidate_secondary_tensor", None)
    if callable(invalidate):  # hpZ's secondary copies were taken from the weights before the division
        invalidate()
