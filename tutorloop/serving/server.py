"""An OpenAI-compatible server over the generation engine: `/v1/models`, `/v1/chat/completions`,
`/v1/completions` (streaming, `n`, `temperature`, `top_p`, `max_tokens`, `seed`, `stop`).

Why hand-written: vLLM and llama.cpp's servers do not run the engine's calculator (the recipe's
accuracy depends on it: it writes `value>>` after the model's `<<expr=`), and they need a GPU or
a GGUF; FastAPI/uvicorn come with Prefect and MLflow already.

Batching is continuous: a scheduler thread runs one engine call at a time, and between decode
steps the call takes in every request that arrived meanwhile with the same sampling setting
(temperature, top_p, n), a prompt that fits its buffer and max_tokens within its cap (the
engine's `feed`): the request's prompts queue for the next free rows, and each request is
answered the moment its last completion ends (`on_prompt`), not when the call ends. Requests
with another setting wait for the next call. Each request keeps its own `seed`: the engine's
draws are keyed by (seed, prompt, sample, position), so a seeded request gives the same text
alone or batched with others. Streaming sends each sample's new text between decode steps
(held back while it could still become a stop string, trailing whitespace or half a character),
so the streamed pieces add up to exactly the text a non-streamed request returns. `stop` cuts
the text at the first stop string.

Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`): unknown model 404,
a bad body 400 (malformed JSON, max_tokens < 1, a prompt longer than the context or
`--max-model-len`, a request whose KV cache would pass the server's budget, more than 4 stop
strings or 64 prompts, a lone surrogate), 401 without the key (`--api-key-env`), 403 for a
foreign Host on loopback, 411/413 for a body without a size or over 4 MiB, 429 (Retry-After)
when MAX_WAITING requests already wait, 500 for anything else (the exception's type only).

Under load and abuse: tokenisation runs off the event loop; a client that disconnects (or
abandons a stream) cancels its request and the engine frees its rows at the next decode step
(`drop`); a call's KV buffer grows for the waiting requests that join it only within the budget;
and a request held back by another setting's call waits at most for that call to drain: the call
takes only requests that arrived within HOLD_S (2 s) of the oldest request of another setting
waiting, so it ends after those (at most their max_tokens steps), whatever the traffic.

    python -c "from tutorloop.config import Runtime; from tutorloop.hardware import resolve_runtime
    from tutorloop.serving.server import load_served; print(load_served('models/base', resolve_runtime(Runtime())))"
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

from fastapi import Request  # module level: FastAPI resolves the handlers' string annotations here
from pydantic import BaseModel, Field

from tutorloop.errors import ConfigError
from tutorloop.hardware import ResolvedRuntime

DEFAULT_MAX_TOKENS = 256
MAX_WAITING = 256        # requests queued beyond the running call: more are answered 429 (Retry-After)
HOLD_S = 2.0             # a call takes no request that arrived more than this after the oldest waiting one of another setting
MAX_BODY = 4 << 20       # request bodies above 4 MiB are answered 413


class Busy(Exception):
    """The server's queue is full: the request is answered 429 with Retry-After."""


# --- the model behind the API -----------------------------------------------------------------

@dataclass
class Job:
    """One request's prompts (one per prompt of a completions list), and where its answer goes."""

    prompts: list[str]
    n: int
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    prompt_tokens: list[int] = field(default_factory=list)   # each prompt's length in tokens
    future: Future = field(default_factory=Future)
    results: dict[int, tuple] = field(default_factory=dict)  # prompt number -> (texts, counts, reasons)
    stop: list[str] = field(default_factory=list)            # a sample ends once its text holds one
    on_tokens: object = None   # streaming: called (from the engine's thread) with {choice: token ids so far}
    first_index: int = 0       # the engine's index of this request's first prompt
    seen: dict[int, int] = field(default_factory=dict)       # choice -> tokens already looked at
    submitted: float = field(default_factory=time.monotonic)  # when it arrived: the starvation bound's clock
    dropped: bool = False      # its client went away and its rows were handed back (engine `drop`)

    @property
    def watched(self) -> bool:
        """Whether the request's samples are looked at between steps (streaming or stop strings)."""
        return (self.on_tokens is not None or bool(self.stop)) and not self.future.done()

    def progress(self, run, tok) -> None:
        """Between steps: end samples whose text reached a stop string (no decoding past it), and
        hand a streaming request every sample that grew."""
        grown = {}
        for i in range(len(self.prompts)):
            for k in range(self.n):
                owner, choice = (self.first_index + i) * self.n + k, i * self.n + k
                ids = run.partial(owner)
                if len(ids) > self.seen.get(choice, 0):
                    grown[choice] = ids
                    self.seen[choice] = len(ids)
                    if self.stop and _cut(tok.decode(ids[-64:], skip_special_tokens=True), self.stop)[1]:
                        run.end(owner)
        if grown and self.on_tokens is not None:
            self.on_tokens(grown)

    @property
    def group(self) -> tuple:
        """Requests with the same group can share an engine call (max_tokens is a per-row cap)."""
        return (self.temperature > 0, self.temperature, self.top_p, self.n)

    def answer(self, i: int, texts: list[str], counts: list[int], reasons: list[str]) -> None:
        """Prompt i's completions; the request is answered once every prompt has them."""
        self.results[i] = (texts, counts, reasons)
        if len(self.results) == len(self.prompts):
            rows = [self.results[j] for j in range(len(self.prompts))]
            settle(self.future, result=tuple([r[f] for r in rows] for f in range(3)))


def settle(future: Future, result=None, error: BaseException | None = None) -> None:
    """Answer `future` unless it is already done: a client that disconnected cancels its future
    at any moment, and its InvalidStateError must not fail the other requests of the call."""
    from concurrent.futures import InvalidStateError

    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class Served:
    """A checkpoint loaded once, answering jobs from a queue in batches (see the module docstring)."""

    def __init__(self, model_dir: str | Path, name: str, runtime: ResolvedRuntime, *, calculator: bool = False,
                 rows: int = 64, prompt_room: int = 256, max_model_len: int = 0, kv_budget: int = 0,
                 max_waiting: int = MAX_WAITING) -> None:
        from tutorloop import modeling

        self.name, self.calculator, self.rows, self.folder = name, calculator, rows, Path(model_dir)
        self.prompt_room = prompt_room   # a call's KV buffer fits prompts this long that join it mid-call
        # the caller's resolved runtime: its device and precision, never re-resolved here
        _check_servable(model_dir, name)
        self.model, self.tok = modeling.load(model_dir, dtype=runtime.dtype, device=runtime.device)
        context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        # prompt + max_tokens of one request: the model's context, or less (--max-model-len, as vLLM)
        self.context = min(c for c in (context, max_model_len) if c) if (context or max_model_len) else 0
        self.kv_column = kv_bytes_per_token(self.model.config, self.model.dtype)   # one row, one position
        self.kv_budget = kv_budget or default_kv_budget()
        self.max_waiting = max_waiting
        self.calls = 0      # engine calls made (tests read it: concurrent requests share calls)
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []   # taken from the queue by a call they did not fit: the next call's first
        threading.Thread(target=self._schedule, name="serve-scheduler", daemon=True).start()

    def submit(self, job: Job) -> Future:
        if self._queue.qsize() + len(self._held) >= self.max_waiting:
            raise Busy(f"{self.max_waiting} requests already waiting")
        self._queue.put(job)
        return job.future

    def kv_bytes(self, rows: int, prompt: int, cap: int) -> int:
        """The KV buffer an engine call of `rows` rows sized for `prompt` and `cap` takes: the
        engine's buffer is the longest prompt + 2 x cap + 64 positions for every row."""
        return rows * (max(prompt, self.prompt_room) + 2 * max(cap, DEFAULT_MAX_TOKENS) + 64) * self.kv_column

    def prompt_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def _schedule(self) -> None:
        while True:
            job = self._held.pop(0) if self._held else self._queue.get()
            if not job.future.cancelled():   # its client went away while it waited
                self._run(job)

    def _waiting(self) -> list[Job]:
        """Every request waiting, oldest first: those held back by the last call, then the queue."""
        jobs, self._held = self._held, []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return [j for j in jobs if not j.future.cancelled()]

    def _run(self, first: Job) -> None:
        """One engine call for `first` and every request that joins it while it decodes."""
        from tutorloop.inference import engine

        jobs = [first]
        members = [(first, i) for i in range(len(first.prompts))]   # engine prompt index -> (request, prompt number)
        # Size the call's buffer for the requests already waiting that can join it, so a burst of
        # long prompts (few-shot evaluation) shares one call instead of being held back one by one.
        self._held = self._waiting()
        rows = max(self.rows, first.n)
        room, cap = max([self.prompt_room, *first.prompt_tokens]), max(first.max_tokens, DEFAULT_MAX_TOKENS)
        for j in self._held:   # grow the buffer for the waiting requests that can join, within the budget
            grown = max(room, *j.prompt_tokens), max(cap, j.max_tokens)
            if j.group == first.group and self.kv_bytes(rows, *grown) <= self.kv_budget:
                room, cap = grown

        def feed(run) -> None:
            for job in jobs:   # stop strings checked, streams fed, for the requests still decoding
                if job.future.cancelled() and not job.dropped:   # its client went away: free its rows
                    run.drop(list(range(job.first_index, job.first_index + len(job.prompts))))
                    job.dropped = True
                elif job.watched:
                    job.progress(run, self.tok)
            waiting = self._waiting()
            # fairness: a request of this setting joins only if it arrived within HOLD_S of the
            # oldest request of another setting waiting; later ones wait for the next call, so the
            # held request starts once this call drains, whatever the traffic (and the call still
            # takes every request of its setting that was already waiting: no batch of one)
            others = [j.submitted for j in [*self._held, *waiting] if j.group != first.group]
            cutoff = min(others) + HOLD_S if others else float("inf")
            for job in waiting:
                if job.group == first.group and job.submitted <= cutoff and \
                        all(run.fits(n, job.max_tokens) for n in job.prompt_tokens):
                    job.first_index = run.extend(job.prompts, [job.seed] * len(job.prompts),
                                                 [job.max_tokens] * len(job.prompts))
                    members.extend((job, i) for i in range(len(job.prompts)))
                    jobs.append(job)
                else:
                    self._held.append(job)

        def on_prompt(index: int, texts, counts, reasons) -> None:
            job, i = members[index]
            job.answer(i, texts, counts, reasons)

        try:
            self.calls += 1
            engine.generate(self.model, self.tok, first.prompts, num_return_sequences=first.n,
                            do_sample=first.temperature > 0, temperature=first.temperature or 1.0,
                            top_p=first.top_p, max_new_tokens=cap,
                            batch_size=max(self.rows, first.n), seeds=[first.seed] * len(first.prompts),
                            caps=[first.max_tokens] * len(first.prompts),
                            calculator=self.calculator, feed=feed, on_prompt=on_prompt,
                            max_prompt_tokens=room,
                            desc=f"serve ({self.calls})")
        except Exception as err:  # noqa: BLE001 - handed to every request of the call still waiting
            for job in jobs:
                settle(job.future, error=err)


def resolve_model(spec: str) -> tuple[Path, str, dict]:
    """(checkpoint folder, served name, registry tags) for a folder or `models:/<name>@<alias>` /
    `models:/<name>/<version>` (resolved through MLflow: the version's folder, or its logged
    weights downloaded)."""
    if not spec.startswith("models:/"):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"--model {spec}: not a checkpoint folder or models:/ URI")
        return path, path.name, {}
    version, name = _registry_version(spec)
    source = version.source
    if source.startswith("file://"):
        folder = Path(source[len("file://"):])
    else:
        import mlflow

        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    if not (folder / "config.json").exists():   # mlflow.transformers keeps the weights in a subfolder
        found = sorted(folder.rglob("config.json"))
        if not found:
            raise FileNotFoundError(f"{spec}: no transformers checkpoint in {folder}")
        folder = found[0].parent
    return folder, f"{name}-v{version.version}", dict(version.tags)


def kv_bytes_per_token(config, dtype) -> int:
    """Bytes of KV cache one row holds per position: keys and values of every layer."""
    import torch

    cfg = config.get_text_config(decoder=True)
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def default_kv_budget() -> int:
    """Half the memory free at start: the rest stays for the weights, activations and the OS."""
    import psutil

    return psutil.virtual_memory().available // 2


def _check_servable(model_dir: str | Path, name: str) -> None:
    """Refuse, before any weights load, a model the engine's slot cache does not cover: the
    HF-generate fallback cannot take requests mid-call, so every request would go unanswered."""
    from transformers import AutoConfig

    from tutorloop.inference import engine

    config = AutoConfig.from_pretrained(model_dir)
    if not engine.supported(config):
        arch = (config.architectures or [type(config).__name__])[0]
        raise ConfigError(f"--model {name}: {arch} (sliding-window or mixed attention) is not served by "
                          "tutorloop's engine, which needs every layer full attention; serve it with "
                          "`--backend vllm` on a GPU")


def _registry_version(spec: str):
    """(the model version `models:/<name>@<alias>` or `models:/<name>/<version>` names, its model's
    name); a ConfigError naming what is missing: the store (never created here), the model, the alias."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tutorloop.runtime import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"--model {spec}: no MLflow registry here ({uri[len('sqlite:///'):]} does not exist): "
                          "run the loop first (`make demo`, `tutorloop run`), run this in the project, "
                          "or pass a checkpoint folder (--model models/round-1)")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    name, _, ref = spec[len("models:/"):].partition("@")
    try:
        if ref:
            return client.get_model_version_by_alias(name, ref), name
        name, _, number = name.partition("/")
        return client.get_model_version(name, number), name
    except MlflowException as err:
        raise ConfigError(f"--model {spec}: not in the registry at {uri} "
                          f"({' '.join(str(err.message).split())[:200]})") from None


def load_served(spec: str, runtime: ResolvedRuntime, *, calculator: bool | None = None, rows: int = 64,
                max_model_len: int = 0, kv_budget: int = 0, max_waiting: int = MAX_WAITING) -> Served:
    """Load what `spec` names on the caller's resolved `runtime`; the calculator as the version's
    evaluation said unless given."""
    folder, name, tags = resolve_model(spec)
    if calculator is None:
        calculator = tags.get("eval.calculator", "false").lower() == "true"
    return Served(folder, name, runtime, calculator=calculator, rows=rows, max_model_len=max_model_len,
                  kv_budget=kv_budget, max_waiting=max_waiting)


# --- the API ----------------------------------------------------------------------------------

class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


Stop = Annotated[str, Field(max_length=256)]


class _Sampling(BaseModel):
    model: str = Field(max_length=256)
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: Union[Stop, Annotated[list[Stop], Field(max_length=4)], None] = None   # OpenAI's limit: 4
    stream: bool = False


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1, max_length=256)


class CompletionRequest(_Sampling):
    prompt: Union[str, Annotated[list[str], Field(max_length=64)]]


class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status, message, type, param, code."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _cut(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to its first stop string, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def _job(served: Served, req: _Sampling, prompts: list[str]) -> Job:
    if req.model not in (served.name, "default"):
        raise ApiError(404, f"The model `{req.model}` does not exist (serving `{served.name}`)",
                       param="model", code="model_not_found")
    max_tokens = req.max_tokens or DEFAULT_MAX_TOKENS
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:   # a lone surrogate ("\\ud800" in the JSON): the tokenizer would fail on it
            raise ApiError(400, "the prompt is not valid Unicode text (a lone surrogate?)", param="messages") from None
    lengths = [served.prompt_tokens(p) for p in prompts]
    for used in lengths:
        if served.context and used + max_tokens > served.context:
            raise ApiError(400, f"This model's maximum context length is {served.context} tokens; the prompt has "
                                f"{used} and max_tokens is {max_tokens}", param="messages", code="context_length_exceeded")
    need = served.kv_bytes(max(served.rows, req.n), max(lengths), max_tokens)
    if need > served.kv_budget:
        raise ApiError(400, f"this request needs {need / 2**30:.1f} GiB of KV cache, over the server's budget of "
                            f"{served.kv_budget / 2**30:.1f} GiB: lower max_tokens or the prompt",
                       param="max_tokens", code="context_length_exceeded")
    seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little")
    return Job(prompts, req.n, req.temperature, req.top_p, max_tokens, seed, prompt_tokens=lengths,
               stop=_stops(req.stop))


class ClientGone(Exception):
    """The client disconnected before its answer: its job was cancelled, nothing is sent."""


async def _answer(served: Served, job: Job, stop: list[str], request=None):
    """Per prompt, per sample: (text, finish_reason, completion tokens). A client that disconnects
    cancels its job: the engine hands its rows back at the next decode step (`Served._run`)."""
    done = asyncio.wrap_future(_submit(served, job))
    while not done.done():
        await asyncio.wait({done}, timeout=0.2)
        if request is not None and not done.done() and await request.is_disconnected():
            job.future.cancel()
            raise ClientGone
    return _final(done.result(), stop)


def _submit(served: Served, job: Job) -> Future:
    try:
        return served.submit(job)
    except Busy as err:
        raise ApiError(429, f"server busy: {err}; retry shortly", type_="server_error", code="rate_limit") from None


def _final(result, stop: list[str]):
    texts, counts, reasons = result
    out = []
    for p_texts, p_counts, p_reasons in zip(texts, counts, reasons):
        row = []
        for text, count, reason in zip(p_texts, p_counts, p_reasons):
            text, stopped = _cut(text, stop)
            row.append((text, "stop" if stopped else reason, count))
        out.append(row)
    return out


def _open_stream(served: Served, job: Job) -> tuple[asyncio.Queue, asyncio.Future]:
    """Submit a streamed request (a full queue answers 429 here, before any byte is sent): the
    queue its grown samples arrive on from the engine's thread, and its answer."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.on_tokens = lambda grown: loop.call_soon_threadsafe(events.put_nowait, grown)
    return events, asyncio.wrap_future(_submit(served, job))


async def _stream(served: Served, job: Job, stop: list[str], opened: tuple):
    """Yield (choice, new text) while the request decodes, then (None, its final answer): the
    pieces of each choice add up to its final text exactly (see the module docstring)."""
    try:
        async for piece in _pieces(served, job, stop, *opened):
            yield piece
    finally:   # the client went away mid-stream (the generator is closed): free the rows, stop pushing
        job.future.cancel()


async def _pieces(served: Served, job: Job, stop: list[str], events: asyncio.Queue, done):
    sent: dict[int, str] = {}
    hold = max((len(x) for x in stop if x), default=1) - 1   # chars that may still become a stop string
    while not (done.done() and events.empty()):
        waiter = asyncio.ensure_future(events.get())
        await asyncio.wait({waiter, done}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            continue
        for choice, ids in waiter.result().items():
            text, stopped = _cut(served.tok.decode(ids, skip_special_tokens=True).lstrip(), stop)
            kept = text.rstrip()
            safe = text if stopped else kept[:max(0, len(kept) - hold)].rstrip("\ufffd")
            old = sent.get(choice, "")
            if len(safe) > len(old) and safe.startswith(old):
                sent[choice] = safe
                yield choice, safe[len(old):]
    final = _final(done.result(), stop)
    for i, row in enumerate(final):
        for k, (text, _, _) in enumerate(row):
            old = sent.get(i * job.n + k, "")
            if len(text) > len(old) and text.startswith(old):
                yield i * job.n + k, text[len(old):]
    yield None, final


def _stops(stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers a server bound to loopback answers (DNS rebinding: a page elsewhere must
    not reach it under its own name); None (any) when bound to another address."""
    if host not in LOOPBACK:
        return None
    return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")} | {"127.0.0.1", "localhost", "[::1]"}


class _Guard:
    """Refuses a request before it reaches the API: a body without a size or over `max_body`
    (411 / 413), a Host header outside `hosts` (403), a missing or wrong bearer key (401). Plain
    ASGI, not Starlette's BaseHTTPMiddleware, which hides a client's disconnect from the endpoint."""

    def __init__(self, app, api_key: str | None, hosts: set[str] | None, max_body: int) -> None:
        self.app, self.api_key, self.hosts, self.max_body = app, api_key, hosts, max_body

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        await JSONResponse(refusal.body, status_code=refusal.status)(scope, receive, send)

    def refusal(self, scope) -> ApiError | None:
        import hmac

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] == "POST":   # a body's size is known before it is read, or it is not read
            size = headers.get("content-length", "")
            if not size.isdigit():
                return ApiError(411, "a request body needs a Content-Length")
            if int(size) > self.max_body:
                return ApiError(413, f"request body over {self.max_body} bytes")
        if self.hosts is not None and headers.get("host", "") not in self.hosts:
            return ApiError(403, "Host not allowed: this server answers on loopback only", code="host_not_allowed")
        if self.api_key is not None and not hmac.compare_digest(headers.get("authorization", "").encode(),
                                                                f"Bearer {self.api_key}".encode()):
            return ApiError(401, "Incorrect or missing API key (Authorization: Bearer ...)", code="invalid_api_key")
        return None


def _error_handlers(app) -> None:
    """Every error answers in the OpenAI shape: ours (ApiError; 429 with Retry-After), a bad body
    (400), a client gone (499, never read), anything else (500, the exception's type only)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body, status_code=err.status, headers={"Retry-After": "1"} if err.status == 429 else None)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, err: ClientGone):
        return JSONResponse(ApiError(499, "client closed the request").body, status_code=499)   # nobody reads it

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return JSONResponse(ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}",
                                     param=where).body, status_code=400)

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception):
        # anything else still answers in the OpenAI shape (the type only: never internals)
        return JSONResponse(ApiError(500, f"internal error ({type(err).__name__})", type_="internal_error").body,
                            status_code=500)


def create_app(served: Served, api_key: str | None = None, hosts: set[str] | None = None, max_body: int = MAX_BODY):
    """The FastAPI app serving `served`: with `api_key`, every request needs `Authorization:
    Bearer <key>` (401 otherwise); with `hosts`, a Host header outside them is refused (403)."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI(title="tutorloop serve")
    app.add_middleware(_Guard, api_key=api_key, hosts=hosts, max_body=max_body)
    _error_handlers(app)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "tutorloop"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        msgs = [m.model_dump() for m in req.messages]
        # the template and the tokenizer run off the event loop: a huge prompt stalls no other client
        prompt = await asyncio.to_thread(served.tok.apply_chat_template, msgs, tokenize=False,
                                         add_generation_prompt=True)
        job = await asyncio.to_thread(_job, served, req, [prompt])
        rid, used = f"chatcmpl-{uuid.uuid4().hex[:24]}", job.prompt_tokens[0]
        if req.stream:
            stream = _stream(served, job, _stops(req.stop), _open_stream(served, job))
            return StreamingResponse(_chat_chunks(rid, served.name, stream, req.n), media_type="text/event-stream")
        [choices] = await _answer(served, job, _stops(req.stop), request)
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": served.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                             "logprobs": None} for i, (t, r, _) in enumerate(choices)],
                "usage": _usage(used, sum(c for _, _, c in choices))}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: at least one prompt", param="prompt")
        job = await asyncio.to_thread(_job, served, req, prompts)   # tokenised off the event loop
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            stream = _stream(served, job, _stops(req.stop), _open_stream(served, job))
            return StreamingResponse(_completion_chunks(rid, served.name, stream, req.n), media_type="text/event-stream")
        per_prompt = await _answer(served, job, _stops(req.stop), request)
        choices = [{"index": i * req.n + k, "text": t, "finish_reason": r, "logprobs": None}
                   for i, row in enumerate(per_prompt) for k, (t, r, _) in enumerate(row)]
        used = sum(job.prompt_tokens)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": served.name,
                "choices": choices, "usage": _usage(used, sum(c for row in per_prompt for _, _, c in row))}

    return app


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _chat_chunks(rid: str, model: str, pieces, n: int):
    base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    for i in range(n):
        yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    async for choice, piece in pieces:
        if choice is None:   # the end: each choice's finish reason
            for i, (_, reason, _) in enumerate(piece[0]):
                yield _sse({**base, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]})
        else:
            yield _sse({**base, "choices": [{"index": choice, "delta": {"content": piece}, "finish_reason": None}]})
    yield "data: [DONE]\n\n"


async def _completion_chunks(rid: str, model: str, pieces, n: int):
    base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    async for choice, piece in pieces:
        if choice is None:
            for i, row in enumerate(piece):
                for k, (_, reason, _) in enumerate(row):
                    yield _sse({**base, "choices": [{"index": i * n + k, "text": "", "finish_reason": reason,
                                                     "logprobs": None}]})
        else:
            yield _sse({**base, "choices": [{"index": choice, "text": piece, "finish_reason": None, "logprobs": None}]})
    yield "data: [DONE]\n\n"
