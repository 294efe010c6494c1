"""``hf-lpwd compare``: the subcommand's arguments (:func:`add_parser`) and its handler (:func:`main`).

``hf_lpwd/cli.py`` splits the training command off at the first ``--`` and hands it over as ``run_command``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import CompareError
from .plan import CompareOptions

__all__ = ["add_parser", "main", "options_from_args"]

EXAMPLE = (
    "hf-lpwd compare --grid weight_decay_mode=wd,lpwd --grid weight_decay=0.01,0.1 --seeds 0,1,2 --out "
    "runs/cmp --reference weight_decay_mode=wd -- python recipes/text_classification.py CONFIG.yaml"
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``compare`` to the ``hf-lpwd`` subcommands (abbreviated flags are refused, not guessed)."""
    compare = subparsers.add_parser(
        "compare",
        help="run a training command over a grid × paired seeds and report paired differences",
        description="Run the command after `--` once per (grid cell, seed) with --KEY VALUE per grid key, "
        "--seed s --data_seed s and --output_dir OUT/runs/<cell>/seed<s>; read each run's all_results.json; "
        "write OUT/results.jsonl (resumable), OUT/report.md and plots. Before the first run, the command's "
        "--help must list every grid key, and every cell's command line is dry-parsed where the command "
        f"parses TrainingArguments. Example: {EXAMPLE}",
        usage="hf-lpwd compare --grid KEY=V1,V2 [--grid ...] --out DIR [options] -- COMMAND ...",
        allow_abbrev=False,
    )
    compare.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a flag of the command and its values (repeat for a product; K1+K2=A+B,C+D links "
        "keys whose values move together)",
    )
    compare.add_argument(
        "--seeds", default=None, help="comma-separated seeds, the same in every cell (default 0,1,2)"
    )
    compare.add_argument(
        "--out", required=True, metavar="DIR", help="folder of results.jsonl, report.md, plots, runs/"
    )
    compare.add_argument("--metric", default=None,
                         help="key of the runs' all_results.json to report (default eval_accuracy)")
    compare.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the reference value of a grid key (repeatable); the other keys follow the cell. "
        "Default: the first value of every grid key",
    )
    compare.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    compare.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run; replaces OMP/MKL/OPENBLAS_NUM_THREADS (default: the ones you "
        "set, else cores // jobs)",
    )
    compare.add_argument("--backend", choices=("local", "ray"), default="local",
                         help="local processes, or one Ray task per run (pip install \"hf_lpwd[ray]\")")
    compare.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="an existing Ray cluster (e.g. auto, ray://host:10001); default: a local instance",
    )
    compare.add_argument(
        "--report-only",
        action="store_true",
        help="only rebuild the report from DIR (results.jsonl and the plan saved there): no grid "
        "or command needed",
    )
    compare.add_argument(
        "--keep-weights",
        action="store_true",
        help="keep each run's weights and checkpoints (default: a run keeps only its JSON files and log)",
    )
    compare.add_argument("--delete-weights", action="store_true",
                         help="the default now; accepted for old command lines and does nothing")
    compare.set_defaults(func=main, run_command=None)
    return compare


def options_from_args(args: argparse.Namespace) -> CompareOptions:
    return CompareOptions(
        command=list(args.run_command or []),
        grid=args.grid,
        out=args.out,
        seeds=args.seeds,
        metric=args.metric,
        reference=args.reference,
        jobs=args.jobs,
        threads=args.threads,
        backend=args.backend,
        ray_address=args.ray_address,
        report_only=args.report_only,
        keep_weights=args.keep_weights,
        delete_weights=args.delete_weights,
    )


def main(args: argparse.Namespace) -> int:
    """The handler: run the compare; bad input is one ``hf-lpwd: error:`` line and exit status 2."""
    from .runner import run_compare

    try:
        return run_compare(options_from_args(args))
    except CompareError as exc:
        print(f"hf-lpwd: error: {exc}", file=sys.stderr)
        return 2
