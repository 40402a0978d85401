"""The OpenAI-compatible teacher path against a real HTTP server on loopback (tests/chat_server.py
serving a tiny transformers model): retries honouring Retry-After, timeouts, fail-fast 401/400,
an unreachable server, the disk cache, and a `kill -9` halfway through `generate` followed by a
resume that loses nothing, duplicates nothing and re-sends at most `concurrency` calls. An API-key
canary must appear nowhere the project writes (mlflow.db, mlartifacts, DVC files, outputs, logs).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from chat_server import ChatServer
from conftest import copy_project, tiny_params

KEY_ENV = "TUTORLOOP_TEST_TEACHER_KEY"
MSG = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have?"}]


@pytest.fixture
def server(tiny_model_dir):
    with ChatServer(tiny_model_dir) as s:
        yield s


def chat(server, monkeypatch, key="anything", **kw):
    from tutorloop.llm.client import OpenAIChat

    monkeypatch.setenv(KEY_ENV, key)
    return OpenAIChat("tiny", server.url, KEY_ENV, **{"timeout": 10, "max_retries": 4, **kw})


def test_retries_429_and_500_honouring_retry_after(server, monkeypatch):
    from tutorloop.llm.client import Sampling

    server.faults = [("429", 1), ("500", 0), ("429", 1)]
    start = time.perf_counter()
    text = chat(server, monkeypatch)(MSG, Sampling(temperature=0, max_tokens=8))
    took = time.perf_counter() - start
    assert isinstance(text, str) and server.requests == 4 and server.completions == 1
    assert took >= 2.0, f"two Retry-After: 1 replies must wait >= 2 s, took {took:.2f}"


def test_timeouts_are_retried(server, monkeypatch):
    from tutorloop.llm.client import Sampling

    server.faults = [("sleep", 3.0)]
    chat(server, monkeypatch, timeout=1.0, max_retries=2)(MSG, Sampling(temperature=0, max_tokens=8))
    assert server.requests == 2  # the slow one timed out client-side, the retry answered


def test_wrong_key_fails_fast_without_revealing_it(tiny_model_dir, monkeypatch):
    from tutorloop.llm.client import Sampling, TeacherError

    canary = "sk-canary-4f1d2b9e7a"
    with ChatServer(tiny_model_dir, api_key="sk-the-right-one") as s:
        with pytest.raises(TeacherError) as err:
            chat(s, monkeypatch, key=canary)(MSG, Sampling())
        assert s.requests == 1, "401 is not retried"
    assert KEY_ENV in str(err.value) and "401" in str(err.value) and canary not in str(err.value)


def test_key_canary_never_reaches_config_errors_mlflow_or_teacher_errors(tiny_model_dir, tmp_path, monkeypatch):
    """A key pasted into api_key_env, or carried in a base_url as user:token@, appears in no config
    error, no teacher error and nothing MLflow stores (params, tags, dict and text artifacts)."""
    from tutorloop.config import ConfigError, validate
    from tutorloop.llm.client import OpenAIChat, Sampling, TeacherError
    from tutorloop.runtime import tracking

    canary = "sk-canary-userinfo-5e8a1d"
    raw = tiny_params(tiny_model_dir)
    raw["generate"]["teacher"]["api_key_env"] = canary
    with pytest.raises(ConfigError) as err:
        validate(raw)
    assert "generate.teacher.api_key_env" in str(err.value) and canary not in str(err.value)
    url = f"http://tutor:{canary}@127.0.0.1:9/v1"  # port 9: nothing listens, the call fails fast
    raw["generate"]["teacher"].update(api_key_env=KEY_ENV, base_url=url)
    params = validate(raw)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUTORLOOP_TRACKING", "on")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    with tracking.stage_run("generate", params.generate.model_dump()) as log:
        log.tags({"teacher.url": url})
        log.json({"teacher": params.generate.teacher.model_dump()}, "teacher.json")
        log.text(f"teacher at {url}", "teacher.txt")
    monkeypatch.setenv(KEY_ENV, "x")
    with pytest.raises(TeacherError) as err:
        OpenAIChat("tiny", url, KEY_ENV, timeout=2, max_retries=0)(MSG, Sampling())
    assert "127.0.0.1:9" in str(err.value) and canary not in str(err.value)
    stored = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert (tmp_path / "mlflow.db").exists() and any(f.name == "teacher.json" for f in stored)
    leaks = [str(f.relative_to(tmp_path)) for f in stored if canary.encode() in f.read_bytes()]
    assert not leaks, f"API key canary found in {leaks}"
    # the redacted params are still there: the host and path, not the credentials
    from mlflow import MlflowClient

    run = MlflowClient(tracking.tracking_uri()).search_runs([tracking.ensure_store()])[0]
    assert run.data.params["teacher.base_url"] == "http://***@127.0.0.1:9/v1"


def test_bad_request_fails_fast(server, monkeypatch):
    from tutorloop.llm.client import OpenAIChat, Sampling, TeacherError

    monkeypatch.setenv(KEY_ENV, "x")
    with pytest.raises(TeacherError, match="400"):
        OpenAIChat("no-such-model", server.url, KEY_ENV, max_retries=4)(MSG, Sampling())
    assert server.requests == 1


def test_unreachable_teacher_says_so(monkeypatch):
    from tutorloop.llm.client import OpenAIChat, Sampling, TeacherError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setenv(KEY_ENV, "x")
    with pytest.raises(TeacherError, match="cannot reach"):
        OpenAIChat("tiny", f"http://127.0.0.1:{port}/v1", KEY_ENV, timeout=2, max_retries=1)(MSG, Sampling())


def test_cache_replays_finished_calls(server, monkeypatch, tmp_path):
    from tutorloop.llm.cache import CachedChat
    from tutorloop.llm.client import Sampling

    cached = CachedChat(chat(server, monkeypatch), tmp_path / "calls.sqlite")
    s = Sampling(temperature=0.7, max_tokens=8, seed=3)
    first = cached(MSG, s)
    other_sample = cached(MSG, s, sample=1)
    again = CachedChat(chat(server, monkeypatch), tmp_path / "calls.sqlite")  # a new process, same file
    assert again(MSG, s) == first and again(MSG, s, sample=1) == other_sample
    assert server.completions == 2 and again.hits == 2 and again.misses == 0


def test_identical_misses_in_flight_are_paid_for_once(tmp_path):
    """Two threads asking the same uncached question at once: one call, both get its reply."""
    import threading

    from tutorloop.llm.cache import CachedChat
    from tutorloop.llm.client import Sampling

    started, release, calls = threading.Event(), threading.Event(), []

    class Slow:
        kind, model = "slow", "m"

        def __call__(self, messages, sampling):
            calls.append(1)
            started.set()
            release.wait(10)
            return f"reply {len(calls)}"

    cached = CachedChat(Slow(), tmp_path / "calls.sqlite")
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(cached(MSG, Sampling(seed=1)))) for _ in range(3)]
    threads[0].start()
    assert started.wait(10)
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)          # the others are waiting on the first call, not calling
    release.set()
    for t in threads:
        t.join(10)
    assert out == ["reply 1"] * 3 and len(calls) == 1 and cached.misses == 1 and cached.hits == 2


def test_local_teacher_replies_are_keyed_by_the_models_content(tmp_path):
    """A model retrained into the same folder is another model: not answered from the old replies."""
    from tutorloop.config import Teacher
    from tutorloop.hardware import Precision, ResolvedRuntime
    from tutorloop.teachers.chat import make_chat

    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    cfg = Teacher(kind="transformers", model=str(folder))
    runtime = ResolvedRuntime("cpu", Precision("float32", None, ""), "sdpa", 1)   # the stage's, resolved
    before = make_chat(cfg, tmp_path / "cache", runtime).model
    assert make_chat(cfg, tmp_path / "cache", runtime).model == before      # same bytes, same key
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert make_chat(cfg, tmp_path / "cache", runtime).model != before
    with pytest.raises(ValueError, match="resolved runtime"):               # a local model needs one
        make_chat(cfg, tmp_path / "cache")
    assert make_chat(Teacher(kind="openai", model="gpt-x"), tmp_path / "cache").model == "gpt-x"


def test_journal_repairs_a_torn_last_line(tmp_path):
    from tutorloop.teachers.generation import Journal

    j = Journal(tmp_path / "j.jsonl")
    j.append({"index": 0, "seed_id": "a", "records": [], "drops": {}})
    j.close()
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"index": 1, "seed_id": "b", "rec')  # killed mid-write
    j = Journal(tmp_path / "j.jsonl")
    assert set(j.done) == {0} and j.repaired > 0
    j.append({"index": 1, "seed_id": "b", "records": [], "drops": {}})
    j.close()
    assert [json.loads(x)["index"] for x in (tmp_path / "j.jsonl").read_text().splitlines()] == [0, 1]


# --- kill -9 and resume, end to end ---------------------------------------------------------

def _gen_params(model_dir, server_url: str, seeds_file: Path) -> dict:
    raw = tiny_params(model_dir)
    raw["generate"].update(
        n_test=4, n_practice=4, n_sft=40,
        teacher={"kind": "openai", "model": "tiny", "base_url": server_url, "api_key_env": KEY_ENV,
                 "temperature": 0.7, "top_p": 0.95, "max_tokens": 16, "seed": 0, "concurrency": 4, "timeout": 20,
                 "max_retries": 3, "json_mode": True, "verify": True, "batch_size": 8},
        seeds={"source": "jsonl", "path": str(seeds_file), "dataset": "", "subset": "main", "split": "train",
               "offset": 0, "shuffle": True},
        agents={"ama": 1, "suggest_edit_rounds": 1, "edits": ["step"], "test_agents": False},
        cache_dir=".tutorloop-cache")
    return raw


def _stage_env(extra: dict) -> dict:
    from flows.pipeline import _stage_env as env

    return {**env(None), "TUTORLOOP_PROGRESS": "0", **extra}


@pytest.mark.slow
def test_kill_at_half_then_resume_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    from tutorloop.config import validate
    from tutorloop.data.jsonl import read_jsonl
    from tutorloop.teachers import ProceduralTeacher
    from tutorloop.teachers.generation import generate_dataset as run

    seeds_file = tmp_path / "seeds.jsonl"
    seeds_file.write_text("".join(json.dumps({"question": r["question"], "answer": r["solution"]}) + "\n"
                                  for r in ProceduralTeacher().problems(80, seed=5)))
    canary = "sk-canary-resume-93c1f0"
    with ChatServer(tiny_model_dir, delay_s=0.08) as server:
        raw = _gen_params(tiny_model_dir, server.url, seeds_file)
        # The uninterrupted reference, in-process, with its own cache.
        os.environ[KEY_ENV] = canary
        try:
            ref = run(validate(raw).generate, tmp_path / "ref", cache_dir=tmp_path / "ref-cache", progress=False)
        finally:
            del os.environ[KEY_ENV]
        ref_calls = server.requests
        assert ref_calls == ref["calls/sent"] > 40

        project = copy_project(tmp_path / "project")
        (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        env = _stage_env({KEY_ENV: canary, "TUTORLOOP_TRACKING": "off"})
        before = server.requests
        log = open(tmp_path / "run1.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "components.generate", "data/generated"], cwd=project,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        journal = project / ".tutorloop-cache" / "journal"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            sft = list(journal.glob("*-sft.jsonl"))
            if sft and len(sft[0].read_text().splitlines()) >= 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"generate finished before the kill: {(tmp_path / 'run1.log').read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        calls_before_kill = server.requests - before
        assert calls_before_kill < ref_calls, "killed about halfway, not at the end"
        assert not (project / "data" / "generated" / "sft.jsonl").exists()

        # Resume through DVC, with MLflow tracking on: the canary must not leak anywhere.
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        dvc = [sys.executable, "-m", "dvc"]
        env2 = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
        env2.pop("TUTORLOOP_TRACKING")
        subprocess.run(dvc + ["init", "-q"], cwd=project, check=True, env=env2)
        resumed = subprocess.run(dvc + ["repro", "generate"], cwd=project, env=env2, capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        calls_after = server.requests - before - calls_before_kill

    out = project / "data" / "generated"
    stats = {**json.loads((out / "stats.json").read_text()),
             **json.loads((project / "data" / "generate_run.json").read_text())}
    assert "calls/sent" not in json.loads((out / "stats.json").read_text())  # the cached output is run-independent
    for split in ("test", "practice", "sft"):
        got, want = read_jsonl(out / f"{split}.jsonl"), read_jsonl(tmp_path / "ref" / f"{split}.jsonl")
        ids = [r["id"] for r in got]
        assert len(ids) == len(set(ids)), f"{split}: duplicated records"
        assert got == want, f"{split}: resumed output differs from the uninterrupted run"
    assert stats["journal_replayed_seeds"] >= 20
    # finished calls are never paid again (journaled seeds are skipped, finished calls of unfinished
    # seeds hit the cache); only calls in flight at the kill (<= concurrency = 4) are sent twice
    assert ref_calls <= calls_before_kill + calls_after <= ref_calls + 4, (calls_before_kill, calls_after, ref_calls)
    assert stats["calls/sent"] == calls_after
    print(f"\nkill/resume: reference {ref_calls} calls; {calls_before_kill} before the kill, {calls_after} after "
          f"(cache hits {stats['calls/cache_hits']}); records {stats['n_sft']}+{stats['n_practice']}+{stats['n_test']}")

    leaks = []
    texts = [resumed.stdout, resumed.stderr, (tmp_path / "run1.log").read_text()]
    leaks += [f"log {i}" for i, t in enumerate(texts) if canary in t]
    for f in project.rglob("*"):
        if f.is_file() and canary.encode() in f.read_bytes():
            leaks.append(str(f.relative_to(project)))
    assert (project / "mlflow.db").exists() and (project / "dvc.lock").exists()
    assert not leaks, f"API key canary found in {leaks}"


def test_local_transformers_teacher_runs_the_agents_batched(tiny_model_dir, tmp_path):
    """teacher.kind=transformers: the same agent flow on a local model, calls micro-batched."""
    from tutorloop.config import validate
    from tutorloop.data.jsonl import read_jsonl
    from tutorloop.hardware import resolve_runtime
    from tutorloop.teachers import ProceduralTeacher
    from tutorloop.teachers.generation import generate_dataset as run

    seeds_file = tmp_path / "seeds.jsonl"
    seeds_file.write_text("".join(json.dumps({"question": r["question"], "answer": r["solution"]}) + "\n"
                                  for r in ProceduralTeacher().problems(20, seed=9)))
    raw = _gen_params(tiny_model_dir, "", seeds_file)
    raw["generate"]["teacher"].update(kind="transformers", model=str(tiny_model_dir), base_url="", concurrency=4,
                                      batch_size=4)
    raw["generate"].update(n_test=2, n_practice=2, n_sft=6)
    params = validate(raw)
    cfg, runtime = params.generate, resolve_runtime(params.runtime)   # cpu, float32 (tiny_params), as a stage resolves it
    stats = run(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", runtime=runtime, progress=False)
    sft = read_jsonl(tmp_path / "out" / "sft.jsonl")
    assert len(sft) == 6 and all(r["provenance"]["teacher"] == "transformers" for r in sft)
    assert stats["calls/sent"] >= 2 * 8  # AMA + Suggester per expanded seed (a random model's replies fail to parse)
    assert stats["drop/bad_reply/ama"] >= 8
    again = run(cfg, tmp_path / "out2", cache_dir=tmp_path / "cache", runtime=runtime, progress=False)
    assert again.get("calls/sent", 0) == 0  # journal + cache: nothing is generated twice
    # an LLM teacher expanding the embedded teacher's seeds (their exact solutions are kept)
    raw["generate"]["seeds"].update(source="procedural", path="")
    run(validate(raw).generate, tmp_path / "out3", cache_dir=tmp_path / "cache", runtime=runtime, progress=False)
    seeds = read_jsonl(tmp_path / "out3" / "test.jsonl")
    assert len(seeds) == 2 and all(r["provenance"]["seed_id"].split(":")[0] == r["family"] for r in seeds)


def test_llm_judge_over_http_is_cached_and_counts_unreadable_verdicts(server, monkeypatch, tmp_path):
    """The judge goes through the same backend and cache as the teacher. double_check: where the
    grader read an answer its verdict stands and a disagreeing judge is counted; where it read none
    the judge decides; a reply that is not the JSON verdict changes nothing and is counted."""
    from tutorloop.config import Judge
    from tutorloop.eval.feedback import judge
    from tutorloop.teachers.judge import llm_judge

    monkeypatch.setenv(KEY_ENV, "x")
    probs = [{"id": "a", "question": "2+2?", "solution": "2+2=4\n#### 4", "answer": "4"}]
    samples = [{"problem_id": "a", "sample": i, "completion": c} for i, c in enumerate(["#### 4", "#### 5", "??"])]
    cfg = Judge(mode="double_check", model="tiny", base_url=server.url, api_key_env=KEY_ENV, concurrency=2,
                cache_dir=str(tmp_path))
    verdicts = {"#### 4": '{"correct": true}', "#### 5": 'Sure! {"correct": true}', "??": '{"correct": true}'}
    server.script = lambda req: verdicts[req["messages"][-1]["content"].rsplit("Student solution:\n", 1)[1]]
    rows = judge(probs, samples)
    stats = llm_judge(rows, probs, cfg)
    assert stats == {"judge_calls": 3, "judge_decided": 1, "judge_unparsed": 0, "judge_disagreement_rate": 0.5}
    assert [r["correct"] for r in rows] == [True, False, True]  # "#### 5" stays wrong; "??" the judge decides
    assert [r["judge"] for r in rows] == [True, True, True] and server.completions == 3
    again = judge(probs, samples)
    assert llm_judge(again, probs, cfg) == stats and server.completions == 3  # every verdict from the cache
    verdicts["??"] = "I cannot tell."  # an unreadable verdict (fresh cache): nothing changes, it is counted
    rows = judge(probs, samples)
    stats = llm_judge(rows, probs, cfg.model_copy(update={"cache_dir": str(tmp_path / "fresh")}))
    assert stats["judge_unparsed"] == 1 and stats["judge_decided"] == 0 and rows[2]["correct"] is False


def test_an_openai_key_goes_to_openai_only_and_no_url_carries_credentials(monkeypatch):
    """OPENAI_API_KEY (the teacher's and judge's default) is sent to api.openai.com alone: a local
    or third-party server gets no key unless `api_key_env` names one of its own; a base_url with
    user:token@ (which dvc.lock would keep and git would carry) is refused, the token unshown."""
    from tutorloop.llm.client import OpenAIChat, TeacherError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("LOCAL_KEY", "local-secret")
    assert OpenAIChat("m", "", "OPENAI_API_KEY")._client.api_key == "sk-openai-secret"
    assert OpenAIChat("m", "https://api.openai.com/v1", "OPENAI_API_KEY")._client.api_key == "sk-openai-secret"
    assert OpenAIChat("m", "http://localhost:8000/v1", "OPENAI_API_KEY")._client.api_key == "not-needed"
    assert OpenAIChat("m", "http://gpu-box:8000/v1", "LOCAL_KEY")._client.api_key == "local-secret"
    with pytest.raises(TeacherError, match="credentials inside the URL") as err:
        OpenAIChat("m", "http://tutor:tok3n-value@gpu-box:8000/v1", "LOCAL_KEY")
    assert "tok3n-value" not in str(err.value)
