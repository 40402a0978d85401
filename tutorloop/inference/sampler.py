"""Samplers for practice and evaluation: the local engine, or any OpenAI-compatible server.

`make_sampler(cfg, model_dir, runtime, what)` reads `practice` / `evaluate` params and returns a
callable with one signature for both backends (`runtime`: the stage's resolved runtime,
tutorloop/hardware.py, for the local backend; None for a server, whose numerics are its own):

    sampler(conversations, k=4, do_sample=True, temperature=0.7, top_p=0.95,
            max_new_tokens=160, seed=1, desc="practice@1") -> Generation   # texts[i][k]

* `backend: local` (`LocalSampler`): the checkpoint is loaded here and sampled by the generation
  engine (tutorloop/inference/engine.py) — continuous batching, seeded, the calculator hook.
  `batch_size: auto` is resolved for the device (tutorloop/inference/batching.py). Device,
  precision and decode attention are the runtime's, as resolved once by the stage.
* `backend: openai` (`ServerSampler`): the round's checkpoint is served elsewhere, typically
  vLLM on a GPU:

      vllm serve models/round-0 --served-model-name round-0 --port 8000
      # params.yaml: practice.backend: openai, practice.server.base_url: http://localhost:8000/v1

  The sampler sends *messages* (system + user, from params.prompt, few-shot turns included): the
  chat template is the server's (vLLM uses the checkpoint's own, so prompts match the local
  path token for token). Requests go through the one OpenAI-compatible client and its cache
  (tutorloop/llm/): `OpenAIChat` (the `openai` SDK's retries with backoff on
  429/5xx/timeouts, `Retry-After` honoured; 400/401/404 fail fast with what to fix) behind
  `CachedChat` (SQLite), at most `server.concurrency` in flight. K samples of a problem are one
  request with `n: K` (`server.n: true`) or K requests with seeds seed + 7919k (CachedChat's
  rule for independent samples). Greedy decoding is temperature 0.

  The cache key holds the served name *and a content hash of the local checkpoint folder*: the
  folder the stage was given (a DVC dep) decides what the samples are of, so a retrained round
  never replays an older model's samples under the same name. The server must serve that same
  checkpoint — the client cannot check the weights behind a name. The calculator cannot run
  server-side (it writes into the sequence mid-decode): config validation rejects that
  combination. Token counts are the server's `usage.completion_tokens` for requests sent this
  run; a fully cached re-run reports 0 tokens, 0 requests and N cache hits.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tutorloop.config import ENGINE_ROWS_CPU, StudentEndpoint
from tutorloop.data.digest import digest
from tutorloop.hardware import ResolvedRuntime
from tutorloop.inference import batching, engine
from tutorloop.llm.cache import CachedChat
from tutorloop.llm.client import OpenAIChat, Sampling
from tutorloop.modeling import Generation, load, require_checkpoint
from tutorloop.runtime.pool import run_all


@dataclass
class ServerGeneration(Generation):
    """A Generation from a server: how many requests were sent and how many came from the cache."""

    requests: int = 0
    cache_hits: int = 0


class LocalSampler:
    """The checkpoint in this process, sampled by the generation engine."""

    backend = "local"

    def __init__(self, model_dir: str | Path, runtime: ResolvedRuntime, *, batch_size: int | str,
                 calculator: bool) -> None:
        # the runtime's numerics (device, precision, attention path) are what the evaluation
        # protocol fingerprints: the sampler runs at exactly them
        self.runtime = runtime
        self.model, self.tok = load(model_dir, dtype=runtime.dtype, device=runtime.device)
        self.precision = runtime.dtype
        self.batch_size, self.calculator = batch_size, calculator
        self.rows = 0   # the batch size the last call used (auto resolved)

    def metrics(self, gen: Generation) -> dict:
        """What only this backend knows, for the stage's metrics: the batch `auto` resolved to and
        the decode attention that ran (kernel / sdpa / hf: numerics differ in the last bf16 bit),
        and the device: all three are part of the evaluation protocol."""
        return {"batch_size": self.rows, "attention": gen.attention, "precision": self.precision,
                "device": self.runtime.torch_device.type}

    def resolve_rows(self, prompts: list[str], k: int, max_new_tokens: int) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        lmax = max((len(self.tok(p, add_special_tokens=False)["input_ids"]) for p in prompts), default=1)
        row = batching.engine_row_bytes(self.model.config, engine.buffer_columns(lmax, max_new_tokens),
                                        next(self.model.parameters()).dtype)
        return batching.engine_rows("auto", device=self.model.device, cpu_default=ENGINE_ROWS_CPU, row_bytes=row,
                                    sequences=len(prompts) * k, k=k)

    def __call__(self, conversations: list[list[dict]], *, k: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                 desc: str = "sample") -> Generation:
        # the same rendering as modeling.chat_prompts: byte-identical prompts to training's
        prompts = [self.tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                   for c in conversations]
        self.rows = self.resolve_rows(prompts, k, max_new_tokens)
        return engine.generate(self.model, self.tok, prompts, num_return_sequences=k, do_sample=do_sample,
                               temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                               batch_size=self.rows, seed=seed, calculator=self.calculator, desc=desc,
                               attention=self.runtime.attention)


def checkpoint_digest(path: str | Path) -> str:
    """A content hash of a checkpoint folder (weights, config, tokenizer, chat template)."""
    return digest(Path(path), length=16)


class ServerSampler:
    """The checkpoint as an OpenAI-compatible server serves it, through the teacher's client and cache."""

    backend = "openai"
    precision = "server"   # the server's own: cfg.dtype and runtime.precision do not apply there

    def __init__(self, server: StudentEndpoint, model_dir: str | Path, what: str) -> None:
        model_dir = require_checkpoint(model_dir)
        self.name = server.model or model_dir.resolve().name
        self.n_per_request, self.concurrency = server.n, server.concurrency

        def factory() -> OpenAIChat:  # built at the first cache miss: a cached re-run needs no server
            return OpenAIChat.of(server, model=self.name, what=f"{what}.server")

        self.chat = CachedChat(factory, Path(server.cache_dir) / "calls.sqlite", kind="openai",
                               model=f"{self.name}@{checkpoint_digest(model_dir)}", keep_empty=True)

    def metrics(self, gen: ServerGeneration) -> dict:
        """What only this backend knows: requests sent this run and replies replayed from the cache."""
        return {"requests": gen.requests, "cache_hits": gen.cache_hits}

    def __call__(self, conversations: list[list[dict]], *, k: int = 1, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                 desc: str = "sample") -> ServerGeneration:
        from tqdm.auto import tqdm

        if do_sample and temperature <= 0:
            raise ValueError(f"temperature {temperature!r}: sampling needs temperature > 0 (use greedy instead)")
        if not do_sample:   # greedy: temperature 0; K greedy samples are one completion, as in the engine
            sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, seed=seed)
            calls = [(i, 0, 1) for i in range(len(conversations))]
        else:
            sampling = Sampling(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
            if self.n_per_request and k > 1:
                calls = [(i, 0, k) for i in range(len(conversations))]
            else:
                calls = [(i, j, 1) for i in range(len(conversations)) for j in range(k)]
        texts: list[list[str]] = [[""] * k for _ in conversations]
        tokens = sent = hits = 0

        def one(call):
            i, j, n = call
            return call, *self.chat.replies(conversations[i], sampling, sample=j, n=n)

        def done(result) -> None:
            nonlocal tokens, sent, hits
            (i, j, n), got, cached = result
            if do_sample:
                texts[i][j:j + n] = [t.strip() for t in got.texts]
            else:
                texts[i] = [got.texts[0].strip()] * k
            hits += cached
            sent += not cached
            tokens += 0 if cached else got.tokens
            bar.update(n if do_sample else k)

        start = time.perf_counter()
        bar = tqdm(total=len(conversations) * k, desc=desc, unit="sample", file=sys.stderr)
        try:
            # on an error (a TeacherError after the SDK's retries) or a stop, requests not yet
            # started are dropped and the call returns at once (runtime/pool.py)
            run_all(one, calls, workers=self.concurrency, name="sampler", on_done=done)
        finally:
            bar.close()
        return ServerGeneration(texts=texts, new_tokens=tokens, seconds=time.perf_counter() - start,
                                requests=sent, cache_hits=hits)


def make_sampler(cfg, model_dir: str | Path, runtime: ResolvedRuntime | None, what: str):
    """The sampler `cfg` (params.practice or params.evaluate; `what` names it) asks for; a local
    one runs on the stage's resolved `runtime` (required for `backend: local`)."""
    if cfg.backend == "openai":
        return ServerSampler(cfg.server, model_dir, what)
    if runtime is None:
        raise ValueError(f"{what}.backend: local -> needs the stage's resolved runtime (hardware.resolve_runtime)")
    return LocalSampler(model_dir, runtime, batch_size=cfg.batch_size, calculator=cfg.calculator)
