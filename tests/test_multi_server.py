"""Sampling over several servers (`practice.server.base_url` as a list): two real `tutorloop
serve` processes on the tiny model share the requests, one is killed mid-run, every request is
still answered, and the seeded samples are the ones a single server gives."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support import free_port

from tutorloop.config import StudentEndpoint
from tutorloop.inference.sampler import ServerSampler
from tutorloop.llm.client import OpenAIChat, PooledChat

EXE = Path(sys.executable).with_name("tutorloop")


def start_server(model: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(EXE), "serve", "--model", str(model), "--port", str(port), "--precision", "float32",
                             "--rows", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "tutorloop serve did not start"
        time.sleep(0.3)


@pytest.fixture
def two_servers(tiny_model_dir):
    procs = [start_server(tiny_model_dir) for _ in range(2)]
    yield procs
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def sample(urls, model_dir, cache: Path, **kw):
    server = StudentEndpoint(base_url=urls if len(urls) > 1 else urls[0], cache_dir=str(cache),
                             concurrency=4, max_retries=2, timeout=60)
    sampler = ServerSampler(server, model_dir, "practice")
    convs = [[{"role": "user", "content": f"What is {i} plus {i + 3}?"}] for i in range(12)]
    return sampler(convs, k=2, do_sample=True, temperature=0.7, top_p=0.95, max_new_tokens=12, seed=5, **kw), sampler


def test_requests_spread_over_servers_and_move_on_when_one_dies(two_servers, tiny_model_dir, tmp_path, monkeypatch):
    (a, url_a), (b, url_b) = two_servers
    one, _ = sample([url_a], tiny_model_dir, tmp_path / "one")
    both, _ = sample([url_a, url_b], tiny_model_dir, tmp_path / "both")
    assert both.texts == one.texts and both.requests == one.requests   # seeded: the server does not matter

    real, sent, pools = OpenAIChat.complete, {"n": 0}, []

    def complete(self, messages, sampling, n=1):
        sent["n"] += 1
        if sent["n"] == 6 and b.poll() is None:   # server B dies mid-run
            b.kill()
            b.wait(10)
        return real(self, messages, sampling, n)

    monkeypatch.setattr(OpenAIChat, "complete", complete)
    real_init = PooledChat.__init__
    monkeypatch.setattr(PooledChat, "__init__", lambda self, *a, **k: (real_init(self, *a, **k), pools.append(self))[0])
    survived, _ = sample([url_a, url_b], tiny_model_dir, tmp_path / "killed")
    assert b.poll() is not None, "server B was not killed mid-run"
    assert survived.texts == one.texts                                  # every request answered, the same text
    assert pools and pools[0].failovers >= 1                            # some moved from B to A


def test_a_list_of_urls_validates_and_a_single_one_stays_one_client():
    ep = StudentEndpoint(base_url=["http://h1:8000/v1", "http://h2:8000/v1"], model="m")
    assert isinstance(OpenAIChat.of(ep, what="practice.server"), PooledChat)
    assert isinstance(OpenAIChat.of(StudentEndpoint(base_url="http://h1:8000/v1", model="m")), OpenAIChat)
