"""Content hashes of files and folders: the one definition of "these bytes" for cache keys
(a served checkpoint's replies, a training run's resumable folder) and input manifests.

May import: nothing of tutorloop (a leaf).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def update(h, part: Any) -> None:
    """Feed `part` into hash `h`: a file's bytes; a folder's files (relative name, then bytes, in
    sorted order, so renaming a file changes the hash); anything else as sorted-key JSON."""
    if not isinstance(part, Path):
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        return
    files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
    for f in files:
        h.update((f.relative_to(part).as_posix() if part.is_dir() else f.name).encode() + b"\0")
        _feed_bytes(h, f)


def digest(*parts: Any, length: int = 64) -> str:
    """sha256 hex digest of `parts` (files, folders, JSON-able values), cut to `length`."""
    h = hashlib.sha256()
    for part in parts:
        update(h, part)
    return h.hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    """The sha256 of one file's bytes alone (what `sha256sum` prints)."""
    h = hashlib.sha256()
    _feed_bytes(h, Path(path))
    return h.hexdigest()


def _feed_bytes(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
