"""The plan of a compare: the grid's cells × seeds, each cell's reference, what ``results.jsonl`` already
holds, what is left to run and with how many threads; checked in full before anything runs or is written.

The plan's inputs (grid, seeds, reference, metric, command) are saved in ``OUT/compare_plan.json`` when the
runs start, so that ``--report-only`` rebuilds the report from ``OUT`` alone.  A compare into an ``OUT`` that
holds runs of the same command adds to them: its report covers the earlier cells and seeds too (the same axes,
more values or seeds; another design needs another ``OUT``). """

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import CompareError
from .grid import (
    Axis,
    canonical_value,
    check_axes,
    expand_grid,
    parse_axis,
    parse_reference,
    parse_seeds,
    settings_key,
)
from .inputs import check_inputs, input_fingerprints
from .store import RESULTS_NAME, read_results

__all__ = [
    "PLAN_NAME",
    "THREAD_VARIABLES",
    "CompareOptions",
    "Plan",
    "available_cores",
    "child_env",
    "make_plan",
]

PLAN_NAME = "compare_plan.json"
SUMMARY_NAME = "report.json"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""The thread counts of torch / OpenMP / BLAS: a user's value is kept, ``--threads`` overrides it."""
DEFAULT_METRIC = "eval_accuracy"


@dataclasses.dataclass
class CompareOptions:
    """The ``hf-lpwd compare`` command line, as a library call takes it."""

    command: list[str]
    grid: list[str]
    out: str
    seeds: str | None = None
    metric: str | None = None
    reference: list[str] = dataclasses.field(default_factory=list)
    jobs: int = 1
    threads: int | None = None
    backend: str = "local"
    ray_address: str | None = None
    report_only: bool = False
    keep_weights: bool = False
    delete_weights: bool = False
    """Accepted for old command lines: deleting the weights is the default (``keep_weights`` keeps them)."""


@dataclasses.dataclass
class Plan:
    axes: list[Axis]
    cells: list[dict[str, str]]
    seeds: list[int]
    reference: dict[str, tuple[str, ...]]
    metric: str
    command: list[str]
    out: Path
    rows: list[dict[str, Any]]  # finished runs of this command (any cell)
    todo: list[tuple[dict[str, str], int]]
    threads: int
    threads_override: bool
    """``threads`` came from ``--threads`` (it replaces the user's OMP/MKL/OPENBLAS_NUM_THREADS)."""
    asked: int = 0
    """Runs this command line asks for (its cells × its seeds), done or not: the progress bar's total.  The
    report's ``cells`` × ``seeds`` also hold what earlier compares into ``out`` asked for."""
    earlier: str = ""
    """What earlier compares into ``out`` add to the report, in words ('' when nothing)."""
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    """The fingerprints of the files the command names (:mod:`.inputs`), kept with each run."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def child_env(threads: int, override: bool = False) -> dict[str, str]:
    """The run's environment: ours, with ``threads`` CPU threads for torch / OpenMP / BLAS where the user set
    none (``override``: ``--threads`` was given, and replaces what the user set)."""
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        if override or not env.get(name, "").strip():
            env[name] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _user_threads() -> int | None:
    """The user's ``OMP_NUM_THREADS`` when it is a positive integer."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def check_metric(rows: Sequence[dict[str, Any]], metric: str) -> None:
    for row in rows:
        if metric not in row.get("metrics", {}):
            have = ", ".join(sorted(row.get("metrics", {}))) or "none"
            raise CompareError(
                f"--metric {metric}: run {row.get('cell')} seed {row.get('seed')} did not write "
                f"it (its all_results.json has: {have})"
            )


def plan_record(plan: Plan) -> dict[str, Any]:
    """What ``--report-only`` needs besides the runs (``OUT/compare_plan.json``); ``cells`` only where they
    are not the grid's whole product (compares that added values to some cells only)."""
    record: dict[str, Any] = {
        "command": plan.command,
        "grid": [a.spec() for a in plan.axes],
        "seeds": plan.seeds,
        "reference": [f"{name}={'+'.join(v)}" for name, v in plan.reference.items()],
        "metric": plan.metric,
    }
    if [settings_key(c) for c in plan.cells] != [settings_key(c) for c in expand_grid(plan.axes)]:
        record["cells"] = plan.cells
    return record


def write_plan(plan: Plan) -> None:
    path = plan.out / PLAN_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(plan_record(plan), indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _read_plan(out: Path) -> dict[str, Any] | None:
    """The plan file, else the plan an older compare kept in ``report.json`` (grid, seeds, reference)."""
    record = _read_json(out / PLAN_NAME)
    if record is not None:
        return record
    summary = _read_json(out / SUMMARY_NAME)
    try:
        return {"command": summary["command"], "metric": summary["metric"], "seeds": summary["seeds"],
                "grid": [f"{'+'.join(a['keys'])}={','.join('+'.join(v) for v in a['values'])}"
                         for a in summary["grid"]],
                "reference": [f"{k}={'+'.join(v)}" for k, v in summary["reference"].items()]}
    except (TypeError, KeyError, AttributeError):
        return None


def _distinct_values(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[tuple[str, ...]]:
    """The runs' values of ``keys`` (one axis, linked keys together), in the order the runs finished."""
    values: list[tuple[str, ...]] = []
    for row in rows:
        value = tuple(str(row["settings"][k]) for k in keys)
        if value not in values:
            values.append(value)
    return values


def _grid_from_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One axis per settings key, its values in the order the runs finished (outputs without a plan file)."""
    keys = list(dict.fromkeys(key for row in rows for key in row["settings"]))
    return [f"{key}={','.join(v for (v,) in _distinct_values(rows, [key]))}" for key in keys]


@dataclasses.dataclass
class _Design:
    """What a report covers: axes, the cells run along them (their product, or part of it), seeds."""

    axes: list[Axis]
    cells: list[dict[str, str]]
    seeds: list[int]


def _axes_words(axes: Sequence[Axis]) -> str:
    """``mode ∈ {wd, lpwd} × lam ∈ {0.1, 1}``."""
    return " × ".join(f"{a.name} ∈ {{{', '.join(a.label(v) for v in a.values)}}}" for a in axes)


def _planned_design(record: dict[str, Any] | None, command: list[str]) -> _Design | None:
    """The design an earlier compare of ``command`` saved in its plan file (None: none, or another's)."""
    if record is None or record.get("command") != command:
        return None
    try:
        axes = [parse_axis(spec) for spec in record["grid"]]
        seeds = [int(s) for s in record["seeds"]]
    except (KeyError, TypeError, ValueError, CompareError):
        return None
    cells = record.get("cells")
    if not (isinstance(cells, list) and cells and all(isinstance(c, dict) for c in cells)):
        cells = expand_grid(axes)
    return _Design(axes, [{str(k): str(v) for k, v in c.items()} for c in cells], seeds)


def _design_of_runs(rows: Sequence[dict[str, Any]], axes: Sequence[Axis], out: Path) -> _Design:
    """The cells and seeds of finished runs whose compare kept no plan, read along ``axes``' keys."""
    keys = sorted(k for a in axes for k in a.keys)
    for row in rows:
        if sorted(row["settings"]) != keys:
            raise CompareError(
                f"--grid: {out} holds runs over {', '.join(sorted(row['settings']))}; this grid is over "
                f"{', '.join(keys)}. To add values or seeds there, give the same keys; for another design, "
                "give another --out"
            )
    earlier_axes = [Axis(axis.keys, tuple(_distinct_values(rows, axis.keys))) for axis in axes]
    cells = [dict(zip(keys, value, strict=True)) for value in _distinct_values(rows, keys)]
    return _Design(earlier_axes, cells, sorted({int(r["seed"]) for r in rows}))


def _extend(earlier: _Design, axes: Sequence[Axis], seeds: Sequence[int], out: Path
            ) -> tuple[_Design, list[dict[str, str]]]:
    """The report's design (``earlier``'s cells and seeds and this command line's; each axis with its
    earlier values first) and this command line's cells, a value spelled as the earlier runs spelled it (0.10
    where they ran 0.1 is their run, not a new one)."""
    by_name = {a.name: a for a in earlier.axes}
    if sorted(by_name) != sorted(a.name for a in axes):
        given = " ".join(f"--grid {a.spec()}" for a in earlier.axes)
        raise CompareError(
            f"--grid: {out} holds runs over {_axes_words(earlier.axes)}; this grid is over "
            f"{_axes_words(axes)}. "
            f"To add values or seeds there, give the same axes (its grid: {given}, with the values to add); "
            "for another design, give another --out"
        )
    asked_axes, merged = [], []
    for axis in axes:
        old = by_name[axis.name]
        spelled = {tuple(canonical_value(p) for p in v): v for v in old.values}
        values = tuple(spelled.get(tuple(canonical_value(p) for p in v), v) for v in axis.values)
        asked_axes.append(Axis(axis.keys, values))
        merged.append(Axis(axis.keys, old.values + tuple(v for v in values if v not in old.values)))
    asked = expand_grid(asked_axes)
    wanted = {settings_key(c) for c in earlier.cells} | {settings_key(c) for c in asked}
    cells = [c for c in expand_grid(merged) if settings_key(c) in wanted]
    return _Design(merged, cells, sorted(set(earlier.seeds) | set(seeds))), asked


def command_difference(earlier: Sequence[str], now: Sequence[str]) -> str:
    """Where two command lines part, in words: ``--lr 3e-5 here, --lr 2e-5 there``."""
    parts = []
    matcher = difflib.SequenceMatcher(a=list(earlier), b=list(now), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            here = shlex.join(now[j1:j2]) or "nothing"
            there = shlex.join(earlier[i1:i2]) or "nothing"
            parts.append(f"`{here}` here, `{there}` there")
    return "; ".join(parts)


def _report_only_inputs(options: CompareOptions, out: Path) -> CompareOptions:
    """``--report-only`` without a grid or command: take them from the plan file, else from results.jsonl."""
    rows = read_results(out / RESULTS_NAME)
    if not rows:
        raise CompareError(
            f"--report-only: {out / RESULTS_NAME} does not exist or holds no finished run; run "
            "the grid first (hf-lpwd compare --grid ... --out DIR -- COMMAND)"
        )
    record = _read_plan(out) or {}
    command = options.command or record.get("command") or rows[-1].get("command") or []
    mine = [r for r in rows if r.get("command") == command]
    grid = options.grid or record.get("grid") or _grid_from_rows(mine)
    seeds = options.seeds or (",".join(map(str, record["seeds"])) if record.get("seeds") else
                              ",".join(str(s) for s in sorted({int(r["seed"]) for r in mine})))
    reference = options.reference or (record.get("reference", []) if not options.grid else [])
    return dataclasses.replace(options, command=list(command), grid=list(grid), seeds=seeds,
                               reference=list(reference), metric=options.metric or record.get("metric"))


def _check_writable(out: Path) -> None:
    """Refuse an --out no run could write to before any probe or run starts (a read-only or virtual
    filesystem, no permission): a folder is made and removed in ``out`` or its nearest existing parent."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    probe = parent / f".hf-lpwd-write-check-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise CompareError(f"--out {out}: cannot write there ({exc.strerror} in {parent}); "
                           "choose a folder you can write to") from None


def make_plan(options: CompareOptions) -> Plan:
    """Check every argument and read what is already done; raises :class:`CompareError`, writes nothing."""
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out}: exists and is not a folder")
    if not options.report_only:
        _check_writable(out)
    given_grid = bool(options.grid)
    if options.report_only and not (options.command and options.grid):
        options = _report_only_inputs(options, out)
    command = list(options.command)
    if not command:
        raise CompareError("no command: put the training command after `--` "
                           "(hf-lpwd compare --grid ... --out DIR -- python train.py ...)")
    axes = [parse_axis(spec) for spec in options.grid]
    check_axes(axes)
    seeds = parse_seeds(options.seeds if options.seeds is not None else "0,1,2")
    all_rows = read_results(out / RESULTS_NAME)
    rows = [r for r in all_rows if r.get("command") == command]
    if all_rows and not rows:
        earlier = list(all_rows[0].get("command") or [])
        raise CompareError(f"--out {out}: its {RESULTS_NAME} holds runs of another command "
                           f"({shlex.join(earlier)}); this one differs: "
                           f"{command_difference(earlier, command)}. Give another --out, or that command")
    record = _read_plan(out)
    planned = _planned_design(record, command)
    kept = record if planned is not None and record is not None else {}  # this command's earlier plan
    design, asked = _Design(axes, expand_grid(axes), seeds), expand_grid(axes)
    if options.report_only and not given_grid:  # the saved design as it is (its cells, if part of a product)
        if planned is not None:
            design = _Design(planned.axes, planned.cells, seeds)
            asked = design.cells
    elif not options.report_only:  # an --out that holds runs of this command: add to them
        before = planned or (_design_of_runs(rows, axes, out) if rows else None)
        if before is not None:
            design, asked = _extend(before, axes, seeds, out)
    kept_reference = [] if options.report_only else kept.get("reference", [])
    reference = parse_reference(options.reference or kept_reference, design.axes)
    metric = options.metric if options.metric is not None else kept.get("metric") or DEFAULT_METRIC
    if not isinstance(metric, str) or not metric.strip():
        raise CompareError("--metric is empty: name a key of the runs' all_results.json (e.g. eval_accuracy)")
    if options.jobs < 1:
        raise CompareError(f"--jobs {options.jobs}: must be >= 1")
    if options.backend not in ("local", "ray"):
        raise CompareError(f"--backend {options.backend!r}: choose local or ray")
    if options.ray_address and options.backend != "ray":
        raise CompareError("--ray-address needs --backend ray")
    if options.keep_weights and options.delete_weights:
        raise CompareError(
            "--keep-weights and --delete-weights contradict each other: give one (deleting the "
            "weights is the default)"
        )
    cores = available_cores()
    if options.threads is not None and options.threads < 1:
        raise CompareError(f"--threads {options.threads}: must be >= 1")
    if options.backend == "local" and options.jobs > cores:
        raise CompareError(f"--jobs {options.jobs}: more runs at a time than this machine's {cores} cores")
    threads_override = options.threads is not None
    threads = options.threads or _user_threads() or max(1, cores // options.jobs)
    if options.backend == "local" and threads_override and options.jobs * threads > cores:
        raise CompareError(
            f"--jobs {options.jobs} × --threads {threads} = {options.jobs * threads} threads on "
            f"{cores} cores: lower --threads (default: OMP_NUM_THREADS if set, else cores // jobs)"
        )
    wanted = {settings_key(c) for c in design.cells}
    check_metric([r for r in rows if settings_key(r["settings"]) in wanted], metric)
    done = {(settings_key(r["settings"]), int(r["seed"])) for r in rows}
    todo = [(cell, seed) for seed in seeds for cell in asked if (settings_key(cell), seed) not in done]
    added = len(design.cells) * len(design.seeds) > len(asked) * len(seeds)
    earlier = (f"{out} already holds runs of this command: its report covers them too "
               f"({_axes_words(design.axes)}; seeds {', '.join(map(str, design.seeds))})") if added else ""
    if options.report_only and not rows:
        raise CompareError(f"--report-only: {out / RESULTS_NAME} holds no finished run of this command")
    inputs = {} if options.report_only else input_fingerprints(command, os.getcwd())
    if todo:
        check_inputs(rows, inputs, out)
    if options.backend == "ray" and not options.report_only:
        from ..integrations.ray import check_ray

        try:
            check_ray()
        except ImportError as exc:
            raise CompareError(str(exc)) from None
    return Plan(design.axes, design.cells, design.seeds, reference, metric, command, out, rows, todo, threads,
                threads_override, asked=len(asked) * len(seeds), earlier=earlier, inputs=inputs)
