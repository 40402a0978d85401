"""How every stage's command line ends: bad input is one line and exit code 2; a stop is the signal.

The stage runner (`tutorloop.runtime.stage`) runs every stage through `run_main`, and the
`tutorloop` CLI prints its params errors with `problem_lines`. What `run_main` does with what leaves `main()`:

- Bad input (what the user can fix in a file, an argument or the environment): `ConfigError`
  (params.yaml's syntax or values), `DataError` (a JSONL input), a YAML error, a missing,
  unreadable or mistyped path, and a `TeacherError` (a rejected key, an unknown model, a
  server that cannot be reached). Printed as ``tutorloop: <file>:<line>: <problem>`` on stderr, one
  line per problem, secrets redacted, then exit code 2 (argparse's code for bad usage). Set
  ``TUTORLOOP_TRACEBACK=1`` to get the traceback as well.
- A stop: KeyboardInterrupt (SIGINT) or `signals.Terminated` (SIGTERM; `tracking.stage_run`
  turns it into an exception and has already marked the MLflow run KILLED). One line, then the
  process dies by that same signal, as Python itself does for an uncaught KeyboardInterrupt:
  the shell shows 130 / 143, and a parent sees "killed by signal" (Popen.returncode -2 / -15),
  which is what makes a shell loop or a supervisor stop too instead of carrying on.
- Anything else is a bug, not bad input: it keeps its traceback (and the run is FAILED).

Library code, not a stage: stages import it, it imports no stage.

    tutorloop validate       # see it on a broken params.yaml: one line per problem, exit 2
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from tutorloop.config.loading import yaml_error
from tutorloop.errors import ConfigError, DataError, TeacherError
from tutorloop.runtime.signals import Terminated, die_by
from tutorloop.secrets import redact

PREFIX = "tutorloop: "
BAD_INPUT_EXIT = 2

# OSErrors that name a path the user gave (or a file a stage needs): a wrong path, not a bug.
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
BAD_INPUT = (ConfigError, DataError, TeacherError, yaml.YAMLError) + _PATH_ERRORS


def problem_lines(err: BaseException) -> list[str]:
    """`err` as the lines a terminal shows (no prefix): one per problem, single-line, redacted."""
    if isinstance(err, ConfigError):
        lines = err.lines()
    elif isinstance(err, yaml.YAMLError):  # parsed outside config.read_yaml: name what PyYAML read
        mark = getattr(err, "problem_mark", None)
        lines = yaml_error(Path(mark.name if mark is not None else "<yaml>"), err).lines()
    elif isinstance(err, OSError) and err.filename is not None:
        lines = [f"{err.filename}: {err.strerror or type(err).__name__}"]
    else:
        lines = [str(err) or type(err).__name__]
    # One line each, whatever the message held (a newline would start an unprefixed line).
    return [redact(" ".join(line.split())) for line in lines]


def report(err: BaseException) -> None:
    for line in problem_lines(err):
        print(PREFIX + line, file=sys.stderr)


def run_main(main: Callable[[], Any]) -> None:
    """Run a stage's `main()`: bad input -> one line per problem and exit 2; SIGINT/SIGTERM ->
    one line and death by that signal; other exceptions propagate with their traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print(PREFIX + "stopped by SIGINT", file=sys.stderr)
        die_by(signal.SIGINT)
    except Terminated as stop:
        print(PREFIX + f"stopped by {signal.Signals(stop.signum).name}", file=sys.stderr)
        die_by(stop.signum)
    except BAD_INPUT as err:
        if os.environ.get("TUTORLOOP_TRACEBACK", "") not in ("", "0"):
            raise
        report(err)
        sys.exit(BAD_INPUT_EXIT)
