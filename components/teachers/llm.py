"""Chat backends for LLM teachers, the LLM judge and server-side sampling, with a disk cache
that never pays twice.

* `OpenAIChat`: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through the
  `openai` SDK. The SDK retries 408/409/429/5xx, connection errors and timeouts with exponential
  backoff and honours `Retry-After`; we set its `max_retries` and `timeout` from params.yaml
  rather than wrapping our own loop (rejected: a hand-written retry loop re-implements exactly
  that, worse). 400 and 401 are not retried: they become a `TeacherError` that says what to fix.
  The API key is read from the environment variable *named* in params.yaml and is never logged,
  cached, or put in an error message.
* `TransformersChat`: a local model (e.g. a larger checkpoint on a GPU). Calls from many worker
  threads are micro-batched into one `generate` (up to `batch_size` prompts), because a model
  is fast in batches and slow one prompt at a time.
* `CachedChat`: wraps either; every reply is stored in SQLite keyed by a hash of (backend kind,
  model, messages, sampling params, sample index). A killed job, a re-run, or `dvc repro --force`
  replays finished calls from disk; only calls in flight at the kill are sent again.
* Sampling from a served student (practice/evaluate `backend: openai`, components/sampler.py)
  goes through the same two classes: `OpenAIChat.complete` returns the `n` choices of one
  request with the server's `usage.completion_tokens`, and `CachedChat.replies` caches them.

    python -m components.teachers.llm http://localhost:8000/v1 my-model "What is 2+2?"
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sqlite3
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from components.config import redact


class TeacherError(RuntimeError):
    """The teacher cannot be used as configured (bad key, bad request, unreachable)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int = 0
    json_mode: bool = False


@dataclass(frozen=True)
class Replies:
    """The choices of one call and the completion tokens the server reported for them (0 where
    a backend does not say)."""

    texts: list[str]
    tokens: int = 0


class Chat(Protocol):
    kind: str
    model: str

    def __call__(self, messages: list[dict], sampling: Sampling) -> str: ...


class OpenAIChat:
    """Chat completions from an OpenAI-compatible server."""

    kind = "openai"

    def __init__(self, model: str, base_url: str = "", api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120, max_retries: int = 6, what: str = "generate.teacher") -> None:
        """`what`: the params.yaml section this client is configured by, named in error messages."""
        import openai

        self.model, self.base_url, self.api_key_env = model, base_url or "https://api.openai.com/v1", api_key_env
        self.shown_url = redact(self.base_url)  # what error messages show: no user:token@
        self.what = what
        self._who = who = "the teacher" if what == "generate.teacher" else f"the server of {what}"
        key = os.environ.get(api_key_env, "")
        if not key and not base_url:
            raise TeacherError(f"{who} is api.openai.com but ${api_key_env} is not set")
        # Local servers (vLLM, Ollama, llama.cpp) accept any key; the SDK insists on one.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "not-needed", timeout=timeout,
                                     max_retries=max_retries)
        self._openai = openai
        self.json_mode = True  # False once the server has rejected response_format

    def __call__(self, messages: list[dict], sampling: Sampling) -> str:
        return self.complete(messages, sampling).texts[0]

    def complete(self, messages: list[dict], sampling: Sampling, n: int = 1) -> Replies:
        """`n` choices from one request (the server's `n`; vLLM and OpenAI honour it), with the
        server's completion-token count. A server that returns fewer is an error that says so."""
        json_mode = sampling.json_mode and self.json_mode
        try:
            return self._complete(messages, sampling, json_mode, n)
        except self._openai.BadRequestError as e:
            if not json_mode:
                raise self._rejected(e) from None
            first = e
        # Some OpenAI-compatible servers answer response_format={"type": "json_object"} with 400
        # (llama-cpp-python's accepts it and turns it into a JSON grammar). The prompts ask for
        # JSON anyway and `instruct.parse_json` finds it in prose, so ask once more without it;
        # if that is answered, stop sending it. A 400 for another reason fails again: raised with
        # the first message, which says what the server objected to.
        try:
            replies = self._complete(messages, sampling, False, n)
        except self._openai.BadRequestError:
            raise self._rejected(first) from None
        if self.json_mode:
            self.json_mode = False
            print(f"{self._who}: {self.shown_url} rejected response_format (400); asking for JSON in the prompt only",
                  file=sys.stderr)
        return replies

    def _rejected(self, e) -> TeacherError:
        return TeacherError(f"{self.shown_url} rejected the request (400): {getattr(e, 'message', e)}")

    def _complete(self, messages: list[dict], sampling: Sampling, json_mode: bool, n: int) -> Replies:
        o = self._openai
        extra = {"response_format": {"type": "json_object"}} if json_mode else {}
        if n > 1:  # only when asked: some servers reject the field outright
            extra["n"] = n
        try:
            reply = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_tokens, seed=sampling.seed, **extra)
        except o.BadRequestError:
            raise  # complete() decides: a rejected response_format is retried without it
        except o.AuthenticationError:
            # never echo the server's message: some include a prefix of the key
            raise TeacherError(f"{self.shown_url} rejected the API key in ${self.api_key_env} (401): "
                               "set a valid key in that environment variable") from None
        except o.PermissionDeniedError:
            raise TeacherError(f"{self.shown_url} denied access to model {self.model!r} (403)") from None
        except o.NotFoundError:
            raise TeacherError(f"{self.shown_url} has no model {self.model!r} (404): check {self.what}.model "
                               "and base_url (it usually ends in /v1)") from None
        except o.APITimeoutError:
            raise TeacherError(f"{self.shown_url} timed out on every try; raise {self.what}.timeout "
                               "or lower concurrency") from None
        except o.APIConnectionError:
            raise TeacherError(f"cannot reach {self._who} at {self.shown_url} (retried); is the server up?") from None
        except o.APIStatusError as e:
            raise TeacherError(f"{self.shown_url} kept failing with HTTP {e.status_code} after retries") from None
        choices = sorted(reply.choices, key=lambda c: c.index)
        if len(choices) != n:
            raise TeacherError(f"{self.shown_url} returned {len(choices)} choice(s) for n={n}: the server ignores "
                               f"`n`; set {self.what}.n: false (one request per sample)")
        tokens = getattr(reply.usage, "completion_tokens", None) or 0
        return Replies([c.message.content or "" for c in choices], int(tokens))


class TransformersChat:
    """A local transformers model answering chat calls from many threads, in micro-batches."""

    kind = "transformers"

    def __init__(self, model: str, batch_size: int = 8, dtype: str = "bfloat16", device: str = "auto",
                 wait_s: float = 0.05, calculator: bool = False) -> None:
        from components import modeling

        self.model = model
        dev = modeling.pick_device(device)
        self._lm, self._tok = modeling.load(model, dtype=dtype, device=dev)
        self._batch, self._wait, self._calculator = batch_size, wait_s, calculator
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._worker, daemon=True, name="teacher-batcher").start()

    def __call__(self, messages: list[dict], sampling: Sampling) -> str:
        fut: Future = Future()
        self._queue.put((messages, sampling, fut))
        return fut.result()

    def _worker(self) -> None:
        from components import engine

        while True:
            items = [self._queue.get()]
            deadline = time.monotonic() + self._wait
            while len(items) < self._batch:
                try:
                    items.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[Sampling, list] = {}
            for it in items:  # one generate() per distinct sampling setting
                groups.setdefault(it[1], []).append(it)
            for s, group in groups.items():
                try:
                    prompts = [self._tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                               for m, _, _ in group]
                    gen = engine.generate(self._lm, self._tok, prompts, do_sample=s.temperature > 0,
                                          temperature=s.temperature or 1.0, top_p=s.top_p,
                                          max_new_tokens=s.max_tokens, batch_size=len(prompts), seed=s.seed,
                                          calculator=self._calculator, desc="teacher")
                    for (_, _, fut), text in zip(group, gen.texts):
                        fut.set_result(text[0] if isinstance(text, list) else text)
                except Exception as e:  # noqa: BLE001 - handed to the waiting caller
                    for _, _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)


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
        return got, False


def make_chat(cfg, cache_dir: str | Path, device: str = "auto") -> CachedChat:
    """The configured backend (params.yaml generate.teacher), behind the disk cache."""
    calc = cfg.kind == "transformers" and getattr(cfg, "calculator", False)
    if cfg.kind == "openai":
        def factory() -> Chat:
            return OpenAIChat(cfg.model, cfg.base_url, cfg.api_key_env, cfg.timeout, cfg.max_retries)
    elif cfg.kind == "transformers":
        def factory() -> Chat:
            return TransformersChat(cfg.model, cfg.batch_size, cfg.dtype, device, calculator=calc)
    else:
        raise ValueError(f"teacher kind {cfg.kind!r} has no chat backend")
    # The calculator changes a local model's replies: it is part of the cache key (via kind).
    kind = cfg.kind + ("+calculator" if calc else "")
    return CachedChat(factory, Path(cache_dir) / "calls.sqlite", kind=kind, model=cfg.model)


if __name__ == "__main__":
    chat = OpenAIChat(sys.argv[2], sys.argv[1])
    print(chat([{"role": "user", "content": sys.argv[3]}], Sampling(temperature=0)))
