"""Traces side by side: every traced run is independent (its own fake tensors, its own fake process
group), so the two depths of one estimate, the algorithms of a suite and their sizing searches run
in worker processes at once.

    with TracePool(jobs=4) as pool:
        traces = pool.run([args_at_4_layers, args_at_5_layers])   # `simulate.trace_run`'s arguments

`jobs` 1 traces in this process, one after another, as before. With more, a pool of that many
spawned processes (each imports torch and transformers once, a few seconds) takes the traces;
the callers that hold several estimates at once (`estimate_suite`, `size_suite`) wait for them on
threads, each thread only submitting and waiting: no tracing happens on a thread, so the
dispatch modes a trace pushes never meet another trace's. Every figure is the one a serial run
gives (tested): a trace depends only on its arguments.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_JOBS = 6  # three algorithms x two depths: what one estimate of a suite can use at once


def default_jobs() -> int:
    """The cores this process may use, up to `MAX_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_JOBS, cores))


def _trace(args: tuple) -> Any:
    from rlbench.estimate.simulate import trace_run

    return trace_run(*args)


class TracePool:
    """`simulate.trace_run` calls, in this process (`jobs` 1) or in `jobs` worker processes."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.jobs = jobs
        self._pool = (ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
                      if jobs > 1 else None)

    def run(self, calls: list[tuple]) -> list[Any]:
        """Each call's Trace, in order; the first call's `TraceFailed` (or other error) is raised."""
        if self._pool is None:
            return [_trace(args) for args in calls]
        futures: list[Future] = [self._pool.submit(_trace, args) for args in calls]
        return [future.result() for future in futures]

    def each(self, function: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`function` over `items`, in order: on threads when traces run in workers (each thread
        waits on its own traces), one after another otherwise."""
        items = list(items)
        if self._pool is None or len(items) < 2:
            return [function(item) for item in items]
        threads = ThreadPoolExecutor(len(items))
        try:
            return list(threads.map(function, items))
        except BaseException:  # Ctrl-C or a failure: stop the workers rather than wait for their traces
            self.close(stop=True)
            raise
        finally:
            threads.shutdown(wait=False, cancel_futures=True)

    def close(self, stop: bool = False) -> None:
        """Shut the workers down; `stop`: end the traces they are running too (an interrupted
        estimate returns at once, where a worker would finish its trace first)."""
        if self._pool is None:
            return
        pool, self._pool = self._pool, None
        if stop:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=not stop, cancel_futures=True)

    def __enter__(self) -> TracePool:
        return self

    def __exit__(self, kind: Any, *args: Any) -> None:
        self.close(stop=kind is not None)


SERIAL = TracePool(1)
