"""A disk cache in front of any chat backend: nothing is paid for twice.

`CachedChat` wraps a backend (an `OpenAIChat`, a local `TransformersChat`); every reply is stored
in SQLite keyed by a hash of (backend kind, model, messages, sampling params, sample index). A
killed job, a re-run, or `dvc repro --force` replays finished calls from disk; only calls in
flight at the kill are sent again. Server-side sampling of the student caches the `n` choices of
one request as one row (`replies`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from tutorloop.llm.client import Chat, Replies, Sampling


class CachedChat:
    """A chat backend whose replies are kept on disk (SQLite, one row per call).

    SQLite rather than one file per call: commits are atomic and durable across `kill -9`, and
    100K rows stay one file. The key hashes everything that decides the reply; `sample` tells
    independent samples of the same prompt apart (the verifier's second solve).
    """

    def __init__(self, backend, path: str | Path, kind: str | None = None, model: str | None = None,
                 keep_empty: bool = False) -> None:
        """`backend`: a ready Chat, or (with kind and model) a factory called at the first cache
        miss — a fully cached replay needs no API key, no server and no model load. `model` is
        the cache's name for it (the sampler adds the checkpoint's content hash). `keep_empty`:
        cache empty replies too (a student that stops at once gave a real, if bad, sample)."""
        self.keep_empty = keep_empty
        if kind is None:
            self._backend, self._factory = backend, None
            self.kind, self.model = backend.kind, backend.model
        else:
            self._backend, self._factory = None, backend
            self.kind, self.model = kind, model
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, reply TEXT NOT NULL, "
                         "model TEXT, created REAL)")
        self._lock = threading.Lock()
        self._make_lock = threading.Lock()
        self._inflight: dict[str, Future] = {}   # key -> the reply of the call in flight
        self.hits = self.misses = 0

    @property
    def backend(self) -> Chat:
        with self._make_lock:
            if self._backend is None:
                self._backend = self._factory()
            return self._backend

    @staticmethod
    def key(kind: str, model: str, messages: list[dict], sampling: Sampling, sample: int, n: int = 1) -> str:
        parts = [kind, model, messages, sampling.__dict__, sample]
        if n > 1:  # only then, so every single-reply key stays what it was
            parts.append({"n": n})
        blob = json.dumps(parts, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def __call__(self, messages: list[dict], sampling: Sampling, sample: int = 0) -> str:
        return self.replies(messages, sampling, sample)[0].texts[0]

    def replies(self, messages: list[dict], sampling: Sampling, sample: int = 0,
                n: int = 1) -> tuple[Replies, bool]:
        """(the call's replies, whether they came from the cache). `n` > 1: n choices of one
        request, cached as one row (a JSON list); tokens are counted for calls sent only."""
        k = self.key(self.kind, self.model, messages, sampling, sample, n)
        with self._lock:
            row = self._db.execute("SELECT reply FROM calls WHERE key = ?", (k,)).fetchone()
            if row is not None:
                self.hits += 1
                return Replies(json.loads(row[0]) if n > 1 else [row[0]]), True
            # Lookup and call are one step: a second identical miss while the first is in flight
            # waits for its reply instead of paying for the same call again.
            pending, owner = self._inflight.get(k), k not in self._inflight
            if owner:
                pending = self._inflight[k] = Future()
        if not owner:
            got = pending.result()
            with self._lock:
                self.hits += 1
            return got, True
        try:
            got = self._call(k, messages, sampling, sample, n)
            pending.set_result(got)
            return got, False
        except BaseException as err:
            pending.set_exception(err)
            raise
        finally:
            with self._lock:
                del self._inflight[k]

    def _call(self, k: str, messages: list[dict], sampling: Sampling, sample: int, n: int) -> Replies:
        """Send the call (a cache miss) and store its replies under key `k`."""
        if sample:  # a different sample of the same prompt needs a different sampling seed
            sampling = Sampling(**{**sampling.__dict__, "seed": sampling.seed + 7919 * sample})
        backend = self.backend
        if hasattr(backend, "complete"):
            got = backend.complete(messages, sampling, n)
        elif n == 1:
            got = Replies([backend(messages, sampling)])
        else:
            raise TypeError(f"{self.kind} backend cannot return n={n} choices per call")
        stored = json.dumps(got.texts) if n > 1 else got.texts[0]
        with self._lock:
            self.misses += 1
            # an empty reply (filtered, or a server hiccup) is not worth keeping forever, unless
            # emptiness is a legitimate answer (keep_empty)
            if self.keep_empty or any(t.strip() for t in got.texts):
                self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)",
                                 (k, stored, self.model, time.time()))
        return got
