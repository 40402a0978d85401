"""How the flows and the CLI start DVC: through this interpreter, with its folder first on PATH.

`.venv/bin/tutorloop recipe gsm8k` run without an activated virtualenv has no `dvc` (and the
wrong `python`) on PATH: `dvc` died with FileNotFoundError, and the stages' `python -m
components...` would find the system interpreter. So DVC runs as `python -m dvc` would (its
`main`, less one warning: `dvc()` below) with the interpreter the command itself runs on, and
its folder leads PATH for the stages DVC starts.

A stop must reach the stage, not only DVC: `run_group` starts DVC in a process group of its own
and, when the flow is stopped (Ctrl-C; SIGTERM, which Prefect raises as TerminationSignal; a
cancel from the UI), sends the signal to the whole group — DVC and the stage it runs — and waits
for them, so the stage marks its run KILLED and nothing outlives the flow's file lock.
`subprocess.run` SIGKILLed `dvc` alone and left the stage running.

May import: nothing of tutorloop; used by flows/pipeline.py and the CLI (tutorloop/cli/).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# `dvc exp run` checks the workspace out before it reproduces (dvc/repo/experiments/executor/base.py,
# `allow_missing=True`), and dvc_data logs "No file hash info found for '<path>'. It won't be
# created." (dvc_data/index/checkout.py) for each output dvc.lock has no hash of yet: on a fresh
# clone every output of every stage, ~28 lines before any work, though the stages then create
# them. DVC runs as `python -m dvc` would, with a logging filter on exactly that record: its
# terminal stays its own (progress bars, colours), which a pipe filtering stderr would turn off.
NO_HASH_INFO = "No file hash info found for '%s'. It won't be created."
_MAIN = f"""import logging, sys
for name in ("dvc_data.index.checkout", "dvc_data.hashfile.checkout"):
    logging.getLogger(name).addFilter(lambda record: record.msg != {NO_HASH_INFO!r})
from dvc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def dvc(*args: str) -> list[str]:
    """The command line that runs `dvc <args>` on this interpreter (without the checkout's
    "No file hash info found" warnings, above)."""
    return [sys.executable, "-c", _MAIN, *args]


def interpreter_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) with this interpreter's folder first on PATH, for the stages' `python`."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


STOP_WAIT_S = 30.0   # a stage ends within its own grace (runtime/signals.py, 5 s) plus the run's end


def run_group(cmd: list[str], *, cwd, env: dict[str, str], stop_wait: float = STOP_WAIT_S) -> int:
    """Run `cmd` in its own process group and return its exit code; a stop of this process is
    passed to the whole group (SIGINT for Ctrl-C, else SIGTERM), awaited, then re-raised."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True)
    try:
        return proc.wait()
    except BaseException as stop:
        _stop_group(proc, signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM, stop_wait)
        raise


def _group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` still runs (zombies waiting to be reaped do not count:
    in a container whose PID 1 reaps nothing they would stay for ever)."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False


def _stop_group(proc: subprocess.Popen, sig: int, wait: float) -> None:
    """Signal the group, give all of it (not only DVC, which exits first) `wait` seconds to end,
    then SIGKILL what is left — at once on a second stop."""
    def send(s: int) -> None:
        try:
            os.killpg(proc.pid, s)
        except (ProcessLookupError, PermissionError):
            pass

    send(sig)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.1)
    finally:   # what is left after the wait (or when a second stop cuts it short) is killed
        send(signal.SIGKILL)
        proc.wait()


# --- one flow run or recipe per workspace -------------------------------------------------------
#
# Stages hold the stage lock (pipeline.LOCK) one at a time, so two flow runs (a schedule firing
# while a user runs `tutorloop run`, or a recipe) would interleave their stages in one workspace.
# A whole run holds this lock instead; a second one exits at once naming the holder. It is an
# flock: the kernel drops it when the holder dies, however it dies.

RUN_LOCK = ".tutorloop.run.lock"
_held: set[str] = set()   # workspaces this process holds: a flow inside a held run takes it again


class WorkspaceBusy(RuntimeError):
    """Another flow run or recipe holds this workspace."""


@contextmanager
def workspace_lock(root: str | Path, what: str):
    """Hold `root`'s run lock for `what` (e.g. "tutorloop run"), or raise WorkspaceBusy naming the
    process that holds it; re-entered by the same process (loop_flow -> round_flow) without waiting."""
    import fcntl

    path = Path(root).resolve() / RUN_LOCK
    if str(path) in _held:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise WorkspaceBusy(f"{Path(root).resolve()}: {holder} is running in this workspace; wait for it, or "
                            "stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} ({what})".encode(), 0)
    _held.add(str(path))
    try:
        yield
    finally:
        _held.discard(str(path))
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
