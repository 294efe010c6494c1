"""``hf-lpwd`` command line: inspect the layer-wise decay a model would get; compare decay settings on a task.

``hf-lpwd inspect PATH_OR_MODEL_ID`` builds the model from its config on the meta device (no
weights are allocated or loaded, so a 70B config is inspected in seconds) and prints, per depth,
how many tensors and parameters sit there, their lr multiplier (layer-wise lr decay) and the weight
decay they would get. It answers "did the depth parser understand my model?" before any training
run is spent on it; ``--plot FILE.png`` draws both profiles against depth (needs matplotlib).

``hf-lpwd compare --grid KEY=V1,V2 ... --out DIR -- COMMAND`` runs a training command over a grid × paired seeds and
reports the paired differences (:mod:`hf_lpwd.compare`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .groups import format_layer_table, group_shrink, layer_table, lpwd_param_groups, shrink_warning
from .layers import layer_depths_with_count
from .schedule import trainer_schedule_scales
from .settings import DEFAULT_WEIGHT_DECAY, LR_COUPLINGS, TIED_DEPTHS

__all__ = ["main", "build_meta_model"]

# Auto classes tried, in order, when config.architectures names no class transformers has.
_AUTO_CLASSES = (
    "AutoModelForCausalLM",
    "AutoModelForSeq2SeqLM",
    "AutoModelForImageTextToText",
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForImageClassification",
    "AutoModel",
)
_EXAMPLES_SHOWN = 2


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _load_config(source: str | None, config_file: str | None) -> Any:
    """Load a transformers config from a config.json file, a local directory or a Hub id."""
    from transformers import AutoConfig

    target = config_file or source
    assert target is not None
    looks_local = config_file is not None or os.path.isabs(target) or target.startswith((".", "~"))
    path = os.path.expanduser(target)
    if looks_local and not os.path.exists(path):
        raise CliError(f"{target}: no such file or directory")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise CliError(f"{target}: directory has no config.json (pass --config FILE to use another file)")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported the same way
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"could not load a config from {target}: {first_line}") from exc


def _model_classes(config: Any) -> list[Any]:
    """Classes to try: those named in config.architectures, then the task auto classes."""
    import transformers

    classes = [getattr(transformers, a) for a in (config.architectures or []) if hasattr(transformers, a)]
    for auto_name in _AUTO_CLASSES:
        auto = getattr(transformers, auto_name)
        mapping = getattr(auto, "_model_mapping", None)
        if mapping is None or type(config) in mapping:
            classes.append(auto)
    return classes


def build_meta_model(config: Any) -> nn.Module:
    """Instantiate a model for ``config`` on the meta device: structure only, no memory."""
    errors = []
    for cls in _model_classes(config):
        try:
            with torch.device("meta"):
                if hasattr(cls, "from_config"):
                    return cls.from_config(config)
                return cls._from_config(config)
        except Exception as exc:  # noqa: BLE001 - try the next class, report all at the end
            errors.append(f"{cls.__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
    raise CliError("could not build a model from this config; tried " + "; ".join(errors or ["no class"]))


def _inspect(args: argparse.Namespace) -> int:
    if args.model is None and args.config is None:
        raise CliError("give a model directory or id, or --config FILE")
    config = _load_config(args.model, args.config)
    model = build_meta_model(config)
    try:
        depths = layer_depths_with_count(model, args.layer_pattern)
        groups = lpwd_param_groups(
            model, args.weight_decay, layerwise=not args.uniform, layer_pattern=args.layer_pattern,
            layer_lr_decay=args.layer_lr_decay, tied_depth=args.tied_depth, depths=depths,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    shrink = _run_shrink(args, groups)
    rows = layer_table(groups, shrink)
    n_blocks = depths[1]
    total = sum(row["params"] for row in rows)
    print(f"model: {type(model).__name__} ({getattr(config, 'model_type', '?')}), built on the meta device")
    print(f"blocks: {n_blocks}, depth levels: {n_blocks + 2}, trainable parameters: {total:,}, "
          f"weight decay: {args.weight_decay:g} ({'uniform' if args.uniform else 'layer-wise'}), "
          f"layer lr decay: {args.layer_lr_decay:g}")
    print(format_layer_table(rows, _EXAMPLES_SHOWN))
    if shrink is not None:
        print(f"shrink: S = Σ_t d_t over {args.max_steps} steps of a {args.lr_scheduler_type} schedule from lr "
              f"{args.learning_rate:g} ({args.lr_coupling} coupling)")
        warning = shrink_warning(rows)
        if warning:
            print(warning.replace("--weight_decay", "--weight-decay").replace("--lpwd_decay_timescale",
                                                                            "the Trainer's --lpwd_decay_timescale"))
    if args.plot:
        plot_profiles(rows, args.plot, title=f"{type(model).__name__}: λ={args.weight_decay:g}, "
                      f"γ={args.layer_lr_decay:g}")
        print(f"plot written to {args.plot}")
    return 0


def _run_shrink(args: argparse.Namespace, groups: list[dict[str, Any]]) -> list[float] | None:
    """S per group over the run ``--learning-rate/--max-steps`` describe, ``None`` when they are not given."""
    if args.learning_rate is None and args.max_steps is None:
        return None
    if args.learning_rate is None or args.max_steps is None:
        raise CliError("the shrink column needs both --learning-rate and --max-steps")
    if not args.learning_rate > 0 or args.max_steps < 1:
        raise CliError("--learning-rate must be > 0 and --max-steps >= 1")
    try:
        scales = trainer_schedule_scales(args.lr_scheduler_type, args.max_steps, args.warmup_steps)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    return [group_shrink(float(g["weight_decay"]), args.learning_rate * float(g.get("lr_multiplier", 1.0)), scales,
                         args.lr_coupling) for g in groups]


def plot_profiles(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Draw λ and the lr multiplier per depth (two axes sharing the depth axis) into ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CliError("--plot needs matplotlib: pip install 'hf_lpwd[plot]'") from exc
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CliError(f"--plot {path}: folder {directory} does not exist")
    rows = [r for r in rows if r["depth"] is not None]
    depths = [r["depth"] for r in rows]
    fig, left = plt.subplots(figsize=(6, 3.5))
    left.step(depths, [r["weight_decay"] for r in rows], where="mid", color="tab:red", label="weight decay λ_d")
    left.set_xlabel("depth (0 = embeddings, N+1 = head)")
    left.set_ylabel("weight decay λ_d", color="tab:red")
    right = left.twinx()
    right.step(depths, [r.get("lr_multiplier", 1.0) for r in rows], where="mid", color="tab:blue",
               label="lr multiplier")
    right.set_ylabel("lr multiplier γ^(N+1−d)", color="tab:blue")
    right.set_ylim(0, 1.05)
    left.set_title(title)
    fig.tight_layout()
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-lpwd", description="Layer-wise Pre-weight Decay tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser(
        "inspect",
        help="print the per-depth weight decay a model would get",
        description="Build the model from its config on the meta device and print its depth table.",
    )
    inspect.add_argument("model", nargs="?", help="model directory (with config.json) or Hub model id")
    inspect.add_argument("--config", metavar="FILE", help="a config.json to use instead of a model directory")
    inspect.add_argument("--weight-decay", type=float, default=DEFAULT_WEIGHT_DECAY, metavar="λ",
                         help=f"full rate (default {DEFAULT_WEIGHT_DECAY:g})")
    inspect.add_argument("--uniform", action="store_true", help="uniform λ profile instead of layer-wise")
    inspect.add_argument("--layer-lr-decay", type=float, default=1.0, metavar="γ",
                         help="layer-wise lr decay γ in (0, 1]: lr·γ^(N+1−d) (default 1.0: off)")
    inspect.add_argument("--tied-depth", choices=TIED_DEPTHS, default="input",
                         help="depth of a tied embedding/head matrix (default input: depth 0)")
    inspect.add_argument("--plot", metavar="FILE.png", default=None,
                         help="also draw λ and the lr multiplier against depth (needs matplotlib)")
    inspect.add_argument(
        "--layer-pattern", metavar="REGEX", default=None,
        help=r"regex with one capture group for the block index, e.g. '\.layers\.(\d+)\.'",
    )
    run = inspect.add_argument_group("the run, for the shrink column S = Σ_t d_t (both needed)")
    run.add_argument("--learning-rate", type=float, default=None, metavar="η", help="peak lr of the run")
    run.add_argument("--max-steps", type=int, default=None, metavar="T", help="optimizer steps of the run")
    run.add_argument("--lr-scheduler-type", default="linear", help="a Trainer schedule (default linear)")
    run.add_argument("--warmup-steps", type=int, default=0, help="warm-up steps (default 0)")
    run.add_argument("--lr-coupling", choices=LR_COUPLINGS, default="coupled",
                     help="how the decay follows the lr (default coupled: d = η_t·λ)")
    inspect.set_defaults(func=_inspect)
    from .compare.command import add_parser as add_compare_parser  # the compare tool's own arguments
    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-lpwd`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if argv[:1] == ["compare"] and "--" in argv:  # compare's training command: everything after the first `--`
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = _parser().parse_args(argv)
    if command is not None:
        args.run_command = command
    try:
        return args.func(args)
    except CliError as exc:
        print(f"hf-lpwd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
