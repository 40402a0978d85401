"""How the flows and the CLI start DVC: through this interpreter, with its folder first on PATH.

`.venv/bin/tutorloop recipe gsm8k` run without an activated virtualenv has no `dvc` (and the
wrong `python`) on PATH: `dvc` died with FileNotFoundError, and the stages' `python -m
components...` would find the system interpreter. So DVC runs as `python -m dvc` with the
interpreter the command itself runs on, and its folder leads PATH for the stages DVC starts.

May import: nothing of tutorloop; used by flows/cli.py and flows/pipeline.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def dvc(*args: str) -> list[str]:
    """The command line that runs `dvc <args>` on this interpreter."""
    return [sys.executable, "-m", "dvc", *args]


def interpreter_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) with this interpreter's folder first on PATH, for the stages' `python`."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
