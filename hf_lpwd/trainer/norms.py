"""‖θ‖₂ per depth for the Trainer's logs, with FSDP2's sharded parameters summed over ranks (never
gathered)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from .._compat.torch import foreach_norm
from ..names import norm_log_key

__all__ = ["params_by_depth", "layer_norms", "anchors_of", "weights_before_resume"]


def params_by_depth(model: nn.Module, depth_of: dict[str, int]) -> dict[int, list[torch.Tensor]]:
    """The trainable parameters of each depth, depths in order."""
    by_depth: dict[int, list[torch.Tensor]] = defaultdict(list)
    for name, param in model.named_parameters():
        if param.requires_grad and name in depth_of:
            by_depth[depth_of[name]].append(param)
    return dict(sorted(by_depth.items()))


@torch.no_grad()
def weights_before_resume(model: nn.Module) -> dict[torch.Tensor, torch.Tensor]:
    """An fp32 copy of each trainable parameter's (local) values, keyed by the parameter, taken before a
    checkpoint's load overwrites them in place (the parameters stay the same objects)."""
    return {p: _local(p).float().clone() for p in model.parameters() if p.requires_grad}


@torch.no_grad()
def anchors_of(
    by_depth: dict[int, list[torch.Tensor]], before_resume: dict[torch.Tensor, torch.Tensor] | None = None
) -> dict[int, list[torch.Tensor]]:
    """θ₀: an fp32 copy of each parameter's (local) values, in :func:`params_by_depth`'s layout; after a
    resume, the values from before the checkpoint's load."""
    before = before_resume or {}
    return {depth: [before[p] if p in before else _local(p).float().clone() for p in params]
            for depth, params in by_depth.items()}


def _squared_norm(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Σ‖t‖² over ``tensors`` as a float32 0-d tensor on ``device`` (one fused norm, no host sync)."""
    tensors = [t for t in tensors if t.numel() > 0]
    if not tensors:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    return torch.stack(norms).square().sum()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor.to_local() if hasattr(tensor, "to_local") else tensor).detach()


@torch.no_grad()
def layer_norms(
    by_depth: dict[int, list[torch.Tensor]],
    anchors: dict[int, list[torch.Tensor]] | None = None,
    key: Callable[[int], str] = norm_log_key,
) -> dict[str, float]:
    """‖θ‖₂ of all parameters of each depth, keyed ``lpwd/weight_norm/depth_DD`` (:mod:`hf_lpwd.names`); with
    ``anchors`` (θ₀, in the same layout) ‖θ − θ₀‖₂, under ``key``.

    Sharded parameters (FSDP2's DTensors) contribute the squared norm of their local shard, summed over ranks
    in one all-reduce per call, and one device-to-host copy.
    """
    depths = list(by_depth)
    first = next(p for params in by_depth.values() for p in params)
    device = (first.to_local() if hasattr(first, "to_local") else first).device
    sharded_rows, replicated_rows = [], []
    mesh_group = None
    for depth in depths:
        sharded, replicated = [], []
        for index, param in enumerate(by_depth[depth]):
            value = _local(param)
            if anchors is not None:
                value = value.float() - anchors[depth][index]
            if hasattr(param, "to_local") and any(p.is_shard() for p in param.placements):  # DTensor shard
                mesh_group = param.device_mesh.get_group() if param.device_mesh.ndim == 1 else None
                sharded.append(value)
            else:
                replicated.append(value)
        sharded_rows.append(_squared_norm(sharded, device))
        replicated_rows.append(_squared_norm(replicated, device))
    sharded_sq, replicated_sq = torch.stack(sharded_rows), torch.stack(replicated_rows)
    if mesh_group is not None or (
        sharded_sq.any() and torch.distributed.is_available() and torch.distributed.is_initialized()
    ):
        torch.distributed.all_reduce(sharded_sq, group=mesh_group)
    totals = (sharded_sq + replicated_sq).sqrt().cpu()
    return {key(depth): round(float(v), 6) for depth, v in zip(depths, totals, strict=True)}
