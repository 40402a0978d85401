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

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")
POLL_S = 0.2   # how often the waiting main thread wakes to run pending signal handlers


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
        index = {pool.submit(fn, item): i for i, item in enumerate(items)}
        pending = set(index)
        while pending:
            # A bounded wait, not as_completed's: a signal the kernel hands to a worker thread only
            # sets a flag, and its handler (KeyboardInterrupt, Terminated) runs when the main thread
            # next executes Python; blocked on a lock until a hung call returned, it would not.
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=index.__getitem__):
                results[index[fut]] = fut.result()   # the first failure is raised here
                if on_done:
                    on_done(results[index[fut]])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results
