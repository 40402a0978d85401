"""Signals for stages: SIGTERM as an exception, signals held while a run is being ended, and
death by the signal that stopped us (the exit status a shell and a supervisor expect).

SIGTERM's default action kills the process on the spot, which left MLflow runs RUNNING forever,
so while a stage run is open SIGTERM raises `Terminated` instead (`sigterm_raises`); the stage
runner then exits the way a signal would (`die_by`: the shell shows 143 / 130).

May import: nothing of tutorloop (a leaf under runtime/).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


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
    """While open, SIGTERM raises Terminated; the previous handler is restored on exit. A stop
    the main thread cannot act on within the grace period ends the process (`_watchdog`)."""
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
        with _watchdog():
            yield
    finally:
        # None: a handler installed outside Python; the closest we can restore is the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


# --- stops the main thread cannot act on ----------------------------------------------------
#
# A Python signal handler runs only between bytecodes of the main thread. A stage inside one long
# torch call (a bf16 backward took 424 s on a CPU without native bf16) ignored two SIGTERMs for
# minutes, and Docker/Kubernetes send SIGKILL 10-30 s after SIGTERM. The C-level handler does run
# at once, and writes the signal number to the wakeup fd: a watchdog thread reads it there, gives
# the main thread `grace_seconds()` to stop in order (Terminated / KeyboardInterrupt, run KILLED,
# death by the signal), and otherwise runs the hard-stop hooks (the stage run marks itself
# KILLED) and ends the process with 128 + signum (143 / 130).

GRACE_ENV = "TUTORLOOP_STOP_GRACE_S"
_hard_stop_hooks: list[Callable[[int], None]] = []


def grace_seconds() -> float:
    """How long a stop waits for the main thread before the process is ended (default 5 s)."""
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, "5")))
    except ValueError:
        return 5.0


@contextmanager
def on_hard_stop(hook: Callable[[int], None]) -> Iterator[None]:
    """While open, `hook(signum)` runs (on the watchdog thread) before a hard stop ends the process."""
    _hard_stop_hooks.append(hook)
    try:
        yield
    finally:
        _hard_stop_hooks.remove(hook)


def _hard_stop(signum: int) -> None:
    name = signal.Signals(signum).name
    for hook in list(_hard_stop_hooks):
        try:
            hook(signum)
        except Exception as err:  # noqa: BLE001 - nothing may keep a stop from stopping
            print(f"tutorloop: while stopping: {type(err).__name__}: {err}", file=sys.stderr)
    print(f"tutorloop: stopped by {name} (the stage was inside a long call: ended after "
          f"{grace_seconds():g} s)", file=sys.stderr, flush=True)
    os._exit(128 + signum)


@contextmanager
def _watchdog() -> Iterator[None]:
    """Watch for SIGINT/SIGTERM on the wakeup fd while open (main thread only)."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:   # not the main thread after all, or no wakeup fd support: no watchdog
        reader.close()
        writer.close()
        yield
        return
    done = threading.Event()

    def watch() -> None:
        with reader:
            while True:
                try:
                    data = reader.recv(64)
                except OSError:
                    return
                if not data or done.is_set():
                    return
                stops = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
                if stops and not done.wait(grace_seconds()):
                    _hard_stop(stops[0])

    threading.Thread(target=watch, name="tutorloop-stop-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        writer.close()   # the watchdog's recv returns b"": it ends


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
