"""`tutorloop serve` on a tiny model over loopback, driven by the `openai` SDK: chat, completions,
streaming, n > 1, seeded sampling, concurrent requests batched, the calculator, bad requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from support import free_port

from tutorloop.config import Runtime
from tutorloop.hardware import resolve_runtime
from tutorloop.serving import server as srv


def fp32():
    """The runtime these tests serve on: fp32 on this machine's device (Served's old default)."""
    return resolve_runtime(Runtime(precision="float32"))


class Running:
    """A uvicorn server in a thread of this process (so a test can watch the engine's calls)."""

    def __init__(self, served: srv.Served):
        import uvicorn

        self.served, self.port = served, free_port()
        config = uvicorn.Config(srv.create_app(served), host="127.0.0.1", port=self.port, log_level="warning",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=120)

    def stop(self) -> float:
        start = time.monotonic()
        self.server.should_exit = True
        self.thread.join(30)
        return time.monotonic() - start


@pytest.fixture(scope="module")
def running(tiny_model_dir):
    served = srv.Served(tiny_model_dir, "tiny", fp32(), rows=64)
    r = Running(served)
    yield r
    r.stop()


MSG = [{"role": "user", "content": "What is 5 times 16?"}]


def test_models_chat_and_completions(running):
    c = running.client()
    assert [m.id for m in c.models.list().data] == ["tiny"]
    chat = c.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=12)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length") and 0 < chat.usage.completion_tokens <= 12
    # greedy through the server is the engine's greedy, token for token
    from tutorloop.inference import engine

    prompt = running.served.tok.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    local = engine.generate(running.served.model, running.served.tok, [prompt], max_new_tokens=12)
    assert chat.choices[0].message.content == local.texts[0][0]
    comp = c.completions.create(model="tiny", prompt=["2 + 2 =", "The cat"], temperature=0, max_tokens=6)
    assert [ch.index for ch in comp.choices] == [0, 1] and comp.usage.prompt_tokens > 0


def test_streaming_n_and_seeds(running):
    c = running.client()
    kw = dict(model="tiny", messages=MSG, temperature=1.0, top_p=0.95, max_tokens=16)
    a = c.chat.completions.create(n=3, seed=5, **kw)
    b = c.chat.completions.create(n=3, seed=5, **kw)
    other = c.chat.completions.create(n=3, seed=6, **kw)
    texts = lambda r: [ch.message.content for ch in r.choices]  # noqa: E731
    assert len(a.choices) == 3 and texts(a) == texts(b) and texts(a) != texts(other)
    assert len(set(texts(a))) > 1                                   # n samples, not one text thrice
    streamed = c.chat.completions.create(n=3, seed=5, stream=True, **kw)
    got: dict[int, str] = {}
    ends = {}
    for chunk in streamed:
        for ch in chunk.choices:
            got[ch.index] = got.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                ends[ch.index] = ch.finish_reason
    assert [got[i] for i in range(3)] == texts(a) and set(ends) == {0, 1, 2}
    stop = c.completions.create(model="tiny", prompt="2 + 2 =", temperature=0, max_tokens=12)
    text = stop.choices[0].text
    assert len(text) > 3, f"12 greedy tokens gave {text!r}: too short to cut at a stop string"
    cut = c.completions.create(model="tiny", prompt="2 + 2 =", temperature=0, max_tokens=12, stop=[text[2:4]])
    assert cut.choices[0].text == text[:text.find(text[2:4])] and cut.choices[0].finish_reason == "stop"


def test_streaming_sends_text_as_it_decodes(running):
    """Token streaming: many pieces, the first long before the end, adding up to the
    non-streamed text; a stop string is never sent, even in part."""
    c = running.client()
    ask = dict(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=200)
    whole = c.completions.create(**ask).choices[0].text
    start, pieces, first = time.perf_counter(), [], None
    for chunk in c.completions.create(stream=True, **ask):
        if chunk.choices[0].text:
            first = first or time.perf_counter() - start
            pieces.append(chunk.choices[0].text)
    total = time.perf_counter() - start
    assert "".join(pieces) == whole and len(pieces) > 10 and first < total / 3, (len(pieces), first, total)
    stop = whole[len(whole) // 2:len(whole) // 2 + 3]
    cut = [ch.choices[0] for ch in c.completions.create(stream=True, stop=[stop], **ask)]
    assert "".join(ch.text for ch in cut) == whole[:whole.find(stop)] and cut[-1].finish_reason == "stop"
    # the sample stops decoding at the stop string, not at max_tokens
    early = c.completions.create(stop=[stop], **ask)
    assert early.choices[0].text == whole[:whole.find(stop)] and early.usage.completion_tokens < 150, early.usage


def test_concurrent_requests_share_engine_calls(running):
    """Eight requests at once are answered by fewer than eight engine calls, with the texts they
    get one at a time. Wall-clock speed under concurrency is benchmarks/serving.py's target (a
    ratio in one process): a timed assertion here failed CI on a loaded 2-core machine."""
    c = running.client()
    prompts = [f"Count to {i}:" for i in range(8)]

    def one(p):
        return c.completions.create(model="tiny", prompt=p, temperature=0, max_tokens=24).choices[0].text

    calls = running.served.calls
    sequential = [one(p) for p in prompts]
    assert running.served.calls - calls == 8
    calls = running.served.calls
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(one, prompts))
    assert concurrent == sequential                               # batching changes no greedy text
    assert running.served.calls - calls < 8, running.served.calls - calls


def test_a_request_joins_the_call_in_flight_and_is_answered_when_it_ends(running):
    """Continuous batching across requests: a short request sent while a long one decodes takes
    free rows of the same engine call (no second call) and is answered before the long one ends.
    The long request streams, so the short one is sent once tokens flow (the call is in flight)
    rather than after a fixed sleep: a fast CPU finished 240 tokens inside a 0.2 s sleep."""
    c = running.client()
    ask = dict(model="tiny", temperature=0, prompt="Once upon a time")
    alone = c.completions.create(max_tokens=6, **ask).choices[0].text
    ended: dict[str, float] = {}
    decoding = threading.Event()

    def long():
        finish = None
        for chunk in c.completions.create(stream=True, max_tokens=800, **ask):
            decoding.set()
            finish = chunk.choices[0].finish_reason or finish
        ended["long"] = time.perf_counter()
        return finish

    calls = running.served.calls
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(long)
        assert decoding.wait(60), "the long request sent no tokens"
        short = c.completions.create(max_tokens=6, **ask)
        ended["short"] = time.perf_counter()
        assert pending.result() == "length"
    assert running.served.calls == calls + 1, "the short request ran in a call of its own"
    assert ended["short"] < ended["long"] and short.choices[0].text == alone


def test_bad_requests_are_openai_shaped_4xx_and_the_server_keeps_serving(running):
    import openai

    c = running.client()
    with pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-9", messages=MSG)
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=MSG, max_tokens=0)
    with pytest.raises(openai.BadRequestError) as err:
        c.completions.create(model="tiny", prompt="word " * 5000, max_tokens=8)
    assert err.value.body["code"] == "context_length_exceeded"
    raw = httpx.post(f"{running.url}/chat/completions", content=b'{"model": "tiny", "messages": [',
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and "error" in raw.json()
    assert c.chat.completions.create(model="tiny", messages=MSG, temperature=0, max_tokens=4).choices


def test_the_calculator_writes_its_results(tiny_model_dir, monkeypatch):
    """The served model's `<<5*16=` is completed by the calculator when it is on (the engine's
    token choice is scripted; the model's real fused step runs)."""
    from tutorloop.inference import engine

    served_on = srv.Served(tiny_model_dir, "tiny", fp32(), calculator=True)
    tok = served_on.tok
    script = tok("He pays <<5*16=72>>72 dollars.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    real = engine._Run.choose

    def choose(self, logits, rows=None):
        real(self, logits, rows)
        if logits.shape[0] != self.rows:
            return torch.full((logits.shape[0],), script[0], dtype=torch.long)
        return torch.tensor(script)[self.n_gen.clamp(max=len(script) - 1)]

    monkeypatch.setattr(engine._Run, "choose", choose)
    on = Running(served_on)
    off = Running(srv.Served(tiny_model_dir, "tiny", fp32(), calculator=False))
    try:
        ask = dict(model="tiny", messages=MSG, temperature=0, max_tokens=40)
        assert on.client().chat.completions.create(**ask).choices[0].message.content.startswith("He pays <<5*16=80>>")
        assert off.client().chat.completions.create(**ask).choices[0].message.content == "He pays <<5*16=72>>72 dollars."
    finally:
        on.stop()
        off.stop()


def test_stopping_the_server_is_prompt(tiny_model_dir):
    r = Running(srv.Served(tiny_model_dir, "tiny", fp32()))
    assert r.client().completions.create(model="tiny", prompt="Hi", max_tokens=4, temperature=0).choices
    assert r.stop() < 5


def test_evaluate_through_tutorloop_serve_is_the_local_engines_greedy(tiny_model_dir, tmp_path, monkeypatch):
    """`evaluate.backend: openai` pointed at `tutorloop serve` scores exactly what the local engine
    scores (issue 24 item 2): same completions, token for token, in fp32."""
    from conftest import tiny_params

    from components import evaluate
    from tutorloop.config import validate
    from tutorloop.data.jsonl import read_jsonl, write_jsonl
    from tutorloop.teachers import ProceduralTeacher

    monkeypatch.setenv("TUTORLOOP_TRACKING", "off")
    monkeypatch.setenv("TUTORLOOP_TEST_SERVE_KEY", "unused")
    rows = [{"id": f"p{i}", "question": r["question"], "answer": r["answer"], "family": r["family"]}
            for i, r in enumerate(ProceduralTeacher().problems(6, seed=4))]
    write_jsonl(tmp_path / "test.jsonl", rows)
    raw = tiny_params(tiny_model_dir)
    raw["evaluate"].update(gsm8k={"path": "", "dataset": "", "subset": "main", "split": "test", "limit": 0})
    local = evaluate.run(validate(raw), tiny_model_dir, tmp_path / "test.jsonl", tmp_path / "local.json",
                         tmp_path / "local")
    served = Running(srv.Served(tiny_model_dir, tiny_model_dir.name, fp32()))
    try:
        raw["evaluate"].update(backend="openai", server={
            "base_url": served.url, "model": "", "api_key_env": "TUTORLOOP_TEST_SERVE_KEY", "concurrency": 4,
            "timeout": 120, "max_retries": 1, "n": True, "cache_dir": str(tmp_path / "cache")})
        remote = evaluate.run(validate(raw), tiny_model_dir, tmp_path / "test.jsonl", tmp_path / "remote.json",
                              tmp_path / "remote")
    finally:
        served.stop()
    completions = lambda d: [p["completion"] for p in read_jsonl(tmp_path / d / "predictions.jsonl")]  # noqa: E731
    assert completions("remote") == completions("local") and remote["requests"] == 6
    assert remote["accuracy"] == local["accuracy"]


def test_backend_vllm_execs_vllm_serve_on_the_folder(tiny_model_dir, tmp_path):
    """`--backend vllm` replaces the process with `vllm serve <folder>` (a fake vllm records its
    argv here) and says the calculator is off; without vllm it is a one-line error, exit 2."""
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("tutorloop")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "vllm").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'argv'}\n")
    (fake / "vllm").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin"}
    proc = subprocess.run([str(exe), "serve", "--model", str(tiny_model_dir), "--backend", "vllm", "--port", "8123"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "calculator is off under vLLM" in proc.stderr
    assert (tmp_path / "argv").read_text().split() == ["serve", str(tiny_model_dir), "--served-model-name",
                                                       tiny_model_dir.name, "--host", "127.0.0.1", "--port", "8123"]
    env["PATH"] = "/usr/bin:/bin"
    proc = subprocess.run([str(exe), "serve", "--model", str(tiny_model_dir), "--backend", "vllm"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no `vllm`" in proc.stderr


def test_sigterm_stops_the_real_server_within_5_s_with_a_request_in_flight(tiny_model_dir):
    """`tutorloop serve` as users start it: SIGTERM while a long request decodes ends the process
    within 5 s (uvicorn's graceful timeout; the in-flight request is answered or its connection closed)."""
    import signal
    import subprocess
    import sys

    port = free_port()
    exe = Path(sys.executable).with_name("tutorloop")
    proc = subprocess.Popen([str(exe), "serve", "--model", str(tiny_model_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/models", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        body = {"model": tiny_model_dir.name, "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0}
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/completions", json=body, timeout=60)
            time.sleep(1.0)                                  # the request is decoding
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            stopped = time.monotonic() - start
            try:
                pending.result()
            except httpx.HTTPError:
                pass                                         # aborted: the connection closed, not hung
        assert stopped < 5.0, f"SIGTERM took {stopped:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_errors_keep_the_openai_shape_and_a_cancelled_request_fails_no_other(tiny_model_dir, monkeypatch):
    """A lone surrogate is a 400, an internal failure a JSON 500 (never a bare page); a future
    cancelled by its client does not fail the rest of its engine call (InvalidStateError)."""
    from concurrent.futures import Future

    from fastapi.testclient import TestClient

    served = srv.Served(tiny_model_dir, "tiny", fp32(), rows=8)
    client = TestClient(srv.create_app(served), raise_server_exceptions=False)
    body = '{"model": "tiny", "prompt": "half \\ud800 pair", "max_tokens": 2}'
    bad = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error", bad.text
    monkeypatch.setattr(srv.Served, "prompt_tokens", lambda self, text: 1 / 0)
    boom = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
    assert boom.status_code == 500 and boom.json()["error"] == {
        "message": "internal error (ZeroDivisionError)", "type": "internal_error", "param": None, "code": None}
    gone = srv.Job(["a"], 1, 0.0, 1.0, 4, 0)
    gone.future.cancel()
    gone.answer(0, ["x"], [1], ["stop"])                      # must not raise InvalidStateError
    srv.settle(gone.future, error=RuntimeError("engine"))      # nor on the error path
    alive = srv.Job(["b"], 1, 0.0, 1.0, 4, 0, future=Future())
    alive.answer(0, ["y"], [1], ["stop"])
    assert alive.future.result() == ([["y"]], [[1]], [["stop"]])


def test_an_api_key_is_required_when_set_and_loopback_answers_loopback_names_only(tiny_model_dir):
    """--api-key-env: 401 without the bearer token (OpenAI-shaped), the SDK with the key works; a
    server on loopback refuses another Host header (DNS rebinding), one bound elsewhere does not."""
    from fastapi.testclient import TestClient

    served = srv.Served(tiny_model_dir, "tiny", fp32(), rows=8)
    hosts = srv.allowed_hosts("127.0.0.1", 8000)
    client = TestClient(srv.create_app(served, api_key="s3cret", hosts=hosts), base_url="http://127.0.0.1:8000")
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": 0}
    assert client.post("/v1/completions", json=body).status_code == 401
    wrong = client.post("/v1/completions", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert client.post("/v1/completions", json=body, headers={"authorization": "Bearer s3cret"}).status_code == 200
    rebound = client.post("/v1/completions", json=body, headers={"authorization": "Bearer s3cret",
                                                                  "host": "evil.example:8000"})
    assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"
    assert srv.allowed_hosts("0.0.0.0", 8000) is None and "localhost:8000" in hosts


def test_serve_without_a_key_off_loopback_warns_and_a_missing_key_variable_is_an_error(tiny_model_dir, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from tutorloop.cli import app

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: started.update(kw))
    result = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0",
                                      "--precision", "float32"])
    assert result.exit_code == 0 and "without a key" in result.stderr and started["host"] == "0.0.0.0"
    monkeypatch.delenv("TUTORLOOP_TEST_KEY", raising=False)
    missing = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), "--api-key-env", "TUTORLOOP_TEST_KEY"])
    assert missing.exit_code == 2 and "TUTORLOOP_TEST_KEY" in missing.stderr
    monkeypatch.setenv("TUTORLOOP_TEST_KEY", "k3y-value")
    keyed = CliRunner().invoke(app, ["serve", "--model", str(tiny_model_dir), "--api-key-env", "TUTORLOOP_TEST_KEY",
                                     "--precision", "float32"])
    assert keyed.exit_code == 0 and "without a key" not in keyed.stderr and "k3y-value" not in keyed.output


@pytest.fixture
def counted(tiny_model_dir, monkeypatch):
    """A fresh server whose engine counts (and slows) decode steps and records the step of each `drop`."""
    from tutorloop.inference import engine

    seen = {"steps": 0, "dropped": []}
    real_step, real_drop = engine._Run.step, engine._Run.drop

    def step(self):   # 5 ms a step: 800 tokens take seconds, so a client can give up mid-request
        seen["steps"] += 1
        time.sleep(0.005)
        return real_step(self)

    def drop(self, prompts):
        seen["dropped"].append(seen["steps"])
        return real_drop(self, prompts)

    monkeypatch.setattr(engine._Run, "step", step)
    monkeypatch.setattr(engine._Run, "drop", drop)
    r = Running(srv.Served(tiny_model_dir, "tiny", fp32(), rows=8))
    yield r, seen
    r.stop()


def _settled(seen, drops: int, timeout: float = 30) -> None:
    """Wait for `drops` drops, then for the engine to stop stepping."""
    deadline = time.monotonic() + timeout
    while len(seen["dropped"]) < drops:
        assert time.monotonic() < deadline, "the disconnect never reached the engine"
        time.sleep(0.05)
    last = -1
    while last != seen["steps"]:
        last = seen["steps"]
        time.sleep(0.3)


LONG = {"model": "tiny", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 800}   # never ends early


def test_a_client_that_disconnects_frees_its_rows_within_a_decode_step(counted):
    running, seen = counted
    with httpx.stream("POST", f"{running.url}/completions", json={**LONG, "stream": True}, timeout=60) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i >= 4:
                break                                            # the client goes away mid-stream
    _settled(seen, 1)
    assert seen["steps"] - seen["dropped"][0] <= 2 and seen["steps"] < 400, seen
    with pytest.raises(httpx.ReadTimeout):                      # a non-streamed request given up on
        httpx.post(f"{running.url}/completions", json=LONG, timeout=1.5)
    _settled(seen, 2)
    assert seen["steps"] - seen["dropped"][1] <= 2, seen
    ok = running.client().completions.create(model="tiny", prompt="Hi", temperature=0, max_tokens=3)
    assert ok.choices[0].finish_reason in ("length", "stop")   # and the server goes on serving


def test_held_requests_are_served_within_a_bound_under_steady_traffic(running):
    """Greedy requests arriving back to back keep a greedy call alive; a sampled request waits at
    most HOLD_S plus the call's drain, not until the greedy traffic stops."""
    c = running.client()
    stop, answered = threading.Event(), {}

    def greedy():
        while not stop.is_set():
            c.completions.create(model="tiny", prompt="Count:", temperature=0, max_tokens=24)

    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            pool.submit(greedy)
        time.sleep(1.0)
        sent = time.monotonic()
        c.completions.create(model="tiny", prompt="Pick:", temperature=0.7, max_tokens=4, seed=1)
        answered["after"] = time.monotonic() - sent
        answered["traffic_running"] = not stop.is_set()
        stop.set()
    assert answered["traffic_running"], answered
    assert answered["after"] < 60, answered


def test_limits_answer_413_429_and_400_not_an_unbounded_queue(tiny_model_dir):
    from fastapi.testclient import TestClient

    served = srv.Served(tiny_model_dir, "tiny", fp32(), rows=8, max_waiting=0, max_model_len=64,
                        kv_budget=10 << 20)
    client = TestClient(srv.create_app(served, max_body=2000))
    ask = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
    busy = client.post("/v1/completions", json=ask)              # nothing may wait: the queue is full
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "rate_limit"
    assert client.post("/v1/completions", json={**ask, "prompt": "x" * 3000}).status_code == 413
    assert client.post("/v1/completions", json={**ask, "stop": ["a", "b", "c", "d", "e"]}).status_code == 400
    assert client.post("/v1/completions", json={**ask, "prompt": ["p"] * 65}).status_code == 400
    long = client.post("/v1/completions", json={**ask, "max_tokens": 80})   # prompt + 80 > --max-model-len 64
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    served.context = 0                                          # the KV budget alone: 10 MiB
    huge = client.post("/v1/completions", json={**ask, "max_tokens": 60000})
    assert huge.status_code == 400 and "KV cache" in huge.json()["error"]["message"], huge.text
