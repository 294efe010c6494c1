"""Running the plan: each (cell, seed) one process (local, ``--jobs`` at a time, or one Ray task each), its
row appended to ``results.jsonl`` once it has succeeded, then the report.

Every run gets the user's command with ``--KEY VALUE`` per grid key, ``--seed s --data_seed s`` (seed s: the
same initialisation, data order and dropout in every cell, so cells are compared seed by seed) and
``--output_dir OUT/runs/<cell>/seed<s>``; a rerun of the same command never repeats a finished run and redoes
an interrupted one (its partial folder is wiped first). """

from __future__ import annotations

import dataclasses
import os
import platform
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

from ..version import __version__
from .errors import CompareError
from .grid import cell_name
from .inputs import INPUTS_KEY
from .outputs import KEPT_BY_DEFAULT, KEPT_WITH_WEIGHTS, collect_outputs, delete_weights
from .plan import CompareOptions, Plan, available_cores, check_metric, child_env, make_plan, write_plan
from .probe import check_command_flags, dry_parse
from .store import RESULTS_NAME, append_result, out_lock, read_results

__all__ = ["ChildProcesses", "RunSpec", "child_env", "execute_run", "machine_info", "run_argv", "run_compare"]

RUNS_DIRNAME = "runs"
RUN_LOG_NAME = "compare.log"


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
    delete_weights: bool = True
    threads_override: bool = False


def run_argv(command: Sequence[str], settings: dict[str, str], seed: int, run_dir: str) -> list[str]:
    """The command of one run: the user's, then the grid flags, the seeds and the output folder (last
    wins)."""
    argv = list(command)
    for key, value in settings.items():
        argv += [f"--{key}", value]
    return argv + ["--seed", str(seed), "--data_seed", str(seed), "--output_dir", run_dir]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    """Where a run ran: host, CPU, cores, threads, load, Python and the library versions (no imports
    needed)."""
    cpu = cpu_name()
    # the code that runs; an editable install's metadata keeps the version it was made at
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
    """The runs a local backend has started, so that an interruption can stop them (none starts once
    stopped)."""

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

    Returns ``{"ok": True, "row": {...}}`` or ``{"ok": False, "error": ..., "log": ...}``; never raises for a
    failing command (a Ray worker returns it like any result).
    """
    run_dir = Path(spec.run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # what an interrupted attempt left behind
    run_dir.mkdir(parents=True)
    log_path = run_dir / RUN_LOG_NAME
    env = child_env(spec.threads, spec.threads_override)
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(spec.argv)}\n")
        log.flush()
        kwargs = {"cwd": spec.cwd, "env": env, "stdout": log, "stderr": subprocess.STDOUT,
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
    threads = int(env["OMP_NUM_THREADS"]) if env["OMP_NUM_THREADS"].isdigit() else spec.threads
    row = {"cell": spec.cell, "settings": spec.settings, "seed": spec.seed, **collected,
           "seconds": round(seconds, 2), "machine": machine_info(threads),
           "kept_weights": not spec.delete_weights, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return {"ok": True, "row": row}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _format_outcome(spec: RunSpec, outcome: dict[str, Any]) -> str:
    text = f"run {spec.cell} seed {spec.seed} failed: {outcome.get('error')}; its log: {outcome.get('log')}"
    tail = outcome.get("tail")
    return text + ("\n--- last lines of the log ---\n" + tail if tail else "")


def _specs(options: CompareOptions, plan: Plan) -> list[RunSpec]:
    specs = []
    cwd = os.getcwd()
    for settings, seed in plan.todo:
        name = cell_name(settings)
        run_dir = str((plan.out / RUNS_DIRNAME / name / f"seed{seed}").resolve())
        specs.append(
            RunSpec(
                name,
                settings,
                seed,
                run_argv(plan.command, settings, seed, run_dir),
                run_dir,
                cwd,
                plan.threads,
                not options.keep_weights,
                plan.threads_override,
            )
        )
    return specs


def run_compare(options: CompareOptions) -> int:
    """The ``compare`` subcommand: plan, check the command (``--help``, a dry parse of every cell), run what
    is missing, write the report; returns the exit status (:class:`CompareError` for bad input)."""
    from .report import write_report

    if options.delete_weights:
        print("hf-lpwd: note: --delete-weights is the default now and does nothing (--keep-weights keeps the "
              "weights)", file=sys.stderr)
    plan = make_plan(options)
    if plan.earlier:
        print(f"hf-lpwd: note: {plan.earlier}", file=sys.stderr)
    specs: list[RunSpec] = []
    if not options.report_only and plan.todo:
        env = child_env(plan.threads, plan.threads_override)
        accepted = check_command_flags(plan.command, plan.axes, env)
        specs = _specs(options, plan)
        firsts: dict[str, RunSpec] = {}
        for spec in specs:
            firsts.setdefault(spec.cell, spec)
        dry_parse(plan.command, accepted, [(s.cell, s.argv) for s in firsts.values()], os.getcwd(), env)
    plan.out.mkdir(parents=True, exist_ok=True)
    status = 0
    if not options.report_only:  # the plan as given now (a new --metric or --reference too), then its runs
        with out_lock(plan.out):
            write_plan(plan)
            if specs:
                kept = KEPT_BY_DEFAULT if not options.keep_weights else KEPT_WITH_WEIGHTS
                print(f"hf-lpwd: {_runs(len(specs))} to do; {kept}", file=sys.stderr, flush=True)
                status = _run_todo(options, plan, specs)
    rows = [r for r in read_results(plan.out / RESULTS_NAME) if r.get("command") == plan.command]
    if not rows:
        print("hf-lpwd: no run has finished yet, so there is no report", file=sys.stderr)
        return status
    paths = write_report(plan.out, plan.axes, plan.cells, plan.seeds, plan.reference, plan.metric, rows,
                         plan.command)
    print(
        f"hf-lpwd: wrote the report of {_runs(len(rows))}: {paths[0]} "
        f"({', '.join(p.name for p in paths[1:])})",
        file=sys.stderr,
    )
    return status


def _run_todo(options: CompareOptions, plan: Plan, specs: list[RunSpec]) -> int:
    """Run the missing (cell, seed) pairs, appending each finished one to results.jsonl; returns the exit
    status."""
    from huggingface_hub.utils import tqdm

    total = plan.asked or len(plan.cells) * len(plan.seeds)
    bar = tqdm(total=total, initial=total - len(specs), desc="compare", unit="run", dynamic_ncols=True)
    results = plan.out / RESULTS_NAME
    status = 0
    finished = 0
    if options.backend == "ray":
        from ..integrations.ray import run_on_ray

        stream: Iterator[tuple[RunSpec, dict[str, Any]]] = run_on_ray(specs, execute_run, jobs=options.jobs,
                                                                       threads=plan.threads,
                                                                       address=options.ray_address,
                                                                       local_cpus=available_cores())
    else:
        stream = _run_local(specs, options.jobs)
    previous = (
        signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    )
    if previous is not None:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for spec, outcome in stream:
            if not outcome.get("ok"):
                if outcome.get("stopped"):
                    continue
                bar.close()
                print(
                    f"hf-lpwd: {'error: ' if outcome.get('bad_output') else ''}"
                    f"{_format_outcome(spec, outcome)}",
                    file=sys.stderr,
                    flush=True,
                )
                status = 2 if outcome.get("bad_output") else 1
                break
            row = {**outcome["row"], "command": plan.command, INPUTS_KEY: plan.inputs}
            row["run_dir"] = os.path.relpath(spec.run_dir, plan.out.resolve())
            append_result(results, row)
            finished += 1
            bar.update(1)
            value = row["metrics"].get(plan.metric)
            shown = f"{value:.6g}" if isinstance(value, (int, float)) else "missing"
            bar.write(f"{spec.cell} seed {spec.seed}: {plan.metric}={shown} ({row['seconds']:.0f} s)")
            if value is None:
                bar.close()
                try:
                    check_metric([row], plan.metric)
                except CompareError as exc:
                    print(f"hf-lpwd: error: {exc}", file=sys.stderr, flush=True)
                status = 2
                break
    except KeyboardInterrupt:
        bar.close()
        if finished or plan.rows:
            where = f"the finished runs are in {results}"
        else:
            where = (f"no run had finished, so nothing is saved yet (the partial runs are in "
                     f"{plan.out / RUNS_DIRNAME})")
        print(f"hf-lpwd: interrupted; {where}: rerun the same command to resume", file=sys.stderr, flush=True)
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
    """Up to ``jobs`` runs at a time as local processes, a new one started only when the caller asks for the
    next result (so none starts after the caller stopped); closing the stream stops the runs still going."""
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


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"
