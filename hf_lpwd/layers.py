"""Thin re-export: the depths moved to :mod:`hf_lpwd.model.layers` (``hf_lpwd.layers`` keeps importing)."""

from .model.layers import (
    DECLARED_PATTERN_ATTR,
    LayerPattern,
    compile_layer_pattern,
    declared_layer_pattern,
    layer_depths,
    layer_depths_with_count,
    normalize_name,
)

__all__ = [
    "DECLARED_PATTERN_ATTR",
    "LayerPattern",
    "compile_layer_pattern",
    "declared_layer_pattern",
    "layer_depths",
    "layer_depths_with_count",
    "normalize_name",
]
