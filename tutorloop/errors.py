"""The errors a user can fix in a file, an argument or the environment ("bad input").

Imported by every layer, importing nothing of tutorloop but the leaf `tutorloop.secrets` (a
message must be redacted wherever it is printed). `tutorloop.runtime.entry` turns each of them
into one `tutorloop: <file>:<line>: <problem>` line and exit code 2; anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.secrets import redact

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml is invalid; the message lists every problem as `key: value -> reason`.

    `str(err)` is the whole report (kept as it was: tests and logs match on it); `lines()` is the
    same report as one line per problem prefixed with `file:line:`, what a terminal should show.
    `problems` holds the `key: value -> reason` strings (already redacted), `locations` the
    1-based line of each in `path` (None where the key is absent, e.g. a required one).
    """

    def __init__(self, message: str, *, path: str | Path | None = None, problems: list[str] | None = None,
                 locations: list[int | None] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.problems = list(problems or [])
        self.locations = list(locations or [None] * len(self.problems))

    def lines(self) -> list[str]:
        """One line per problem, `file:line: key: value -> reason`; secrets stay redacted."""
        if not self.problems:
            return [redact(" ".join(str(self).split()))]
        where = self.path or str(PARAMS_FILE)
        return [redact(f"{where}:{line}: {p}" if line else f"{where}: {p}")
                for p, line in zip(self.problems, self.locations)]



class DataError(ValueError):
    """An input file is missing, empty or has a bad record; the message names file and line."""


class TeacherError(RuntimeError):
    """The teacher cannot be used as configured (bad key, bad request, unreachable)."""
