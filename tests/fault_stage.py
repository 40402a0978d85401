"""A stand-in stage for tests/test_faults.py: opens a real `tracking.stage_run`, then misbehaves.

It ends like every stage (`entry.run_main`), so the subprocess tests see exactly what a stage's
command line does with a signal or an exception, without a model or data to make a stage slow.
Inside the run it starts an atomic write (tutorloop.data.jsonl.atomic_open), so a test can check
that a stop leaves neither the output nor its temp file.

    python -m tests.fault_stage sleep OUT    # print "ready", then block until a signal
    python -m tests.fault_stage raise OUT    # a bug: RuntimeError (traceback, run FAILED)
    python -m tests.fault_stage bad-data OUT # bad input inside the run: DataError (one line, exit 2)
    SPIN_LIB=spin.so python -m tests.fault_stage spin OUT  # "ready", then 120 s inside one C call
                                                            # (a long torch op: no bytecode runs)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tutorloop.data.jsonl import atomic_open, read_jsonl
from tutorloop.runtime import tracking
from tutorloop.runtime.entry import run_main


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    with tracking.stage_run("fault", {"mode": mode}, round_key=mode) as log:
        log.metrics({"started": 1})
        with atomic_open(out) as f:
            f.write("half a file")
            f.flush()
            if mode == "sleep":
                print("ready", flush=True)
                while True:  # a stage busy with work; only a signal ends it
                    time.sleep(0.1)
            if mode == "spin":
                import ctypes
                import os

                lib = ctypes.CDLL(os.environ["SPIN_LIB"])   # ctypes releases the GIL, as torch ops do
                lib.spin.argtypes = [ctypes.c_double]
                print("ready", flush=True)
                lib.spin(120.0)
            if mode == "raise":
                raise RuntimeError("a bug in the stage")
            if mode == "bad-data":
                read_jsonl(out.parent / "missing.jsonl")


if __name__ == "__main__":
    run_main(main)
