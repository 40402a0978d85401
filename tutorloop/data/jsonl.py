"""JSONL in and out, with errors that name the file and line.

Stages hand off through JSONL files that DVC tracks. Reading validates the fields a stage needs,
so an unparsable or incomplete record stops the stage with `file:line` instead of a KeyError
three functions later, and an empty input is an error, not a silently empty model.

    python -c "from tutorloop.data.jsonl import read_jsonl; print(len(read_jsonl('data/generated/test.jsonl')))"
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from tutorloop.errors import DataError


def read_jsonl(path: str | Path, required: Iterable[str] = (), allow_empty: bool = False) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    rows = []
    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085 and friends, which
    # json.dumps(ensure_ascii=False) leaves raw inside strings (GSM8K train has them).
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected an object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(f"{path}:{n}: missing field(s) {missing}")
        rows.append(row)
    if not rows and not allow_empty:
        raise DataError(f"{path}: no records")
    return rows


@contextmanager
def atomic_open(path: str | Path):
    """Write to a temp file beside `path` and rename it into place: a killed stage never leaves
    half a file for DVC to hash. A write stopped by an exception (SIGTERM/Ctrl-C raise one inside
    a stage run, see tracking.py) removes its temp file instead of leaving *.tmp litter."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8")
    try:
        with f:
            yield f
        os.replace(f.name, path)
    except BaseException:
        Path(f.name).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows atomically, one JSON object per line; returns the count."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(obj, path: str | Path) -> None:
    """Write one JSON document atomically (metrics files DVC reads)."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
