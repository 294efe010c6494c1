"""Host numbers for device kernels without a stall per parameter.

Why.  On a GPU, ``float(state["step"])`` waits for every kernel queued before it, and ``torch.tensor(x,
device="cuda")`` is a copy of its own: done per parameter, the host stops feeding the device once per tensor.
These read all step counters (or SPD's conditions) with one transfer and send all of a call's 0-d operands
with one, so a step queues its kernels back to back.  The values are the same as one at a time, bit for bit
(each is rounded once to the tensor's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def read_values(counters: Sequence[torch.Tensor]) -> list[float]:
    """``[float(c) for c in counters]`` (0-d tensors: step counters, SPD's conditions), with one
    device-to-host copy per device, not one per tensor."""
    values: list[float] = [0.0] * len(counters)
    by_device: dict[torch.device, list[int]] = {}
    for i, counter in enumerate(counters):
        by_device.setdefault(counter.device, []).append(i)
    for where in by_device.values():
        read = torch.stack([counters[i].detach() for i in where]).double().tolist()
        for i, value in zip(where, read, strict=True):
            values[i] = value
    return values


def device_scalars(
    device: torch.device, values: Sequence[float | int], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, ...]:
    """0-d ``dtype`` tensors on ``device``, one per value (each the one rounding of the value to ``dtype``).

    On a CPU each is a tensor of its own (compiled CPU kernels keep them in registers either way); elsewhere
    they are views into one tensor sent in one copy.
    """
    if torch.device(device).type == "cpu":
        return tuple(torch.tensor(v, dtype=dtype) for v in values)
    host = torch.tensor(list(values), dtype=dtype, pin_memory=torch.cuda.is_available())
    return tuple(host.to(device, non_blocking=True).unbind(0))
