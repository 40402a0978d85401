"""The client for every OpenAI-compatible server: the teacher, the LLM judge, a served student.

`OpenAIChat` talks to any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through the
`openai` SDK. The SDK retries 408/409/429/5xx, connection errors and timeouts with exponential
backoff and honours `Retry-After`; we set its `max_retries` and `timeout` from params.yaml
rather than wrapping our own loop (rejected: a hand-written retry loop re-implements exactly
that, worse). 400 and 401 are not retried: they become a `TeacherError` that says what to fix.
The API key is read from the environment variable *named* in params.yaml and is never logged,
cached, or put in an error message. `OpenAIChat.complete` returns the `n` choices of one
request with the server's `usage.completion_tokens` (server-side sampling of the student).
Built from the one `config.Endpoint` shape by `OpenAIChat.of(endpoint, model=..., what=...)`.
"""


from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Protocol

from tutorloop.errors import TeacherError
from tutorloop.secrets import redact


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


OPENAI_KEY = "OPENAI_API_KEY"   # sent to api.openai.com only (`api_key_env` names another server's key)


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
        from urllib.parse import urlsplit

        parts = urlsplit(self.base_url)
        if parts.username or parts.password:
            # a URL is logged, locked (dvc.lock) and committed: credentials never ride in one
            raise TeacherError(f"{who} at {self.shown_url}: credentials inside the URL; put the key in the "
                               f"environment variable named by {what}.api_key_env instead")
        key = os.environ.get(api_key_env, "")
        if api_key_env == OPENAI_KEY and not (parts.hostname or "").endswith("openai.com"):
            key = ""   # an OpenAI key goes to OpenAI only; another server's key lives in a variable of its own
        if not key and not base_url:
            raise TeacherError(f"{who} is api.openai.com but ${api_key_env} is not set")
        # Local servers (vLLM, Ollama, llama.cpp) accept any key; the SDK insists on one.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "not-needed", timeout=timeout,
                                     max_retries=max_retries)
        self._openai = openai
        self.json_mode = True  # False once the server has rejected response_format

    @classmethod
    def of(cls, endpoint, *, model: str | None = None, what: str = "generate.teacher"):
        """The client for a `config.Endpoint` (teacher, judge, served student); `model`
        overrides the endpoint's (a served student's name defaults to its folder's). A list of
        base URLs (a served student on several servers) gives a `PooledChat` over them."""
        urls = endpoint.base_url if isinstance(endpoint.base_url, list) else [endpoint.base_url]
        if len(urls) == 1:
            return cls(model or endpoint.model, urls[0], endpoint.api_key_env, endpoint.timeout,
                       endpoint.max_retries, what=what)
        # a few retries per server: a dead one is left for the next within seconds, not minutes
        return PooledChat([cls(model or endpoint.model, url, endpoint.api_key_env, endpoint.timeout,
                               min(endpoint.max_retries, 2), what=what) for url in urls],
                          rounds=max(1, endpoint.max_retries // 2))

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


class PooledChat:
    """Several OpenAI-compatible servers serving the same model (one vLLM per GPU, several
    `tutorloop serve` processes), used as one client: each request goes to the next server in
    turn; one that fails (unreachable, timing out, 5xx after its own retries) is skipped for
    `cooldown` seconds while the request moves on to the next healthy one. A sample's text does
    not depend on the server that drew it (its seed is its own), so results are the same whatever
    the number of servers, or the one that died mid-run.

    Why hand-written: the openai SDK talks to one base URL; a load balancer in front of the
    servers would do, but is one more service for a user to run."""

    kind = "openai"

    def __init__(self, clients: list, cooldown: float = 30.0, rounds: int = 3) -> None:
        import itertools
        import threading

        self.clients, self.cooldown, self.rounds = clients, cooldown, rounds
        self.shown_url = ", ".join(c.shown_url for c in clients)
        self._turn, self._lock, self._down_until = itertools.count(), threading.Lock(), [0.0] * len(clients)
        self.failovers = 0   # requests that moved to another server (tests and metrics read it)

    def __call__(self, messages: list[dict], sampling: Sampling) -> str:
        return self.complete(messages, sampling).texts[0]

    def complete(self, messages: list[dict], sampling: Sampling, n: int = 1) -> Replies:
        """The reply of the first server, in turn order from this request's, that answers: the
        healthy ones first, then (a last resort, `rounds` times) the ones marked down."""
        import time

        with self._lock:
            start = next(self._turn)
        last: TeacherError | None = None
        for attempt in range(self.rounds * len(self.clients)):
            i = (start + attempt) % len(self.clients)
            if time.monotonic() < self._down_until[i] and attempt < len(self.clients) * (self.rounds - 1):
                continue
            try:
                return self.clients[i].complete(messages, sampling, n)
            except TeacherError as err:   # the SDK's own retries on this server are spent
                last = err
                with self._lock:
                    self._down_until[i] = time.monotonic() + self.cooldown
                    self.failovers += 1
        raise TeacherError(f"every server failed ({self.shown_url}); the last: {last}")
