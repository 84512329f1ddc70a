"""`Workers.map`, `ordered_map`: run a function over tasks in worker processes, results in task order,
memory bounded.

`multiprocessing.Pool.imap` would read the whole task iterator ahead (its feeder thread does not wait),
so a corpus would be pulled into memory as fast as it can be read; here at most `in_flight` tasks exist
at once. Workers are started with "spawn": forking a process that has imported torch (training calls
prepare_data) can deadlock on its thread pools. With one worker everything runs in this process.
A worker that dies (killed for memory, say) stops the run with a DataError, not a traceback.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from reference_llm.errors import DataError

T = TypeVar("T")
R = TypeVar("R")


def batch_chars(chunk_mb: float, workers: int) -> int:
    """Characters per batch so that the text in flight stays near 2 * chunk_mb MB in all.

    ordered_map keeps 2 * workers batches in flight, and each is held about five times over: the batch,
    its pickled copy on the way to a worker, the worker's working copy and result, and the result on its
    way back (measured with benchmarks/data_prepare.py). So batches of chunk / (5 * workers).
    """
    return max(1 << 16, int(chunk_mb * 1e6) // (5 * max(1, workers)))


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Workers:
    """`count` worker processes, started on first use and shared by every pass of a build: each start costs
    ~0.25 CPU-s (an interpreter and the pipeline's imports), which a pool per pass paid once more per pass.
    With one worker nothing is started and `map` runs in this process. Close it (or use it as a context)."""

    def __init__(
        self, count: int, initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()
    ) -> None:
        self.count = count
        self._initializer, self._initargs = initializer, initargs
        self._pool: ProcessPoolExecutor | None = None
        self._initialized = False

    def map(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[R]:
        """fn(task) for each task, in order. At most 2 * count tasks are submitted and not yet returned."""
        if self.count <= 1:
            if self._initializer is not None and not self._initialized:
                self._initializer(*self._initargs)
                self._initialized = True
            for task in tasks:
                yield fn(task)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.count,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=self._initializer,
                initargs=self._initargs,
            )
        pool = self._pool
        pending: deque[Future[R]] = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(fn, task))
                if len(pending) >= 2 * self.count:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise DataError(
                f"a data worker process stopped unexpectedly (killed for lack of memory?); try fewer "
                f"workers (data.workers, now {self.count}) or a smaller data.chunk_mb"
            ) from None
        finally:
            for future in pending:  # a pass that stopped early leaves nothing queued for the next one
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[R]:
    """fn(task) for each task, in order, in a pool of its own (see Workers.map)."""
    with Workers(workers, initializer, initargs) as pool:
        yield from pool.map(fn, tasks)


def run_apart(fn: Callable[[T], Any], task: T) -> None:
    """fn(task) in a process of its own, so that the memory it used goes back to the system when it ends
    (a process that frees memory keeps most of it for later)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(fn, task).result()
        except BrokenProcessPool:
            raise DataError("a data worker process stopped unexpectedly (killed for lack of memory?)") from None
