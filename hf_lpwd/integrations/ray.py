"""Ray backend of ``hf-lpwd compare`` (``--backend ray``): each (cell, seed) one Ray task.

The task runs :func:`hf_lpwd.compare.execute_run` on a worker: the training command as a subprocess in the
driver's working directory with ``threads`` CPU threads (the task asks Ray for as many CPUs), then reads the
run's output folder there and returns the row, which the driver appends to ``results.jsonl``.  On a cluster,
the working directory and ``--out`` must therefore be on a file system every node sees.  ``--ray-address``
joins an existing cluster (``auto``, ``ray://host:10001``); without it a local Ray instance with this
machine's cores is started and stopped. """

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["check_ray", "run_on_ray"]

LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024
"""A local instance moves only small result rows: a small object store leaves the memory to the runs."""


def check_ray() -> Any:
    """The ``ray`` module, or ``ImportError`` with the install line when Ray is missing (the ``ray``
    extra)."""
    try:
        import ray
    except ImportError:
        raise ImportError('--backend ray needs Ray: pip install "hf_lpwd[ray]"') from None
    return ray


def run_on_ray(specs: Sequence[Any], execute: Callable[[Any], dict[str, Any]], *, jobs: int, threads: int,
               address: str | None = None, local_cpus: int | None = None
               ) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Yield ``(spec, outcome)`` as the tasks finish, at most ``jobs`` in flight; closing the stream cancels
    the rest.

    ``local_cpus``: the CPUs of a local instance (default: all of this machine's).
    """
    ray = check_ray()

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(
                num_cpus=local_cpus,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            )
    task = ray.remote(num_cpus=threads, max_retries=0)(execute)
    queue = list(specs)
    pending: dict[Any, Any] = {}
    try:
        while queue or pending:
            while queue and len(pending) < jobs:
                spec = queue.pop(0)
                pending[task.remote(spec)] = spec
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the worker died, or Ray could not run the task
                    outcome = {"ok": False, "error": f"Ray task failed: {type(exc).__name__}: {exc}",
                               "log": os.path.join(spec.run_dir, "compare.log")}
                yield spec, outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
