"""Signals for stages: SIGTERM as an exception, signals held while a run is being ended, and
death by the signal that stopped us (the exit status a shell and a supervisor expect).

SIGTERM's default action kills the process on the spot, which left MLflow runs RUNNING forever,
so while a stage run is open SIGTERM raises `Terminated` instead (`sigterm_raises`); the stage
runner then exits the way a signal would (`die_by`: the shell shows 143 / 130).

May import: nothing of tutorloop (a leaf under runtime/).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(BaseException):
    """SIGTERM, raised in the main thread while a stage run is open.

    A BaseException, like KeyboardInterrupt, so `except Exception` in stage code does not swallow
    a stop request; not a KeyboardInterrupt subclass, because an uncaught KeyboardInterrupt makes
    Python kill itself with SIGINT, and the parent should see the signal that was actually sent.
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _in_main_thread() -> bool:
    # signal.signal() only works there; a stage_run opened from a worker thread (a Prefect task
    # runner, a test) keeps the process's handlers as they are.
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While open, SIGTERM raises Terminated; the previous handler is restored on exit."""
    if not _in_main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    # SIG_IGN: someone asked for SIGTERM to be ignored (keep it so); ours: a nested stage run.
    if previous in (signal.SIG_IGN, _raise_terminated):
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        # None: a handler installed outside Python; the closest we can restore is the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """Hold SIGINT/SIGTERM while a run is being ended: a second Ctrl-C (or the SIGTERM a
    supervisor sends after a SIGINT) must not interrupt the write that ends the run and leave it
    RUNNING after all. Held signals are listed in the yielded list; a signal sent twice during
    the wait goes through (a hung tracking server must not make the stage unkillable)."""
    held: list[int] = []
    if not _in_main_thread():
        yield held
        return

    def hold(signum, frame):
        if signum in held:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated(signum)
        held.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def die_by(signum: int) -> None:
    """End the process by `signum` with its default action (the exit status a signal gives)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe must not stop us from stopping
            pass
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    # raise_signal delivers to this thread before it returns (os.kill to our pid may land in
    # another thread, later); the default action ends the process here.
    signal.raise_signal(signum)
    sys.exit(128 + signum)  # not reached; the shell's number for it, should the signal not kill
