"""Practice and evaluation through `backend: openai`, end to end against a real HTTP server on
loopback (tests/chat_server.py serving the tiny model, as vLLM would serve a checkpoint).

- practice: K samples per problem in one request (`n`), the messages the server renders itself,
  the served name taken from the checkpoint folder, the key from the variable *named* in params
  (and written nowhere), the server's completion tokens in the metrics; a re-run sends nothing;
- one request per sample (`server.n: false`) with seeds seed + 7919k, surviving an injected 500;
- a server that ignores `n` is a clear error, not K copies of one sample;
- the cache is keyed by the checkpoint's content: changed weights under the same name re-send;
- evaluation: greedy is temperature 0 and gives the local engine's predictions token for token
  (same template, same model); maj@k samples too; the protocol tells the backends apart.
"""

from __future__ import annotations

import json
import shutil

import pytest
from chat_server import ChatServer
from conftest import tiny_params

from tutorloop.eval.protocol import protocol
from tutorloop.hardware import Precision, ResolvedRuntime


def on(dtype: str, device: str = "cpu") -> ResolvedRuntime:
    """A resolved runtime at `dtype` on `device`, as a stage hands it to the protocol."""
    return ResolvedRuntime(device, Precision(dtype, None, ""), "sdpa", 1)

KEY_ENV = "TUTORLOOP_TEST_SAMPLER_KEY"
pytestmark = pytest.mark.usefixtures("no_tracking")


def _problems(path, n: int, seed: int = 3):
    from tutorloop.data.jsonl import write_jsonl
    from tutorloop.teachers import ProceduralTeacher

    rows = [{"id": f"p{i}", "question": r["question"], "answer": r["answer"], "solution": r["solution"],
             "family": r["family"]} for i, r in enumerate(ProceduralTeacher().problems(n, seed=seed))]
    write_jsonl(path, rows)
    return path


def _params(model_dir, url: str, cache, **server):
    from tutorloop.config import validate

    raw = tiny_params(model_dir)
    srv = {"base_url": url, "model": "", "api_key_env": KEY_ENV, "concurrency": 4, "timeout": 120,
           "max_retries": 3, "n": True, "cache_dir": str(cache), **server}
    raw["practice"].update(backend="openai", server=srv)
    raw["evaluate"].update(backend="openai", server=srv, gsm8k={"path": "", "dataset": "", "subset": "main",
                                                               "split": "test", "limit": 0})
    return validate(raw)


def test_practice_samples_through_a_server_and_a_rerun_sends_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from components import practice
    from tutorloop.data.jsonl import read_jsonl

    canary = "sk-canary-sampler-7d2e41"
    monkeypatch.setenv(KEY_ENV, canary)
    problems = _problems(tmp_path / "practice.jsonl", 5)
    with ChatServer(tiny_model_dir, api_key=canary) as server:
        params = _params(tiny_model_dir, server.url, tmp_path / "cache")
        m = practice.run(params, "1", tiny_model_dir, problems, tmp_path / "r1")
        samples = read_jsonl(tmp_path / "r1" / "samples.jsonl")
        assert m["samples"] == len(samples) == 5 * 2 and m["backend"] == "openai"
        assert [(s["problem_id"], s["sample"]) for s in samples] == [(f"p{i}", k) for i in range(5) for k in range(2)]
        # K samples are one request each (n=2); the server's token counts are the metrics'
        assert m["requests"] == server.completions == server.requests == 5 and m["cache_hits"] == 0
        assert m["new_tokens"] == server.completion_tokens > 0 and m["tokens_per_second"] > 0
        assert set(server.auth_headers) == {f"Bearer {canary}"}
        rnd = params.rounds["1"].practice
        system = params.prompt.system
        for body in server.bodies:
            # messages, not a pre-rendered prompt: the chat template is the server's
            assert [t["role"] for t in body["messages"]] == ["system", "user"]
            assert body["messages"][0]["content"] == system
            assert body["model"] == tiny_model_dir.name   # the checkpoint folder's name
            assert (body["n"], body["temperature"], body["top_p"], body["seed"], body["max_tokens"]) == \
                (2, rnd.temperature, rnd.top_p, rnd.seed, params.practice.max_new_tokens)
        # a re-run (or a killed run resumed) replays every call from the cache: zero requests
        again = practice.run(params, "1", tiny_model_dir, problems, tmp_path / "r1-again")
        assert server.requests == 5 and again["requests"] == 0 and again["cache_hits"] == 5
        assert read_jsonl(tmp_path / "r1-again" / "samples.jsonl") == samples
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert not [str(f) for f in written if canary.encode() in f.read_bytes()], "the key was written somewhere"


def test_one_request_per_sample_with_seed_steps_survives_a_500(tiny_model_dir, tmp_path, monkeypatch):
    from components import practice
    from tutorloop.data.jsonl import read_jsonl

    monkeypatch.setenv(KEY_ENV, "x")
    problems = _problems(tmp_path / "practice.jsonl", 3)
    with ChatServer(tiny_model_dir) as server:
        params = _params(tiny_model_dir, server.url, tmp_path / "cache", n=False, concurrency=1)
        server.faults = [("500", 0)]   # the first request fails; the SDK's retry (backoff) answers it
        m = practice.run(params, "1", tiny_model_dir, problems, tmp_path / "r1")
        assert m["samples"] == len(read_jsonl(tmp_path / "r1" / "samples.jsonl")) == 6
        assert m["requests"] == server.completions == 6 and server.requests == 7
        seed = params.rounds["1"].practice.seed
        assert all("n" not in b for b in server.bodies)
        assert sorted(b["seed"] for b in server.bodies[1:]) == sorted([seed, seed + 7919] * 3)


def test_a_server_that_ignores_n_is_a_clear_error(tiny_model_dir, tmp_path, monkeypatch):
    from components import practice
    from tutorloop.llm.client import TeacherError

    monkeypatch.setenv(KEY_ENV, "x")
    with ChatServer(tiny_model_dir, honour_n=False) as server:
        params = _params(tiny_model_dir, server.url, tmp_path / "cache", concurrency=1)
        with pytest.raises(TeacherError, match=r"ignores `n`; set practice\.server\.n: false"):
            practice.run(params, "1", tiny_model_dir, _problems(tmp_path / "p.jsonl", 2), tmp_path / "r1")


def test_the_cache_is_keyed_by_the_checkpoint_content(tiny_model_dir, tmp_path, monkeypatch):
    """A retrained round served under the same name must not replay the old model's samples."""
    from components import practice

    monkeypatch.setenv(KEY_ENV, "x")
    ckpt = shutil.copytree(tiny_model_dir, tmp_path / "models" / "round-0")
    problems = _problems(tmp_path / "practice.jsonl", 2)
    with ChatServer(tiny_model_dir) as server:
        params = _params(tiny_model_dir, server.url, tmp_path / "cache")
        assert practice.run(params, "1", ckpt, problems, tmp_path / "a")["requests"] == 2
        assert {b["model"] for b in server.bodies} == {"round-0"}
        assert practice.run(params, "1", ckpt, problems, tmp_path / "b")["requests"] == 0
        cfg = json.loads((ckpt / "generation_config.json").read_text())
        (ckpt / "generation_config.json").write_text(json.dumps({**cfg, "note": "retrained"}))
        assert practice.run(params, "1", ckpt, problems, tmp_path / "c")["requests"] == 2


def test_evaluate_through_a_server_is_the_engines_greedy(tiny_model_dir, tmp_path, monkeypatch):
    from components import evaluate
    from tutorloop.config import validate
    from tutorloop.data.jsonl import read_jsonl

    monkeypatch.setenv(KEY_ENV, "x")
    test = _problems(tmp_path / "test.jsonl", 4, seed=11)
    with ChatServer(tiny_model_dir) as server:
        params = _params(tiny_model_dir, server.url, tmp_path / "cache")
        raw = params.model_dump(by_alias=True)
        raw["evaluate"]["maj_k"] = 2
        params = validate(raw)
        m = evaluate.run(params, tiny_model_dir, test, tmp_path / "m.json", tmp_path / "eval")
        greedy = [b for b in server.bodies if b["temperature"] == 0]
        sampled = [b for b in server.bodies if b["temperature"] > 0]
        assert len(greedy) == 4 and len(sampled) == 4 and all(b["n"] == 2 for b in sampled)
        assert all(b["top_p"] == 1.0 and b["max_tokens"] == params.evaluate.max_new_tokens for b in greedy)
        assert m["n"] == 4 and m["backend"] == "openai" and m["requests"] == 4 and "maj_at_2" in m
        assert m["new_tokens"] > 0 and m["tokens_per_second"] > 0
        before = server.requests
        again = evaluate.run(params, tiny_model_dir, test, tmp_path / "m2.json", tmp_path / "eval2")
        assert again["requests"] == 0 and server.requests == before and again["accuracy"] == m["accuracy"]
    # the same model decoded greedily here (the engine, fp32) writes the same completions
    local = validate({**raw, "evaluate": {**raw["evaluate"], "backend": "local"}})
    lm = evaluate.run(local, tiny_model_dir, test, tmp_path / "ml.json", tmp_path / "eval-local")
    assert [p["completion"] for p in read_jsonl(tmp_path / "eval-local" / "predictions.jsonl")] == \
        [p["completion"] for p in read_jsonl(tmp_path / "eval" / "predictions.jsonl")]
    assert lm["protocol"] != m["protocol"] and lm["backend"] == "local"
    bare = validate({**raw, "evaluate": {**raw["evaluate"], "backend": "local", "server": {}}})
    assert protocol(local.evaluate, local.prompt, on("float32")) == \
        protocol(bare.evaluate, bare.prompt, on("float32"))   # server knobs alone change nothing
    # the numerics are part of it: the resolved precision, the decode attention and the device
    from tutorloop.inference.kernels import attention as decode_attention

    ran = "kernel" if decode_attention.load() is not None else "sdpa"    # fp32 has a kernel path too
    assert lm["precision"] == "float32" and lm["attention"] == ran and lm["device"] == "cpu"
    assert lm["protocol"] == protocol(local.evaluate, local.prompt, on("float32"), ran)
    variants = {protocol(local.evaluate, local.prompt, on("float32"), "sdpa"), protocol(local.evaluate, local.prompt, on("bfloat16"), "sdpa"),
                protocol(local.evaluate, local.prompt, on("bfloat16"), "kernel"), protocol(local.evaluate, local.prompt, on("bfloat16", "cuda"), "kernel")}
    assert len(variants) == 4
    # a server's fingerprint stays what it was before the numerics were added: its numerics are its own
    import hashlib
    import json

    def old(cfg, dtype="bfloat16", **extra):
        key = {"prompt": local.prompt.model_dump(), "max_new_tokens": cfg.max_new_tokens, "dtype": dtype,
               "limit": cfg.limit, "fewshot": cfg.fewshot, **extra}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    assert protocol(params.evaluate, params.prompt, None) == protocol(params.evaluate, params.prompt, on("float32")) == m["protocol"] == old(params.evaluate, backend="openai")
    # a local fingerprint is the one it was when precision and device came back from the metrics' strings
    assert lm["protocol"] == old(local.evaluate, "float32", numerics={"attention": ran, "device": "cpu"})
