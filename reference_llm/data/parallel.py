"""`ordered_map`: run a function over tasks in worker processes, results in task order, memory bounded.

`multiprocessing.Pool.imap` would read the whole task iterator ahead (its feeder thread does not wait),
so a corpus would be pulled into memory as fast as it can be read; here at most `in_flight` tasks exist
at once. Workers are started with "spawn": forking a process that has imported torch (training calls
prepare_data) can deadlock on its thread pools. With one worker everything runs in this process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int,
                initializer: Callable[..., Any] | None = None, initargs: tuple[Any, ...] = ()) -> Iterator[R]:
    """fn(task) for each task, in order. At most 2 * workers tasks are submitted and not yet returned."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            yield fn(task)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer, initargs=initargs)
    pending: deque[Future[R]] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(fn, task))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
