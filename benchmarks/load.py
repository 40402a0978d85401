"""`tutorloop serve` under load and abuse: N concurrent clients for a while against the real server.

Each client loops: greedy or sampled (half each), streamed or not (half each); 10% of streamed
requests disconnect after a few chunks, 5% of requests are malformed or over-long (a prompt past
--max-model-len, a broken JSON body, an over-size body). Reported: every request's outcome
(200 / 400 / 413 / 429 / 503 and any that hung past its timeout, which must be 0), the server's
peak RSS (sampled every 0.5 s) against its KV budget, p50/p99 latency of the answered requests,
useful completion tokens/s, and the longest wait of a sampled request (its latency while greedy
traffic runs). The first line names the machine: figures are per CPU kind. Compare tokens/s with
benchmarks/serving.py's no-abuse figure on the same CPU.

    python benchmarks/load.py models/base [--clients 200] [--seconds 120] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tutorloop import hardware  # noqa: E402
from tutorloop.teachers import ProceduralTeacher  # noqa: E402


def start(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("tutorloop")
    return subprocess.Popen([str(exe), "serve", "--model", model, "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with code {proc.returncode}")
            try:
                if (await client.get(f"{url}/models", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                await asyncio.sleep(0.5)
    raise SystemExit("the server did not start")


async def one(client, url: str, rng: random.Random, questions: list[str], max_len: int) -> dict:
    """One request of the mix; its outcome, latency, tokens, and whether it was sampled."""
    import httpx

    kind = rng.random()
    sampled, stream = rng.random() < 0.5, rng.random() < 0.5
    body = {"model": "default", "messages": [{"role": "user", "content": rng.choice(questions)}],
            "max_tokens": 64, "temperature": 0.7 if sampled else 0.0, "seed": rng.randrange(10**6)}
    start = time.monotonic()
    try:
        if kind < 0.02:    # malformed JSON
            r = await client.post(f"{url}/chat/completions", content=b'{"model": "default", "messages": [',
                                  headers={"content-type": "application/json"})
            return {"status": r.status_code, "seconds": time.monotonic() - start, "tokens": 0, "sampled": False}
        if kind < 0.035:   # over-size body
            r = await client.post(f"{url}/chat/completions", json={**body, "pad": "x" * (5 << 20)})
            return {"status": r.status_code, "seconds": time.monotonic() - start, "tokens": 0, "sampled": False}
        if kind < 0.05:    # over-long: prompt + max_tokens past --max-model-len
            body["messages"][0]["content"] = "word " * max_len
        if not stream:
            r = await client.post(f"{url}/chat/completions", json=body)
            tokens = r.json().get("usage", {}).get("completion_tokens", 0) if r.status_code == 200 else 0
            return {"status": r.status_code, "seconds": time.monotonic() - start, "tokens": tokens, "sampled": sampled}
        leave = rng.random() < 0.1
        async with client.stream("POST", f"{url}/chat/completions", json={**body, "stream": True}) as r:
            chunks = 0
            async for line in r.aiter_lines():
                chunks += line.startswith("data: {")
                if leave and chunks >= 3:
                    return {"status": "disconnected", "seconds": time.monotonic() - start, "tokens": 0,
                            "sampled": sampled}
            return {"status": r.status_code, "seconds": time.monotonic() - start, "tokens": max(0, chunks - 2),
                    "sampled": sampled}
    except httpx.TimeoutException:
        return {"status": "hung", "seconds": time.monotonic() - start, "tokens": 0, "sampled": sampled}


async def client_loop(i: int, url: str, until: float, questions: list[str], max_len: int, timeout: float,
                      out: list[dict]) -> None:
    import httpx

    rng = random.Random(i)
    async with httpx.AsyncClient(timeout=timeout) as client:
        while time.monotonic() < until:
            got = await one(client, url, rng, questions, max_len)
            out.append(got)
            if got["status"] == 429:
                await asyncio.sleep(1.0)   # Retry-After


async def watch_rss(pid: int, until: float, peak: list[int]) -> None:
    import psutil

    proc = psutil.Process(pid)
    while time.monotonic() < until:
        try:
            peak[0] = max(peak[0], proc.memory_info().rss)
        except psutil.Error:
            return
        await asyncio.sleep(0.5)


def summary(results: list[dict], seconds: float) -> dict:
    answered = sorted(r["seconds"] for r in results if r["status"] == 200)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    pick = lambda q: answered[min(len(answered) - 1, int(q * len(answered)))] if answered else None  # noqa: E731
    sampled = [r["seconds"] for r in results if r["sampled"] and r["status"] == 200]
    return {"requests": len(results), "statuses": statuses, "hung": statuses.get("hung", 0),
            "p50_s": pick(0.5), "p99_s": pick(0.99), "tokens_per_second": sum(r["tokens"] for r in results) / seconds,
            "longest_sampled_wait_s": max(sampled) if sampled else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/base")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-budget-gb", type=float, default=4.0)
    parser.add_argument("--timeout", type=float, default=300, help="seconds a client waits for one request")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    print(f"machine: {hardware.cpu_summary()}")
    url = f"http://127.0.0.1:{args.port}/v1"
    proc = start(args.model, args.port, ["--max-model-len", str(args.max_model_len),
                                         "--kv-budget-gb", str(args.kv_budget_gb)])
    questions = [p["question"] for p in ProceduralTeacher().problems(200, seed=5)]
    results: list[dict] = []
    peak = [0]
    try:
        asyncio.run(ready(url, proc))
        until = time.monotonic() + args.seconds

        async def run() -> None:
            watcher = asyncio.create_task(watch_rss(proc.pid, until + args.timeout, peak))
            await asyncio.gather(*(client_loop(i, url, until, questions, args.max_model_len, args.timeout, results)
                                   for i in range(args.clients)))
            watcher.cancel()

        start_t = time.monotonic()
        asyncio.run(run())
        elapsed = time.monotonic() - start_t
    finally:
        proc.terminate()
        proc.wait(30)
    figures = {**summary(results, elapsed), "peak_rss_gb": peak[0] / 2**30, "kv_budget_gb": args.kv_budget_gb,
               "clients": args.clients, "seconds": elapsed}
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
