"""A thread pool that stops promptly: the one way the library runs I/O-bound calls in parallel
(teacher agents, the LLM judge, requests to a served student).

Not `with ThreadPoolExecutor(...)`: its exit waits for every queued call, so a SIGTERM or Ctrl-C
raised in the main thread (or the first failure) would wait out the whole queue — minutes of
teacher calls, or timeout x retries of a hung server. Here the first exception, from a call or a
stop request, drops what has not started and returns at once; calls already in flight end with
the process (their results are simply not recorded).

May import: nothing of tutorloop (a leaf).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def run_all(fn: Callable[[T], R], items: Iterable[T], *, workers: int, name: str,
            on_done: Callable[[R], None] | None = None) -> list[R]:
    """`fn(item)` for every item, at most `workers` at once; results in the items' order.

    `on_done(result)` runs in the calling thread as each call finishes (progress, journaling).
    `workers` <= 1 runs the calls one after another in this thread.
    """
    items = list(items)
    if workers <= 1:
        results = []
        for item in items:
            results.append(fn(item))
            if on_done:
                on_done(results[-1])
        return results
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    results: list = [None] * len(items)
    try:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()   # the first failure is raised here
            if on_done:
                on_done(results[futures[fut]])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results
