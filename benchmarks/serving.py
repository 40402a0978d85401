"""Serving throughput: `tutorloop serve` under N concurrent requests vs the engine called in-process.

The same prompts (evaluation's workload: greedy, chat-formatted problems of the embedded
teacher, 160 new tokens), once as one in-process `engine.generate` call over all of them, once as
N concurrent `/v1/chat/completions` requests from the `openai` SDK to the server on loopback
(continuous batching: requests join the engine call in flight). Prints useful tokens per second
for both, their ratio (target >= 0.8 at 64 concurrent requests), and whether every served text
equals the in-process one (greedy, fp32: token for token). The first line names the machine.

    python benchmarks/serving.py [models/base] [--requests 64] [--rows 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.generation import SYSTEM  # noqa: E402
from tutorloop import hardware  # noqa: E402
from tutorloop.config import Runtime  # noqa: E402
from tutorloop.inference import engine  # noqa: E402
from tutorloop.serving.harness import serve_in_thread  # noqa: E402
from tutorloop.serving.server import Served  # noqa: E402
from tutorloop.teachers import ProceduralTeacher  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="models/base")
    parser.add_argument("--requests", type=int, default=64, help="concurrent requests (one problem each)")
    parser.add_argument("--rows", type=int, default=64, help="engine rows, both sides")
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    runtime = hardware.resolve_runtime(Runtime(device="cpu", precision=args.precision))
    chosen = runtime.precision
    machine = f"{hardware.cpu_name()}, torch capability {hardware.cpu_capability()}, {chosen.dtype}"
    print(f"machine: {machine}")
    served = Served(args.model, "bench", runtime, rows=args.rows)
    questions = [p["question"] for p in ProceduralTeacher().problems(args.requests, seed=99)]
    messages = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in questions]
    prompts = [served.tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]

    engine.generate(served.model, served.tok, prompts[:2], max_new_tokens=8)   # warm-up (kernel build, caches)
    start = time.perf_counter()
    local = engine.generate(served.model, served.tok, prompts, max_new_tokens=args.new_tokens, batch_size=args.rows)
    local_s = time.perf_counter() - start

    url, stop = serve_in_thread(served)
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=3600)

    def ask(m):
        r = client.chat.completions.create(model="bench", messages=m, temperature=0, max_tokens=args.new_tokens)
        return r.choices[0].message.content, r.usage.completion_tokens

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(args.requests) as pool:
            answers = list(pool.map(ask, messages))
        served_s = time.perf_counter() - start
    finally:
        stop()
    served_tokens = sum(n for _, n in answers)
    same = sum(a == t[0] for (a, _), t in zip(answers, local.texts))
    figures = {"machine": machine, "requests": args.requests, "rows": args.rows,
               "in_process_tok_s": local.new_tokens / local_s, "served_tok_s": served_tokens / served_s,
               "engine_calls": served.calls, "identical": same,
               "in_process_tokens": local.new_tokens, "served_tokens": served_tokens}
    figures["ratio"] = figures["served_tok_s"] / figures["in_process_tok_s"]
    print(f"in-process engine: {local.new_tokens} tokens in {local_s:.1f} s = {figures['in_process_tok_s']:.1f} tok/s")
    print(f"served, {args.requests} concurrent requests: {served_tokens} tokens in {served_s:.1f} s = "
          f"{figures['served_tok_s']:.1f} tok/s ({served.calls} engine call(s))")
    print(f"ratio served / in-process: {figures['ratio']:.2f}x; identical greedy texts: {same}/{args.requests}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
