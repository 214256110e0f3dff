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

With `keep`, a trace already made with the same arguments and code is read from the cache instead
(`rlbench.estimate.tracecache`; `read` counts them).

A `listener(done, started, what)` hears of every trace as it starts and ends (`what`: the
algorithm, ranks, completions and layers of the latest to start): `rlbench estimate` draws it as a
spinner on the terminal, since a sizing search traces dozens of runs.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_JOBS = 6  # three algorithms x two depths: what one estimate of a suite can use at once
Listener = Callable[[int, int, str], None]  # (traces done, traces started, the latest started)


def cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    """The cores this process may use, up to `MAX_JOBS`."""
    return max(1, min(MAX_JOBS, cores()))


def describe(args: tuple) -> str:
    """One trace, in words, from `simulate.trace_run`'s arguments."""
    suite, algo, _, depth = args[:4]
    ranks = args[8] if len(args) > 8 else 1
    return (f"{algo.label or algo.name} on {ranks} rank{'s' if ranks > 1 else ''}, "
            f"{suite.rollout.completions_per_step} completions, {depth} layers")


def _trace(args: tuple) -> Any:
    from rlbench.estimate.simulate import trace_run

    return trace_run(*args)


class TracePool:
    """`simulate.trace_run` calls, in this process (`jobs` 1) or in `jobs` worker processes."""

    def __init__(self, jobs: int = 1, listener: Listener | None = None, keep: bool = False) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {jobs}")
        self.jobs, self.listener, self.keep = jobs, listener, keep
        self.started = self.done = self.read = 0
        self._latest = ""
        self._counts = threading.Lock()
        self._pool = (ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
                      if jobs > 1 else None)

    def run(self, calls: list[tuple]) -> list[Any]:
        """Each call's Trace, in order; the first call's `TraceFailed` (or other error) is raised.
        With `keep`, traces kept on disk are read back and new ones kept (`tracecache`)."""
        if not self.keep:
            return self._traced(calls)
        from rlbench.estimate import tracecache

        keys = [tracecache.key(args) for args in calls]
        found = [tracecache.load(key) for key in keys]
        todo = [(key, args) for key, args, trace in zip(keys, calls, found) if trace is None]
        with self._counts:
            self.read += len(calls) - len(todo)
        traced = self._traced([args for _, args in todo]) if todo else []
        for (key, _), trace in zip(todo, traced):
            tracecache.store(key, trace)
        fresh = iter(traced)
        return [trace if trace is not None else next(fresh) for trace in found]

    def _traced(self, calls: list[tuple]) -> list[Any]:
        if self._pool is None:
            traces = []
            for args in calls:
                self._count(started=1, what=describe(args))
                traces.append(_trace(args))
                self._count(done=1)
            return traces
        self._count(started=len(calls), what=describe(calls[-1]))
        futures: list[Future] = [self._pool.submit(_trace, args) for args in calls]
        for future in futures:
            future.add_done_callback(lambda _: self._count(done=1))
        return [future.result() for future in futures]

    def _count(self, started: int = 0, done: int = 0, what: str | None = None) -> None:
        with self._counts:
            self.started += started
            self.done += done
            self._latest = what or self._latest
            counts = self.done, self.started, self._latest
        if self.listener is not None:
            self.listener(*counts)

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
