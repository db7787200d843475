"""Where the runs of a sweep execute: a local process pool (the default) or a Ray cluster.

Runs are independent, so an executor only hands each :class:`RunTask` to a worker and yields
each :class:`RunOutcome` as it completes; there is no scheduler of our own. The local pool uses
every core. Its workers are forks of this process, made once the simulator (torch, matplotlib)
is imported here, so they start at once with nothing to import (see :func:`start_method` for
when that is safe; otherwise a ``forkserver`` with the simulator preloaded, ``spawn`` where there
is none). Ray (``pip install 'swarmfl[ray]'``) runs the same function as a remote task, on a
local instance or on the cluster at ``address``.

A run writes its folder itself (see :func:`swarmfl.sim.runner.run_scenario`), so the same task
gives byte-identical ``metrics.jsonl`` whichever executor ran it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from swarmfl.config.scenario_file import Scenario
from swarmfl.errors import ConfigError

__all__ = [
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "RunOutcome",
    "RunTask",
    "execute",
    "make_executor",
    "start_method",
]

EXECUTORS = ("local", "ray")
ERROR_FILE = "error.txt"
RUN_MODULE = "swarmfl.sim.runner"
"""What a run imports (the simulator, torch, matplotlib): loaded once, before workers start."""


@dataclass(frozen=True, slots=True)
class RunTask:
    """One run to execute: the resolved scenario, its folder and the plot titles' tail."""

    scenario: Scenario
    folder: str
    title_note: str = ""


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: ``error`` is None for a finished run, else its one-line reason."""

    folder: str
    error: str | None
    wall_s: float

    @property
    def ok(self) -> bool:
        """Whether the run finished (its summary.json is written)."""
        return self.error is None


def execute(task: RunTask) -> RunOutcome:
    """Run ``task`` into its folder; any exception becomes the outcome's ``error``.

    A failed run leaves ``error.txt`` (the traceback) in its folder and no ``summary.json``, so a
    resumed sweep runs it again. BLAS and OpenMP use one thread in the run, as torch does in the
    simulator: runs are the parallelism, and idle BLAS threads spinning in every worker would
    take the cores the other runs need.
    """
    from swarmfl.sim.runner import run_scenario  # imported in the worker

    start = time.perf_counter()
    folder = Path(task.folder)
    try:
        (folder / ERROR_FILE).unlink(missing_ok=True)
        with threadpool_limits(limits=1):
            run_scenario(task.scenario, folder, title_note=task.title_note)
    except Exception as exc:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ERROR_FILE).write_text(traceback.format_exc(), encoding="utf-8")
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return RunOutcome(task.folder, line, time.perf_counter() - start)
    return RunOutcome(task.folder, None, time.perf_counter() - start)


class Executor(Protocol):
    """Runs tasks and yields their outcomes as they complete (in any order)."""

    slots: int
    """How many runs execute at once."""

    def run(self, tasks: Iterable[RunTask]) -> Iterator[RunOutcome]:
        """Execute every task; yield each outcome when its run ends."""
        ...


def start_method() -> str:
    """How the local pool starts its workers: ``fork`` where it is safe, else ``forkserver``
    (``spawn`` where there is none).

    Only on Linux: macOS system libraries do not survive a fork (Python's default there is
    ``spawn`` for that reason).

    ``fork`` needs no Python thread besides this one: a thread could hold a lock (logging, a
    stream, an import) that would stay held forever in the child. Native thread pools that
    exist by then are safe to leave behind: OpenBLAS re-creates its pool in a child (it has
    ``pthread_atfork`` handlers), and a child never enters an OpenMP (torch) parallel region
    with more than one thread, because :func:`execute` limits BLAS and OpenMP to one thread
    before a run and the simulator calls ``torch.set_num_threads(1)``; so an OpenMP thread team
    the parent may have made is never waited for in the child.
    """
    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class LocalExecutor:
    """A process pool on this machine: ``workers`` processes (default: every core).

    ``method`` is the multiprocessing start method (default: :func:`start_method` at each
    :meth:`run`); a benchmark sets it to compare them.
    """

    def __init__(self, workers: int | None = None, *, method: str | None = None) -> None:
        self.slots = workers or os.cpu_count() or 1
        self.method = method

    def run(self, tasks: Iterable[RunTask]) -> Iterator[RunOutcome]:
        """Start the workers and hand them every task now; yield each outcome as its run ends.

        The workers are started before this returns, so a caller starts its own threads (a
        progress bar) after them: they do not stop the pool from forking.
        """
        queue = list(tasks)
        if not queue:
            return iter(())
        method = self.method or start_method()
        context = multiprocessing.get_context(method)
        if method == "forkserver":
            # Imported once in the fork server, not per worker.
            context.set_forkserver_preload([RUN_MODULE])
        pool = ProcessPoolExecutor(max_workers=min(self.slots, len(queue)), mp_context=context)
        if method != "fork":
            return _outcomes(pool, [pool.submit(execute, task) for task in queue])
        # Imported here once; every worker shares it, copy-on-write. (No gc.freeze() here: the
        # simulation freezes the heap itself while it runs, see swarmfl.sim.vtime.frozen_heap,
        # and a heap frozen already makes its check walk every inherited object, each run.)
        importlib.import_module(RUN_MODULE)
        with warnings.catch_warnings():
            # Python 3.12+ warns on a fork of a process with more than one OS thread; the others
            # here are native BLAS pools, safe as start_method() explains.
            warnings.filterwarnings(
                "ignore",
                message=r".*use of fork\(\) may lead to deadlocks",
                category=DeprecationWarning,
            )
            # The first submit forks every worker, before the pool starts its own threads.
            futures = [pool.submit(execute, task) for task in queue]
        return _outcomes(pool, futures)


def _outcomes(pool: ProcessPoolExecutor, futures: list[Future[RunOutcome]]) -> Iterator[RunOutcome]:
    with pool:
        for future in as_completed(futures):
            yield future.result()


class RayExecutor:
    """Ray remote tasks, one CPU each, on a local instance or the cluster at ``address``.

    Uses the Ray instance already initialised in this process if there is one; else starts or
    joins one (and shuts it down afterwards). ``workers`` caps the runs in flight (default: the
    cluster's CPUs).
    """

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "ray is not installed: pip install 'swarmfl[ray]'", source="--executor"
            ) from None
        self._ray: Any = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, min(workers or cpus, cpus))

    def run(self, tasks: Iterable[RunTask]) -> Iterator[RunOutcome]:
        """Submit the tasks (at most ``slots`` in flight); yield each outcome as it ends."""
        ray = self._ray
        remote = ray.remote(num_cpus=1)(execute)
        queue = list(tasks)
        pending: list[Any] = []
        try:
            while queue or pending:
                while queue and len(pending) < self.slots:
                    pending.append(remote.remote(queue.pop(0)))
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield ray.get(ref)
        finally:
            if self._owned:
                ray.shutdown()


def make_executor(
    kind: str, *, workers: int | None = None, ray_address: str | None = None
) -> Executor:
    """The executor named ``kind`` (``local`` or ``ray``). Raises :class:`ConfigError`."""
    if kind == "local":
        if ray_address is not None:
            raise ConfigError("only with --executor ray", source="--ray-address")
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    raise ConfigError(f"unknown executor {kind!r}; one of {', '.join(EXECUTORS)}")
