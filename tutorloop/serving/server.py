"""An OpenAI-compatible server over the generation engine: `/v1/models`, `/v1/chat/completions`,
`/v1/completions` (streaming, `n`, `temperature`, `top_p`, `max_tokens`, `seed`, `stop`).

Why hand-written: vLLM and llama.cpp's servers do not run the engine's calculator (the recipe's
accuracy depends on it: it writes `value>>` after the model's `<<expr=`), and they need a GPU or
a GGUF; FastAPI/uvicorn come with Prefect and MLflow already.

Batching: requests are queued and a scheduler thread runs everything waiting as one engine call
per sampling setting (temperature, top_p, max_tokens, n): concurrent requests share decode steps,
and the engine refills rows as completions end. A request that arrives while a call runs waits for
the next one (slot refill *across* calls is not built). Each request keeps its own `seed`: the
engine's draws are keyed by (seed, prompt, sample, position), so a seeded request gives the same
text alone or batched with others. Streaming sends the completion as one chunk once it is done
(the engine does not emit tokens one by one). `stop` cuts the text at the first stop string.

Errors are OpenAI-shaped (`{"error": {"message", "type", "param", "code"}}`): unknown model 404,
a bad body 400 (malformed JSON, max_tokens < 1, a prompt longer than the context).

    python -c "from tutorloop.serving.server import load_served; print(load_served('models/base'))"
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
from typing import Literal, Union

from pydantic import BaseModel, Field

DEFAULT_MAX_TOKENS = 256


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
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple:
        """Requests with the same group run in one engine call."""
        return (self.temperature > 0, self.temperature, self.top_p, self.max_tokens, self.n)


class Served:
    """A checkpoint loaded once, answering jobs from a queue in batches (see the module docstring)."""

    def __init__(self, model_dir: str | Path, name: str, *, calculator: bool = False, dtype: str = "float32",
                 device: str = "auto", rows: int = 64) -> None:
        from tutorloop import modeling

        self.name, self.calculator, self.rows = name, calculator, rows
        self.model, self.tok = modeling.load(model_dir, dtype=dtype, device=modeling.pick_device(device))
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self.calls = 0      # engine calls made (tests read it: concurrent requests share calls)
        self._queue: queue.Queue[Job] = queue.Queue()
        threading.Thread(target=self._schedule, name="serve-scheduler", daemon=True).start()

    def submit(self, job: Job) -> Future:
        self._queue.put(job)
        return job.future

    def prompt_tokens(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def _schedule(self) -> None:
        while True:
            jobs = [self._queue.get()]
            while True:   # everything already waiting joins this round
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.group, []).append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, jobs: list[Job]) -> None:
        from tutorloop.inference import engine

        first = jobs[0]
        prompts = [p for j in jobs for p in j.prompts]
        seeds = [j.seed for j in jobs for _ in j.prompts]
        try:
            self.calls += 1
            gen = engine.generate(self.model, self.tok, prompts, num_return_sequences=first.n,
                                  do_sample=first.temperature > 0, temperature=first.temperature or 1.0,
                                  top_p=first.top_p, max_new_tokens=first.max_tokens,
                                  batch_size=max(self.rows, first.n), seeds=seeds, calculator=self.calculator,
                                  desc=f"serve {len(prompts)} prompt(s)")
        except Exception as err:  # noqa: BLE001 - handed to every waiting request
            for j in jobs:
                j.future.set_exception(err)
            return
        i = 0
        for j in jobs:
            k = len(j.prompts)
            j.future.set_result((gen.texts[i:i + k], gen.completion_tokens[i:i + k], gen.finish_reasons[i:i + k]))
            i += k


def resolve_model(spec: str) -> tuple[Path, str, dict]:
    """(checkpoint folder, served name, registry tags) for a folder or `models:/<name>@<alias>` /
    `models:/<name>/<version>` (resolved through MLflow: the version's folder, or its logged
    weights downloaded)."""
    if not spec.startswith("models:/"):
        path = Path(spec)
        if not path.is_dir():
            raise FileNotFoundError(f"--model {spec}: not a checkpoint folder or models:/ URI")
        return path, path.name, {}
    import mlflow
    from mlflow import MlflowClient

    from tutorloop.runtime import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = MlflowClient()
    name, _, ref = spec[len("models:/"):].partition("@")
    if ref:
        version = client.get_model_version_by_alias(name, ref)
    else:
        name, _, number = name.partition("/")
        version = client.get_model_version(name, number)
    source = version.source
    if source.startswith("file://"):
        folder = Path(source[len("file://"):])
    else:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    if not (folder / "config.json").exists():   # mlflow.transformers keeps the weights in a subfolder
        found = sorted(folder.rglob("config.json"))
        if not found:
            raise FileNotFoundError(f"{spec}: no transformers checkpoint in {folder}")
        folder = found[0].parent
    return folder, f"{name}-v{version.version}", dict(version.tags)


def load_served(spec: str, *, calculator: bool | None = None, precision: str = "auto", device: str = "auto",
                rows: int = 64) -> Served:
    """Load what `spec` names; the calculator as the version's evaluation said unless given."""
    from tutorloop import hardware
    from tutorloop.modeling import pick_device

    folder, name, tags = resolve_model(spec)
    if calculator is None:
        calculator = tags.get("eval.calculator", "false").lower() == "true"
    dtype = hardware.resolve(precision, pick_device(device)).dtype
    return Served(folder, name, calculator=calculator, dtype=dtype, device=device, rows=rows)


# --- the API ----------------------------------------------------------------------------------

class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class _Sampling(BaseModel):
    model: str
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]


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
        used = served.prompt_tokens(p)
        if served.context and used + max_tokens > served.context:
            raise ApiError(400, f"This model's maximum context length is {served.context} tokens; the prompt has "
                                f"{used} and max_tokens is {max_tokens}", param="messages", code="context_length_exceeded")
    seed = req.seed if req.seed is not None else int.from_bytes(os.urandom(4), "little")
    return Job(prompts, req.n, req.temperature, req.top_p, max_tokens, seed)


async def _answer(served: Served, job: Job, stop: list[str]):
    """Per prompt, per sample: (text, finish_reason, completion tokens)."""
    texts, counts, reasons = await asyncio.wrap_future(served.submit(job))
    out = []
    for p_texts, p_counts, p_reasons in zip(texts, counts, reasons):
        row = []
        for text, count, reason in zip(p_texts, p_counts, p_reasons):
            text, stopped = _cut(text, stop)
            row.append((text, "stop" if stopped else reason, count))
        out.append(row)
    return out


def _stops(stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def create_app(served: Served):
    """The FastAPI app serving `served`."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="tutorloop serve")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return JSONResponse(ApiError(400, f"{where or 'body'}: {first.get('msg', 'invalid request')}",
                                     param=where).body, status_code=400)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "tutorloop"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        msgs = [m.model_dump() for m in req.messages]
        prompt = served.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        job = _job(served, req, [prompt])
        [choices] = await _answer(served, job, _stops(req.stop))
        rid, used = f"chatcmpl-{uuid.uuid4().hex[:24]}", served.prompt_tokens(prompt)
        if req.stream:
            return StreamingResponse(_chat_chunks(rid, served.name, choices), media_type="text/event-stream")
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": served.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                             "logprobs": None} for i, (t, r, _) in enumerate(choices)],
                "usage": _usage(used, sum(c for _, _, c in choices))}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise ApiError(400, "prompt: at least one prompt", param="prompt")
        job = _job(served, req, prompts)
        per_prompt = await _answer(served, job, _stops(req.stop))
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        choices = [{"index": i * req.n + k, "text": t, "finish_reason": r, "logprobs": None}
                   for i, row in enumerate(per_prompt) for k, (t, r, _) in enumerate(row)]
        if req.stream:
            return StreamingResponse(_completion_chunks(rid, served.name, choices), media_type="text/event-stream")
        used = sum(served.prompt_tokens(p) for p in prompts)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": served.name,
                "choices": choices, "usage": _usage(used, sum(c for row in per_prompt for _, _, c in row))}

    return app


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _chat_chunks(rid: str, model: str, choices):
    base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    for i, (text, reason, _) in enumerate(choices):
        yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        yield _sse({**base, "choices": [{"index": i, "delta": {"content": text}, "finish_reason": None}]})
        yield _sse({**base, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]})
    yield "data: [DONE]\n\n"


async def _completion_chunks(rid: str, model: str, choices):
    base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model}
    for c in choices:
        yield _sse({**base, "choices": [{**c, "finish_reason": None}]})
        yield _sse({**base, "choices": [{**c, "text": "", "finish_reason": c["finish_reason"]}]})
    yield "data: [DONE]\n\n"
