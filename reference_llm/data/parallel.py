"""`ordered_map`: run a function over tasks in worker processes, results in task order, memory bounded.

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


def ordered_map(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    workers: int,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[R]:
    """fn(task) for each task, in order. At most 2 * workers tasks are submitted and not yet returned."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            yield fn(task)
        return
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer, initargs=initargs
    )
    pending: deque[Future[R]] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool:
        raise DataError(
            f"a data worker process stopped unexpectedly (killed for lack of memory?); try fewer "
            f"workers (data.workers, now {workers}) or a smaller data.chunk_mb"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_apart(fn: Callable[[T], Any], task: T) -> None:
    """fn(task) in a process of its own, so that the memory it used goes back to the system when it ends
    (a process that frees memory keeps most of it for later)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(fn, task).result()
        except BrokenProcessPool:
            raise DataError("a data worker process stopped unexpectedly (killed for lack of memory?)") from None
