"""Checks of the training command before the first run: its ``--help`` must list every flag compare passes,
and every cell's command line must parse (a dry parse) where the command allows it.

The dry parse runs a Python training script (``python script.py ...`` or ``python -m module ...``) once for
all cells in one process, with the ``__post_init__`` of ``transformers.TrainingArguments`` and of
``hf_lpwd``'s ``LPWDTrainingArguments`` wrapped: once the outermost one returns, the arguments are parsed and
validated, an ``LPWDTrainingArguments`` also by ``hf_lpwd.trainer.check_training_arguments`` (what
``LPWDTrainer`` refuses from the arguments alone, η·λ ≥ 1 among them), and the script stops there, before it
loads a model or writes a file.  A script that never builds TrainingArguments cannot be stopped that way, so
it is dry-parsed only when its ``--help`` lists the TrainingArguments flags; as a last guard, a ``Trainer``
built during the probe stops it too. """

from __future__ import annotations

import difflib
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import CompareError
from .grid import RESERVED_FLAGS, Axis
from .plan import child_env

__all__ = ["HELP_TIMEOUT_S", "check_command_flags", "dry_parse", "dry_parse_target"]

HELP_TIMEOUT_S = 600
TRAINING_ARGUMENTS_FLAGS = ("output_dir", "per_device_train_batch_size", "lr_scheduler_type")
"""Flags whose presence in ``--help`` says the command parses ``TrainingArguments`` (so a dry parse stops)."""
PROBE_MARK = "hf-lpwd-probe:"

# Runs in the training command's interpreter (``python -c``): stdlib only, plus what the script itself
# imports.
PROBE_SOURCE = r'''
import contextlib, io, json, os, runpy, sys
MARK = "hf-lpwd-probe:"
target, argvs = json.loads(sys.stdin.read())


class Parsed(BaseException):
    """The arguments are parsed and validated: stop the script here."""


class NotParsed(BaseException):
    """The script reached a Trainer without building TrainingArguments first."""


depth = [0]
lpwd_classes = ()
lpwd_check = None


def stop_after(post_init):
    def wrapper(self, *args, **kwargs):
        depth[0] += 1
        try:
            post_init(self, *args, **kwargs)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            if lpwd_check is not None and isinstance(self, lpwd_classes):
                to_config = getattr(self, "to_lpwd_config", None)
                if to_config is not None:
                    to_config()
                lpwd_check(self)  # what LPWDTrainer refuses from the arguments alone (η·λ ≥ 1 among them)
            raise Parsed
    return wrapper


import transformers  # noqa: E402
classes = [transformers.TrainingArguments]
try:
    import hf_lpwd
    classes.append(hf_lpwd.LPWDTrainingArguments)
    lpwd_classes = (hf_lpwd.LPWDTrainingArguments,)
    from hf_lpwd.trainer import check_training_arguments as lpwd_check
except ImportError:
    pass
for cls in classes:
    if "__post_init__" in cls.__dict__:
        cls.__post_init__ = stop_after(cls.__dict__["__post_init__"])


def no_trainer(self, *args, **kwargs):
    raise NotParsed


transformers.Trainer.__init__ = no_trainer
kind, name = target
if kind == "script":
    sys.path[0] = os.path.dirname(os.path.abspath(name))  # what `python script.py` puts first
for argv in argvs:
    sys.argv = [name] + argv
    err = io.StringIO()
    outcome = {"ok": False, "error": None}
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            if kind == "script":
                runpy.run_path(name, run_name="__main__")
            else:
                runpy.run_module(name, run_name="__main__", alter_sys=True)
        outcome["error"] = "the script ended without building TrainingArguments"
        outcome["unknown"] = True
    except Parsed:
        outcome = {"ok": True}
    except NotParsed:
        outcome["error"] = "the script built a Trainer without TrainingArguments"
        outcome["unknown"] = True
    except SystemExit as exc:
        if exc.code in (0, None):
            outcome["error"] = "the script exited before building TrainingArguments"
            outcome["unknown"] = True
        else:
            lines = [x.strip() for x in err.getvalue().splitlines() if x.strip()]
            outcome["error"] = lines[-1] if lines else f"exit status {exc.code}"
    except Exception as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        outcome["error"] = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    print(MARK + json.dumps(outcome), flush=True)
'''


def check_command_flags(command: Sequence[str], axes: Sequence[Axis], env: dict[str, str] | int) -> set[str]:
    """The command accepts every grid key and ``--seed --data_seed --output_dir``: its ``--help`` must name
    them. Returns the flags its ``--help`` lists."""
    if isinstance(env, int):  # the threads per run, as this function took them before
        env = child_env(env)
    argv = list(command) + ["--help"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=HELP_TIMEOUT_S)
    except OSError as exc:
        raise CompareError(f"the command could not be started: {shlex.join(command)} ({exc})") from None
    except subprocess.TimeoutExpired:
        raise CompareError(
            f"`{shlex.join(argv)}` did not finish in {HELP_TIMEOUT_S} s; compare reads the flags "
            "the command accepts from its --help"
        ) from None
    if proc.returncode != 0:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
        raise CompareError(f"`{shlex.join(argv)}` exited with status {proc.returncode} ({last.strip()}); "
                           "compare reads the flags the command accepts from its --help")
    text = proc.stdout + proc.stderr
    accepted = set(re.findall(r"(?<![\w-])--([A-Za-z_][\w.-]*)", text))
    keys = [k for axis in axes for k in axis.keys]
    for key in keys + list(RESERVED_FLAGS):
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            what = "grid key" if key in keys else "flag compare passes to every run:"
            raise CompareError(
                f"{what} --{key} is not accepted by the command (its --help does not list it){hint}"
            )
    return accepted


def dry_parse_target(
    command: Sequence[str], accepted: set[str]
) -> tuple[str, tuple[str, str], list[str]] | None:
    """``(python, ("script", path) or ("module", name), the arguments before compare's)`` when the command is
    a Python script that parses TrainingArguments (its ``--help`` lists their flags); else ``None``."""
    if len(command) < 2 or not re.fullmatch(r"python[\d.]*(\.exe)?", Path(command[0]).name):
        return None
    if not all(flag in accepted for flag in TRAINING_ARGUMENTS_FLAGS):
        return None
    if command[1] == "-m" and len(command) > 2:
        return command[0], ("module", command[2]), list(command[3:])
    if command[1].endswith(".py") and not command[1].startswith("-"):
        return command[0], ("script", command[1]), list(command[2:])
    return None


def dry_parse(command: Sequence[str], accepted: set[str], cells: Sequence[tuple[str, list[str]]], cwd: str,
              env: dict[str, str]) -> None:
    """Parse each ``(cell name, that cell's full command line)`` without training; raises
    :class:`CompareError` naming the first cell the command refuses, with the command's own message."""
    target = dry_parse_target(command, accepted)
    if target is None or not cells:
        return
    python, what, _ = target
    skip = 2 if what[0] == "script" else 3  # python script.py ... / python -m module ...
    payload = json.dumps([list(what), [list(argv[skip:]) for _, argv in cells]])
    try:
        proc = subprocess.run([python, "-c", PROBE_SOURCE], input=payload, capture_output=True, text=True,
                              cwd=cwd, env=env, timeout=HELP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(
            f"hf-lpwd: note: the dry parse of the cells did not run ({type(exc).__name__}); each cell's "
            "command "
            "line is checked by its first run",
            file=sys.stderr,
        )
        return
    outcomes = [json.loads(line[len(PROBE_MARK):]) for line in proc.stdout.splitlines()
                if line.startswith(PROBE_MARK)]
    if len(outcomes) != len(cells):
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
        print(f"hf-lpwd: note: the dry parse of the cells stopped early ({last.strip() or proc.returncode}); "
              "each cell's command line is checked by its first run", file=sys.stderr)
        return
    for (name, argv), outcome in zip(cells, outcomes, strict=True):
        if not outcome.get("ok") and not outcome.get("unknown"):
            raise CompareError(f"cell {name}: the command refuses its arguments: {outcome.get('error')} "
                               f"(dry parse of `{shlex.join(argv)}`); change that grid value")
