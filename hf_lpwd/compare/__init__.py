"""``hf-lpwd compare``: one training command over a grid of settings × paired seeds, with paired statistics.

The package by concern (none imports torch or transformers: the training runs as subprocesses):

* :mod:`.grid`: axes (``--grid``), the cells they expand to, seeds, each cell's reference;
* :mod:`.plan`: the options, the run plan (what is done, what is left, threads), the plan file;
* :mod:`.probe`: the command's ``--help`` and a dry parse of every cell before the first run;
* :mod:`.runner`: the runs as local processes or Ray tasks, the run loop;
* :mod:`.inputs`: the fingerprints of the files the command names (a changed config is not the same runs);
* :mod:`.outputs`: what a finished run left in its folder (metrics, weight norms, shrink S, weights);
* :mod:`.store`: ``results.jsonl``;
* :mod:`.report`, :mod:`.plots`, :mod:`.stats`: the report, its plots, the paired statistics;
* :mod:`.command`: the ``hf-lpwd compare`` arguments and handler.
"""

from __future__ import annotations

from ..names import NORM_LOG_PREFIX
from .errors import CompareError
from .grid import (
    RESERVED_FLAGS,
    Axis,
    cell_name,
    check_axes,
    expand_grid,
    is_number,
    parse_axis,
    parse_reference,
    parse_seeds,
    reference_settings,
    settings_key,
)
from .outputs import WEIGHT_SUFFIXES, collect_outputs, delete_weights
from .plan import CompareOptions, Plan, available_cores, make_plan
from .probe import HELP_TIMEOUT_S, check_command_flags, dry_parse
from .runner import (
    RUN_LOG_NAME,
    RUNS_DIRNAME,
    ChildProcesses,
    RunSpec,
    child_env,
    execute_run,
    machine_info,
    run_argv,
    run_compare,
)
from .stats import excludes_zero, fmt_diff, fmt_value, mean_std, paired_differences, t_interval, t_quantile
from .store import RESULTS_NAME, append_result, read_jsonl, read_results

NORM_PREFIX = NORM_LOG_PREFIX
"""The old name of :data:`hf_lpwd.names.NORM_LOG_PREFIX`."""

__all__ = [
    "HELP_TIMEOUT_S",
    "NORM_PREFIX",
    "RESERVED_FLAGS",
    "RESULTS_NAME",
    "RUNS_DIRNAME",
    "RUN_LOG_NAME",
    "WEIGHT_SUFFIXES",
    "Axis",
    "ChildProcesses",
    "CompareError",
    "CompareOptions",
    "Plan",
    "RunSpec",
    "append_result",
    "available_cores",
    "cell_name",
    "check_axes",
    "check_command_flags",
    "child_env",
    "collect_outputs",
    "delete_weights",
    "dry_parse",
    "excludes_zero",
    "execute_run",
    "expand_grid",
    "fmt_diff",
    "fmt_value",
    "is_number",
    "machine_info",
    "make_plan",
    "mean_std",
    "paired_differences",
    "parse_axis",
    "parse_reference",
    "parse_seeds",
    "read_jsonl",
    "read_results",
    "reference_settings",
    "run_argv",
    "run_compare",
    "settings_key",
    "t_interval",
    "t_quantile",
]
