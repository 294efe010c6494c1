"""``hf-lpwd compare``: one training command over a grid of settings × paired seeds, with paired statistics.

Every (cell, seed) runs the command with ``--KEY VALUE`` per grid key, ``--seed s --data_seed s`` (seed s: the same
initialisation, data order and dropout in every cell, so cells are compared seed by seed) and ``--output_dir
OUT/runs/<cell>/seed<s>``.  What a finished run leaves behind is read from its output folder:

* ``all_results.json`` (or ``final/all_results.json``): every numeric metric; ``--metric`` picks the one reported;
* ``trainer_state.json``: the per-depth weight norms ``lpwd/weight_norm/depth_DD`` that ``LPWDTrainer`` logs, first and
  last logged value; the norm ratio is ‖θ‖ at the last log / ‖θ‖ at the first log (all depths together);
* the shrink S: ``lpwd_config.json`` (or ``final/lpwd_config.json``) keys ``depth_shrink`` (``{depth: S_d}``) or
  ``shrink`` (the run's largest S), else the last logged ``lpwd/shrink/depth_DD`` values; S of a run is the largest S_d.

``OUT/results.jsonl`` gets one line per finished run, written only once the run has succeeded, so a rerun of the same
command never repeats a finished run and redoes an interrupted one (its partial folder is wiped first).
``OUT/report.md`` and ``OUT/report.json`` hold per cell mean ± std (n) and the paired difference to the reference cell
with its 95 % t-interval (:mod:`hf_lpwd.stats`); ``OUT/*.png`` the plots (:mod:`hf_lpwd.compare_report`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from importlib import metadata
from pathlib import Path
from typing import Any

from .grid import (
    RESERVED_FLAGS,
    Axis,
    CompareError,
    cell_name,
    check_axes,
    expand_grid,
    parse_axis,
    parse_reference,
    parse_seeds,
    settings_key,
)

__all__ = ["CompareError", "CompareOptions", "RunSpec", "collect_outputs", "execute_run", "run_compare"]

RESULTS_NAME = "results.jsonl"
RUNS_DIRNAME = "runs"
RUN_LOG_NAME = "compare.log"
NORM_PREFIX = "lpwd/weight_norm/depth_"
SHRINK_PREFIX = "lpwd/shrink/depth_"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
HELP_TIMEOUT_S = 600


# ---------------------------------------------------------------------------------------------- one run
@dataclasses.dataclass
class RunSpec:
    """Everything one (cell, seed) run needs, picklable (it travels to a Ray worker)."""

    cell: str
    settings: dict[str, str]
    seed: int
    argv: list[str]
    run_dir: str
    cwd: str
    threads: int
    delete_weights: bool = False


def run_argv(command: Sequence[str], settings: dict[str, str], seed: int, run_dir: str) -> list[str]:
    """The command of one run: the user's, then the grid flags, the seeds and the output folder (last wins)."""
    argv = list(command)
    for key, value in settings.items():
        argv += [f"--{key}", value]
    return argv + ["--seed", str(seed), "--data_seed", str(seed), "--output_dir", run_dir]


def child_env(threads: int) -> dict[str, str]:
    """The run's environment: ours, with ``threads`` CPU threads for torch / OpenMP / BLAS (N jobs × threads ≤ cores)."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_info(threads: int) -> dict[str, Any]:
    """Where a run ran: host, CPU, cores, threads, load, Python and the library versions (no imports needed)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from . import (
        __version__,  # the code that runs; an editable install's metadata keeps the version it was made at
    )

    versions: dict[str, str | None] = {"hf_lpwd": __version__}
    for dist in ("torch", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = None
    return {"host": platform.node(), "cpu": cpu, "cores": available_cores(), "threads": threads, "load": load,
            "python": platform.python_version(), **versions}


class ChildProcesses:
    """The runs a local backend has started, so that an interruption can stop them (none starts once stopped)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopped = False

    def start(self, *args: Any, **kwargs: Any) -> subprocess.Popen | None:
        with self._lock:
            if self.stopped:
                return None
            proc = subprocess.Popen(*args, **kwargs)
            self._procs.add(proc)
            return proc

    def done(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            procs = list(self._procs)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def execute_run(spec: RunSpec, children: ChildProcesses | None = None) -> dict[str, Any]:
    """Run one (cell, seed) in a fresh ``spec.run_dir`` and collect what it wrote.

    Returns ``{"ok": True, "row": {...}}`` or ``{"ok": False, "error": ..., "log": ...}``; never raises for a failing
    command (a Ray worker returns it like any result).
    """
    run_dir = Path(spec.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # what an interrupted attempt left behind
    run_dir.mkdir(parents=True)
    log_path = run_dir / RUN_LOG_NAME
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(spec.argv)}\n")
        log.flush()
        kwargs = {"cwd": spec.cwd, "env": child_env(spec.threads), "stdout": log, "stderr": subprocess.STDOUT,
                  "stdin": subprocess.DEVNULL}
        try:
            if children is None:
                proc: subprocess.Popen | None = subprocess.Popen(spec.argv, **kwargs)
            else:
                proc = children.start(spec.argv, **kwargs)
        except OSError as exc:
            return {"ok": False, "error": f"could not start {spec.argv[0]!r}: {exc}", "log": str(log_path)}
        if proc is None:
            return {"ok": False, "error": "stopped before it started", "log": str(log_path), "stopped": True}
        try:
            returncode = proc.wait()
        finally:
            if children is not None:
                children.done(proc)
    seconds = time.perf_counter() - start
    if returncode != 0:
        return {"ok": False, "error": f"exited with status {returncode}", "log": str(log_path),
                "tail": _tail(log_path), "stopped": children is not None and children.stopped}
    try:
        collected = collect_outputs(run_dir)
    except CompareError as exc:
        return {"ok": False, "error": str(exc), "log": str(log_path), "bad_output": True}
    if spec.delete_weights:
        delete_weights(run_dir)
    row = {"cell": spec.cell, "settings": spec.settings, "seed": spec.seed, **collected,
           "seconds": round(seconds, 2), "machine": machine_info(spec.threads),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return {"ok": True, "row": row}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _first_file(run_dir: Path, name: str) -> Path | None:
    for candidate in (run_dir / name, run_dir / "final" / name):
        if candidate.is_file():
            return candidate
    return None


def _depth_values(entry: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in entry.items()
            if k.startswith(prefix) and isinstance(v, (int, float))}


def _shrink_values(raw: Any) -> dict[str, float] | None:
    """``shrink`` of a saved lpwd_config.json: a number, a list indexed by depth, or ``{depth: S_d}``."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return {"all": float(raw)}
    if isinstance(raw, list) and all(isinstance(v, (int, float)) for v in raw):
        return {f"{d:02d}": float(v) for d, v in enumerate(raw)}
    if isinstance(raw, dict) and all(isinstance(v, (int, float)) for v in raw.values()):
        return {(f"{int(k):02d}" if str(k).isdigit() else str(k)): float(v) for k, v in raw.items()}
    return None


def collect_outputs(run_dir: Path) -> dict[str, Any]:
    """The metrics, weight norms and shrink that a finished run left in its output folder (see the module docstring)."""
    results_path = _first_file(run_dir, "all_results.json")
    results = _read_json(results_path) if results_path else None
    if not isinstance(results, dict):
        raise CompareError(f"the run finished but wrote no readable all_results.json in {run_dir} (nor in its "
                           "final/): compare needs a command that saves its metrics there, as the Trainer's "
                           "save_metrics does")
    metrics = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out: dict[str, Any] = {"metrics": metrics, "norm_ratio": None, "weight_norms_first": None,
                           "weight_norms_last": None, "shrink": None, "shrink_per_depth": None}
    state = _read_json(run_dir / "trainer_state.json")
    logs = state.get("log_history", []) if isinstance(state, dict) else []
    norm_logs = [d for d in (_depth_values(e, NORM_PREFIX) for e in logs if isinstance(e, dict)) if d]
    if norm_logs:
        first, last = norm_logs[0], norm_logs[-1]
        total_first = math.sqrt(sum(v * v for v in first.values()))
        total_last = math.sqrt(sum(v * v for v in last.values()))
        out.update(weight_norms_first=first, weight_norms_last=last,
                   norm_ratio=total_last / total_first if total_first > 0 else None)
    config_path = _first_file(run_dir, "lpwd_config.json")
    config = _read_json(config_path) if config_path else None
    shrink = None
    if isinstance(config, dict):  # per depth where the run had depths, else the run's one S
        shrink = _shrink_values(config.get("depth_shrink")) or _shrink_values(config.get("shrink"))
    if shrink is None:
        logged = [d for d in (_depth_values(e, SHRINK_PREFIX) for e in logs if isinstance(e, dict)) if d]
        shrink = logged[-1] if logged else None
    if shrink:
        out.update(shrink_per_depth=shrink, shrink=max(shrink.values()))
    return out


def delete_weights(run_dir: Path) -> None:
    """Remove model weights and checkpoints of a finished run (its JSON files and log stay)."""
    for path in sorted(run_dir.rglob("*"), reverse=True):
        if path.is_dir() and path.name.startswith("checkpoint-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- results file
def read_results(path: Path) -> list[dict[str, Any]]:
    """The finished runs; a line cut by an interruption is skipped (that run is redone)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "settings" in row and "seed" in row:
                    rows.append(row)
    return rows


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one line and sync it to disk (after a line cut by a crash, start a fresh line)."""
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- the command
@dataclasses.dataclass
class CompareOptions:
    command: list[str]
    grid: list[str]
    out: str
    seeds: str = "0,1,2"
    metric: str = "eval_accuracy"
    reference: list[str] = dataclasses.field(default_factory=list)
    jobs: int = 1
    threads: int | None = None
    backend: str = "local"
    ray_address: str | None = None
    report_only: bool = False
    delete_weights: bool = False


@dataclasses.dataclass
class Plan:
    axes: list[Axis]
    cells: list[dict[str, str]]
    seeds: list[int]
    reference: dict[str, tuple[str, ...]]
    out: Path
    rows: list[dict[str, Any]]  # finished runs of this command (any cell)
    todo: list[tuple[dict[str, str], int]]
    threads: int


def _check_metric(rows: Sequence[dict[str, Any]], metric: str) -> None:
    for row in rows:
        if metric not in row.get("metrics", {}):
            have = ", ".join(sorted(row.get("metrics", {}))) or "none"
            raise CompareError(f"--metric {metric}: run {row.get('cell')} seed {row.get('seed')} did not write it "
                               f"(its all_results.json has: {have})")


def make_plan(options: CompareOptions) -> Plan:
    """Check every argument and read what is already done; raises :class:`CompareError`, writes nothing."""
    command = list(options.command)
    if not command:
        raise CompareError("no command: put the training command after `--` "
                           "(hf-lpwd compare --grid ... --out DIR -- python train.py ...)")
    axes = [parse_axis(spec) for spec in options.grid]
    check_axes(axes)
    seeds = parse_seeds(options.seeds)
    reference = parse_reference(options.reference, axes)
    if not options.metric.strip():
        raise CompareError("--metric is empty: name a key of the runs' all_results.json (e.g. eval_accuracy)")
    if options.jobs < 1:
        raise CompareError(f"--jobs {options.jobs}: must be >= 1")
    if options.backend not in ("local", "ray"):
        raise CompareError(f"--backend {options.backend!r}: choose local or ray")
    if options.ray_address and options.backend != "ray":
        raise CompareError("--ray-address needs --backend ray")
    cores = available_cores()
    threads = options.threads if options.threads is not None else max(1, cores // options.jobs)
    if threads < 1:
        raise CompareError(f"--threads {threads}: must be >= 1")
    if options.backend == "local" and options.jobs > cores:
        raise CompareError(f"--jobs {options.jobs}: more runs at a time than this machine's {cores} cores")
    if options.backend == "local" and options.jobs * threads > cores:
        raise CompareError(f"--jobs {options.jobs} × --threads {threads} = {options.jobs * threads} threads on "
                           f"{cores} cores: lower --threads (default: cores // jobs)")
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out}: exists and is not a folder")
    all_rows = read_results(out / RESULTS_NAME)
    rows = [r for r in all_rows if r.get("command") == command]
    if all_rows and not rows:
        raise CompareError(f"--out {out}: its {RESULTS_NAME} holds runs of another command "
                           f"({shlex.join(all_rows[0].get('command') or [])}); use another --out")
    cells = expand_grid(axes)
    wanted = {settings_key(c) for c in cells}
    _check_metric([r for r in rows if settings_key(r["settings"]) in wanted], options.metric)
    done = {(settings_key(r["settings"]), int(r["seed"])) for r in rows}
    todo = [(cell, seed) for seed in seeds for cell in cells if (settings_key(cell), seed) not in done]
    if options.report_only and not rows:
        raise CompareError(f"--report-only: {out / RESULTS_NAME} holds no finished run of this command")
    if options.backend == "ray" and not options.report_only:
        from .integrations.ray import check_ray

        try:
            check_ray()
        except ImportError as exc:
            raise CompareError(str(exc)) from None
    return Plan(axes, cells, seeds, reference, out, rows, todo, threads)


def check_command_flags(command: Sequence[str], axes: Sequence[Axis], threads: int) -> None:
    """The command accepts every grid key and ``--seed --data_seed --output_dir``: its ``--help`` must name them."""
    argv = list(command) + ["--help"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=child_env(threads), stdin=subprocess.DEVNULL,
                              timeout=HELP_TIMEOUT_S)
    except OSError as exc:
        raise CompareError(f"the command could not be started: {shlex.join(command)} ({exc})") from None
    except subprocess.TimeoutExpired:
        raise CompareError(f"`{shlex.join(argv)}` did not finish in {HELP_TIMEOUT_S} s; compare reads the flags "
                           "the command accepts from its --help") from None
    if proc.returncode != 0:
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
        raise CompareError(f"`{shlex.join(argv)}` exited with status {proc.returncode} ({last.strip()}); compare "
                           "reads the flags the command accepts from its --help")
    text = proc.stdout + proc.stderr
    accepted = set(re.findall(r"(?<![\w-])--([A-Za-z_][\w.-]*)", text))
    keys = [k for axis in axes for k in axis.keys]
    for key in keys + list(RESERVED_FLAGS):
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            what = "grid key" if key in keys else "flag compare passes to every run:"
            raise CompareError(f"{what} --{key} is not accepted by the command (its --help does not list it){hint}")


def _format_outcome(spec: RunSpec, outcome: dict[str, Any]) -> str:
    text = f"run {spec.cell} seed {spec.seed} failed: {outcome.get('error')}; its log: {outcome.get('log')}"
    tail = outcome.get("tail")
    return text + ("\n--- last lines of the log ---\n" + tail if tail else "")


def run_compare(options: CompareOptions) -> int:
    """The ``compare`` subcommand: plan, check the command's flags, run what is missing, write the report."""
    from .compare_report import write_report

    plan = make_plan(options)
    command = list(options.command)
    if not options.report_only and plan.todo:
        check_command_flags(command, plan.axes, plan.threads)
    plan.out.mkdir(parents=True, exist_ok=True)
    status = 0
    if not options.report_only and plan.todo:
        status = _run_todo(options, plan, command)
    rows = read_results(plan.out / RESULTS_NAME)
    rows = [r for r in rows if r.get("command") == command]
    write_report(plan.out, plan.axes, plan.cells, plan.seeds, plan.reference, options.metric, rows,
                             command)
    return status


def _specs(options: CompareOptions, plan: Plan, command: list[str]) -> list[RunSpec]:
    specs = []
    cwd = os.getcwd()
    for settings, seed in plan.todo:
        name = cell_name(settings)
        run_dir = str((plan.out / RUNS_DIRNAME / name / f"seed{seed}").resolve())
        specs.append(RunSpec(name, settings, seed, run_argv(command, settings, seed, run_dir), run_dir, cwd,
                             plan.threads, options.delete_weights))
    return specs


def _run_todo(options: CompareOptions, plan: Plan, command: list[str]) -> int:
    """Run the missing (cell, seed) pairs, appending each finished one to results.jsonl; returns the exit status."""
    from huggingface_hub.utils import tqdm

    specs = _specs(options, plan, command)
    total = len(plan.cells) * len(plan.seeds)
    bar = tqdm(total=total, initial=total - len(specs), desc="compare", unit="run", dynamic_ncols=True)
    results = plan.out / RESULTS_NAME
    status = 0
    if options.backend == "ray":
        from .integrations.ray import run_on_ray

        stream: Iterator[tuple[RunSpec, dict[str, Any]]] = run_on_ray(specs, execute_run, jobs=options.jobs,
                                                                       threads=plan.threads,
                                                                       address=options.ray_address,
                                                                       local_cpus=available_cores())
    else:
        stream = _run_local(specs, options.jobs)
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for spec, outcome in stream:
            if not outcome.get("ok"):
                if outcome.get("stopped"):
                    continue
                bar.close()
                print(f"hf-lpwd: {'error: ' if outcome.get('bad_output') else ''}{_format_outcome(spec, outcome)}",
                      file=sys.stderr, flush=True)
                status = 2 if outcome.get("bad_output") else 1
                break
            row = {**outcome["row"], "command": command}
            row["run_dir"] = os.path.relpath(spec.run_dir, plan.out.resolve())
            append_result(results, row)
            bar.update(1)
            value = row["metrics"].get(options.metric)
            shown = f"{value:.6g}" if isinstance(value, (int, float)) else "missing"
            bar.write(f"{spec.cell} seed {spec.seed}: {options.metric}={shown} ({row['seconds']:.0f} s)")
            if value is None:
                bar.close()
                try:
                    _check_metric([row], options.metric)
                except CompareError as exc:
                    print(f"hf-lpwd: error: {exc}", file=sys.stderr, flush=True)
                status = 2
                break
    except KeyboardInterrupt:
        bar.close()
        print(f"hf-lpwd: interrupted; the finished runs are in {results}: rerun the same command to resume",
              file=sys.stderr, flush=True)
        status = 130
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        bar.close()
    return status


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_local(specs: Sequence[RunSpec], jobs: int) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    """Up to ``jobs`` runs at a time as local processes, a new one started only when the caller asks for the next
    result (so none starts after the caller stopped); closing the stream stops the runs still going."""
    children = ChildProcesses()
    queue = list(specs)
    running: dict[Future, RunSpec] = {}
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="hf-lpwd-compare")
    try:
        while queue or running:
            while queue and len(running) < jobs:
                spec = queue.pop(0)
                running[pool.submit(execute_run, spec, children)] = spec
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield running.pop(future), future.result()
    finally:
        children.stop()
        pool.shutdown(wait=True)
