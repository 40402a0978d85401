"""Scale-out on one machine: the sft stage on N processes vs 1, sampling from N servers vs 1.

`train`: the sft stage as DVC runs it (`python -m components.sft`, in a temporary project on
`model`), once in one process (`training.launcher: none`) and once under `accelerate launch` on
N processes (gloo on a CPU, one per GPU), the same global batch (batch 8 x grad_accum 2) and rows;
prints seconds per optimizer update of each (MLflow's train_seconds / updates) and the ratio.
On a 2-core CPU the N processes share the cores (each takes cores / N threads): the figure says
what the distributed path costs, not what N GPUs gain.

`serve`: N `tutorloop serve` processes (each with cores / N threads and rows / N engine rows) vs
one (all cores, all rows), the same greedy chat requests sent concurrently through the client
practice uses for a list of servers (`PooledChat`); prints useful tokens per second of each.

    python benchmarks/scale_out.py train [models/base] [--processes 2] [--updates 6]
    python benchmarks/scale_out.py serve [models/base] [--servers 2] [--requests 64]

The first line names the machine: figures are per CPU kind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from benchmarks.generation import SYSTEM  # noqa: E402
from tutorloop import hardware  # noqa: E402
from tutorloop.teachers import ProceduralTeacher  # noqa: E402

EXE = Path(sys.executable).with_name("tutorloop")


def machine() -> str:
    return f"{hardware.cpu_summary()}, {len(os.sched_getaffinity(0))} cores"


def sft_seconds_per_update(model: Path, processes: int, updates: int, work: Path) -> float:
    """One sft stage run in a fresh project folder: its training seconds per optimizer update."""
    import mlflow

    ws = work / f"p{processes}"
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["sft"].update(batch_size=8, grad_accum=2, epochs=1, save_steps=0, max_length=256, logging_steps=1)
    raw["training"] = {"launcher": "accelerate" if processes > 1 else "none", "processes": processes,
                       "machines": 1, "accelerate_config": ""}
    (ws / "data").mkdir(parents=True)
    (ws / "params.yaml").write_text(yaml.safe_dump(raw))
    rows = ProceduralTeacher().problems(16 * updates, seed=3)
    (ws / "data" / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TUTORLOOP_TRACKING="on", TUTORLOOP_TRAIN_DIR=str(ws / "train"),
               MLFLOW_TRACKING_URI=f"sqlite:///{ws / 'mlflow.db'}")
    subprocess.run([sys.executable, "-m", "components.sft", str(model.resolve()), "data/sft.jsonl", "out"],
                   cwd=ws, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    return run.data.metrics["train_seconds"] / updates


def start_server(model: Path, threads: int, rows: int) -> tuple[subprocess.Popen, str]:
    import httpx

    from tutorloop.runtime.distributed import free_port

    port = free_port()
    proc = subprocess.Popen([str(EXE), "serve", "--model", str(model), "--port", str(port), "--threads", str(threads),
                             "--rows", str(rows)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"tutorloop serve on port {port} did not start")


def served_tokens_per_second(model: Path, servers: int, requests: int, rows: int, new_tokens: int) -> float:
    """Useful (completion) tokens per second of `requests` greedy requests over `servers` servers."""
    from tutorloop.config import StudentEndpoint
    from tutorloop.llm.client import OpenAIChat, Sampling

    cores = len(os.sched_getaffinity(0))
    started = [start_server(model, max(1, cores // servers), max(1, rows // servers)) for _ in range(servers)]
    try:
        urls = [url for _, url in started]
        chat = OpenAIChat.of(StudentEndpoint(base_url=urls if servers > 1 else urls[0]), model=model.name,
                             what="benchmark")
        questions = [r["question"] for r in ProceduralTeacher().problems(requests, seed=9)]
        sampling = Sampling(temperature=0.0, top_p=1.0, max_tokens=new_tokens, seed=0)

        def one(question: str) -> int:
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            return chat.complete(messages, sampling).tokens

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=requests) as pool:
            tokens = sum(pool.map(one, questions))
        return tokens / (time.perf_counter() - start)
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["train", "serve"])
    parser.add_argument("model", nargs="?", default="models/base", type=Path)
    parser.add_argument("--processes", type=int, default=2, help="train: processes of the launched run")
    parser.add_argument("--updates", type=int, default=6, help="train: optimizer updates per run")
    parser.add_argument("--servers", type=int, default=2, help="serve: servers sharing the machine")
    parser.add_argument("--requests", type=int, default=64, help="serve: concurrent requests")
    parser.add_argument("--rows", type=int, default=64, help="serve: engine rows in all")
    parser.add_argument("--new-tokens", type=int, default=160)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures: dict = {"machine": machine(), "what": args.what}
    print(f"machine: {figures['machine']}")
    if args.what == "train":
        work = Path(tempfile.mkdtemp(prefix="scale-out-"))
        try:
            one = sft_seconds_per_update(args.model, 1, args.updates, work)
            many = sft_seconds_per_update(args.model, args.processes, args.updates, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        figures.update(processes=args.processes, updates=args.updates, seconds_per_update_1=one,
                       seconds_per_update_n=many, ratio=many / one)
        print(f"sft, global batch 8 x 2: 1 process {one:.2f} s/update, {args.processes} processes "
              f"{many:.2f} s/update ({many / one:.2f}x the time)")
    else:
        one = served_tokens_per_second(args.model, 1, args.requests, args.rows, args.new_tokens)
        many = served_tokens_per_second(args.model, args.servers, args.requests, args.rows, args.new_tokens)
        figures.update(servers=args.servers, requests=args.requests, tokens_per_second_1=one,
                       tokens_per_second_n=many, ratio=many / one)
        print(f"{args.requests} greedy requests: 1 server {one:.1f} tok/s, {args.servers} servers {many:.1f} tok/s "
              f"({many / one:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
