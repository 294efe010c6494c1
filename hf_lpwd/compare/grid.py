"""The grid of ``hf-lpwd compare``: axes (``--grid``), the cells they expand to, seeds, and each cell's
reference.

An axis is one key with its values, or linked keys whose values move together (``a+b=1+x,2+y``: two cells, not
four), which is how arms that differ in several flags at once (a mode and a profile) sit in one grid.  The
cells are the product of the axes; each cell's reference is the cell with the ``--reference`` values on the
axes named there and the cell's own values on the others. """

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from collections.abc import Sequence
from urllib.parse import quote

from .errors import CompareError

__all__ = [
    "RESERVED_FLAGS",
    "Axis",
    "CompareError",
    "canonical_value",
    "cell_name",
    "check_axes",
    "expand_grid",
    "is_number",
    "parse_axis",
    "parse_reference",
    "parse_seeds",
    "reference_settings",
    "settings_key",
]

RESERVED_FLAGS = ("seed", "data_seed", "output_dir")
"""Flags ``compare`` itself passes to every run; they cannot be grid keys."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """One ``--grid``: a key and its values, or linked keys ``a+b=1+x,2+y`` whose values move together."""

    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @property
    def name(self) -> str:
        return "+".join(self.keys)

    def label(self, value: tuple[str, ...]) -> str:
        return "+".join(value)

    def spec(self) -> str:
        """The ``--grid`` text that :func:`parse_axis` reads back into this axis."""
        return f"{self.name}={','.join(self.label(v) for v in self.values)}"


def is_number(text: str) -> bool:
    """A grid value that is a finite number (its key gets a plot against its values)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_axis(spec: str) -> Axis:
    """``KEY=V1,V2,...`` or ``K1+K2=V1+W1,V2+W2`` → :class:`Axis`; every key is a flag of the command without
    ``--``."""
    name, sep, values_text = spec.partition("=")
    keys = tuple(k.strip().removeprefix("--") for k in name.split("+"))
    if not sep or not all(keys):
        raise CompareError(
            f"--grid {spec!r}: write KEY=VALUE1,VALUE2,... (e.g. --grid weight_decay=0.01,0.1)"
        )
    for key in keys:
        if not _KEY.match(key):
            raise CompareError(f"--grid {spec!r}: {key!r} is not a flag name")
        if key in RESERVED_FLAGS:
            raise CompareError(
                f"--grid {spec!r}: compare passes --{key} to every run itself (seeds: --seeds)"
            )
    if len(set(keys)) != len(keys):
        raise CompareError(f"--grid {spec!r}: a key appears twice")
    items = [v.strip() for v in values_text.split(",")]
    if not any(items):
        raise CompareError(f"--grid {spec!r}: the grid is empty; give at least one value")
    if not all(items):
        raise CompareError(f"--grid {spec!r}: an empty value between commas")
    values = []
    for item in items:
        parts = tuple(p.strip() for p in item.split("+")) if len(keys) > 1 else (item,)
        if len(parts) != len(keys) or not all(parts):
            raise CompareError(f"--grid {spec!r}: {item!r} needs {len(keys)} values joined by '+' "
                               f"(one per key of {'+'.join(keys)})")
        values.append(parts)
    seen: dict[tuple[object, ...], tuple[str, ...]] = {}
    for parts in values:
        same = seen.setdefault(tuple(canonical_value(p) for p in parts), parts)
        if same is not parts:
            twice = "+".join(same) if same == parts else f"{'+'.join(same)} and {'+'.join(parts)}"
            raise CompareError(f"--grid {spec!r}: a value appears twice ({twice}: the same run)")
    return Axis(keys, tuple(values))


def canonical_value(value: str) -> object:
    """What a run reads from a value: 0.1, 0.10 and 1e-1 are one λ, true and True one flag."""
    try:
        return float(value)
    except ValueError:
        return value.lower() if value.lower() in ("true", "false") else value


def check_axes(axes: Sequence[Axis]) -> None:
    if not axes:
        raise CompareError("the grid is empty: give at least one --grid KEY=VALUE1,VALUE2,...")
    seen: set[str] = set()
    for axis in axes:
        for key in axis.keys:
            if key in seen:
                raise CompareError(f"--grid: key {key!r} is given twice")
            seen.add(key)


def expand_grid(axes: Sequence[Axis]) -> list[dict[str, str]]:
    """The cells: the product of the axes (the first axis varies slowest), each a ``{key: value}`` mapping."""
    cells = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        cells.append({k: v for axis, value in zip(axes, combo, strict=True) for k, v in zip(axis.keys, value,
                                                                                              strict=True)})
    return cells


def cell_name(settings: dict[str, str]) -> str:
    """The folder name of a cell: ``key=value`` pairs joined by ``__``, characters a path cannot hold
    %-escaped."""
    return "__".join(f"{k}={quote(v, safe='-_.+')}" for k, v in settings.items())


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise CompareError(f"--seeds {text!r}: write comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds:
        raise CompareError("--seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"--seeds {text!r}: a seed appears twice")
    if any(s < 0 for s in seeds):
        raise CompareError(f"--seeds {text!r}: seeds must be >= 0")
    return seeds


def parse_reference(specs: Sequence[str], axes: Sequence[Axis]) -> dict[str, tuple[str, ...]]:
    """``--reference KEY=VALUE`` → {axis name: value}.  Axes not named follow the cell (``--reference
    weight_decay_mode=wd`` compares every cell with the wd cell at the same λ); with no ``--reference`` at
    all, the reference cell is the first value of every axis."""
    by_name = {axis.name: axis for axis in axes}
    if not specs:
        return {axis.name: axis.values[0] for axis in axes}
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip().removeprefix("--")
        axis = by_name.get(name)
        if not sep or axis is None:
            raise CompareError(f"--reference {spec!r}: write AXIS=VALUE with AXIS one of the grid's "
                               f"({', '.join(by_name)})")
        parts = tuple(p.strip() for p in value.split("+")) if len(axis.keys) > 1 else (value.strip(),)
        if parts not in axis.values:
            raise CompareError(f"--reference {spec!r}: {value!r} is not one of the grid's values for {name} "
                               f"({', '.join(axis.label(v) for v in axis.values)})")
        if name in out:
            raise CompareError(f"--reference: {name} is given twice")
        out[name] = parts
    return out


def reference_settings(settings: dict[str, str], axes: Sequence[Axis],
                       reference: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The settings of the cell that ``settings`` is compared with."""
    out = dict(settings)
    for axis in axes:
        if axis.name in reference:
            out.update(zip(axis.keys, reference[axis.name], strict=True))
    return out


def settings_key(settings: dict[str, str]) -> str:
    return json.dumps(settings, sort_keys=True)
