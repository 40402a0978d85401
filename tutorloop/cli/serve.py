"""`tutorloop serve` (a checkpoint behind an OpenAI-compatible API) and `tutorloop harness`
(lm-evaluation-harness's GSM8K through it, logged to MLflow).

May import: the library, lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tutorloop.cli.common import app, bad_input

def _served_runtime(precision: str, threads: int = 0):
    """The runtime `tutorloop serve` / `harness` run a checkpoint on: `--precision` on this machine's
    device (auto), resolved once here (a ConfigError for a precision the device cannot do)."""
    from tutorloop.config import Runtime
    from tutorloop.hardware import resolve_runtime

    return resolve_runtime(Runtime(precision=precision, threads=threads))


def _exec_vllm(model: str, host: str, port: int, api_key: str | None) -> None:
    """`--backend vllm`: become `vllm serve` on the checkpoint's folder (does not return)."""
    import shutil

    from tutorloop.runtime.entry import BAD_INPUT
    from tutorloop.serving.server import resolve_model

    # vLLM's server does not run the engine's calculator: a model evaluated with it scores lower there.
    exe = shutil.which("vllm")
    if exe is None:
        typer.secho("--backend vllm: no `vllm` on PATH (pip install vllm, on a machine with a GPU)", fg="red", err=True)
        raise typer.Exit(2)
    try:
        folder, name, tags = resolve_model(model)
    except BAD_INPUT as err:
        bad_input(err)
    typer.echo(f"serving {name} with vLLM at http://{host}:{port}/v1 (the calculator is off under vLLM"
               f"{'; this version was evaluated with it' if tags.get('eval.calculator') == 'true' else ''})", err=True)
    # vLLM reads its key from VLLM_API_KEY: in the environment, not on a command line `ps` shows
    env = {**os.environ, **({"VLLM_API_KEY": api_key} if api_key else {})}
    os.execve(exe, [exe, "serve", str(folder), "--served-model-name", name, "--host", host, "--port", str(port)], env)


@app.command(rich_help_panel="Serve a checkpoint")
def serve(model: str = typer.Option("models:/tutor@champion", help="a checkpoint folder or models:/<name>@<alias>"),
          host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          calculator: Optional[bool] = typer.Option(None, "--calculator/--no-calculator",
                                                    help="default: what the version was evaluated with (its eval.calculator tag); off for a folder"),
          precision: str = typer.Option("auto", help="auto | float32 | bfloat16 (runtime.precision's rule)"),
          rows: int = typer.Option(64, help="engine rows decoded together"),
          threads: int = typer.Option(0, help="CPU threads (0: one per core); servers sharing a machine split its cores"),
          backend: str = typer.Option("engine", help="engine (tutorloop's, any CPU) | vllm (exec `vllm serve` on the folder: a GPU)"),
          api_key_env: str = typer.Option("", help="the environment variable holding the key clients must send "
                                                   "(Authorization: Bearer ...); never the key itself"),
          max_model_len: int = typer.Option(0, help="prompt + max_tokens of one request (0: the model's context); "
                                                    "longer requests are answered 400"),
          kv_budget_gb: float = typer.Option(0.0, help="KV cache one engine call may take (0: half the memory "
                                                       "free at start); a request needing more is answered 400"),
          max_waiting: int = typer.Option(256, help="requests queued behind the running call; more are answered 429"),
          max_connections: int = typer.Option(512, help="open connections; more are answered 503 (uvicorn)")) -> None:
    """Serve a checkpoint over an OpenAI-compatible API (tutorloop/serving/server.py)."""
    import uvicorn

    from tutorloop.runtime.entry import BAD_INPUT
    from tutorloop.serving.server import LOOPBACK, allowed_hosts, create_app, load_served

    if backend not in ("engine", "vllm"):
        typer.secho(f"--backend {backend!r}: expected engine or vllm", fg="red", err=True)
        raise typer.Exit(2)
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        typer.secho(f"--api-key-env {api_key_env}: that environment variable is not set", fg="red", err=True)
        raise typer.Exit(2)
    if host not in LOOPBACK and api_key is None:
        typer.secho(f"warning: serving on {host} without a key: anyone who reaches this port can use it "
                    "(--api-key-env NAME)", fg="yellow", err=True)
    if backend == "vllm":
        _exec_vllm(model, host, port, api_key)
    try:
        served = load_served(model, _served_runtime(precision, threads), calculator=calculator, rows=rows,
                             max_model_len=max_model_len, kv_budget=int(kv_budget_gb * 2**30), max_waiting=max_waiting)
    except BAD_INPUT as err:
        bad_input(err)
    typer.echo(f"serving {served.name} (calculator {'on' if served.calculator else 'off'}) "
               f"at http://{host}:{port}/v1", err=True)
    # A stop (SIGTERM / Ctrl-C) gives requests in flight 3 s to finish, then drops them: the process
    # is gone within 5 s (measured in tests/test_serve.py), whatever max_tokens they asked for.
    uvicorn.run(create_app(served, api_key=api_key, hosts=allowed_hosts(host, port)), host=host, port=port,
                timeout_graceful_shutdown=3, log_level="warning", limit_concurrency=max_connections)


@app.command(rich_help_panel="Serve a checkpoint")
def harness(model: str = typer.Option("models:/tutor@champion", help="a checkpoint folder or models:/<name>@<alias>"),
            task: str = typer.Option("gsm8k", help="gsm8k (5-shot) | gsm8k_cot (8-shot CoT) | gsm8k_cot_zeroshot"),
            limit: int = typer.Option(200, help="score the first N problems of --data"),
            data: Path = typer.Option(Path("../shared/data/gsm8k/train.jsonl"), help="a GSM8K jsonl (question, answer)"),
            fewshot: Optional[int] = typer.Option(None, help="few-shot examples (default: the task's own)"),
            chat: bool = typer.Option(False, "--chat", help="local-chat-completions with the model's chat template"),
            base_url: str = typer.Option("", help="an OpenAI-compatible server already serving --model (default: start one here)"),
            calculator: Optional[bool] = typer.Option(None, "--calculator/--no-calculator",
                                                      help="served model's calculator (default: as the version was evaluated)"),
            precision: str = typer.Option("auto", help="auto | float32 | bfloat16"),
            project: Path = typer.Option(Path("."), help="project root (its MLflow store gets the run)")) -> None:
    """Score a checkpoint with EleutherAI's lm-evaluation-harness on GSM8K (offline, through
    `tutorloop serve`); logs strict and flexible match to MLflow (tutorloop/serving/harness.py)."""
    import tempfile

    from tutorloop.runtime import tracking
    from tutorloop.runtime.entry import BAD_INPUT
    from tutorloop.serving import harness as lm_harness
    from tutorloop.serving.server import load_served

    if task not in lm_harness.TASKS:
        typer.secho(f"--task {task!r}: expected one of {', '.join(lm_harness.TASKS)}", fg="red", err=True)
        raise typer.Exit(2)
    data = data.resolve()
    if not data.exists():
        typer.secho(f"--data {data}: no such file (a GSM8K jsonl with question and answer)", fg="red", err=True)
        raise typer.Exit(2)
    os.chdir(project)   # the project's MLflow store gets the run; --model folders are relative to it
    try:
        # a bad --data fails here, before minutes of model loading; so do rows the workspace trained on
        lm_harness.refuse_trained(lm_harness.read_data(data, limit), limit, Path("."))
        served = load_served(model, _served_runtime(precision), calculator=calculator)
    except BAD_INPUT as err:
        bad_input(err)
    url, stop = (base_url, lambda: None) if base_url else lm_harness.serve_in_thread(served)
    params = {"model": model, "served_as": served.name, "task": task, "limit": limit, "data": str(data),
              "chat": chat, "calculator": served.calculator, "lm_eval": _version("lm_eval")}
    with tracking.stage_run("harness", params) as log, tempfile.TemporaryDirectory() as tmp:
        try:
            score = lm_harness.evaluate(url, served.name, served.folder.resolve(), task, data, Path(tmp),
                                        limit=limit, fewshot=fewshot, chat=chat, context=served.context or 2048)
        finally:
            stop()
        log.metrics(score.metrics())
        log.json(score.samples, f"harness/{task}-samples.json")
    m = score.metrics()
    typer.echo(f"{task} ({score.fewshot}-shot{', chat' if chat else ''}), {served.name}, n={score.n}: "
               f"strict-match {score.strict:.1%} [{m['harness.strict_match_ci95_low']:.1%}, "
               f"{m['harness.strict_match_ci95_high']:.1%}], flexible-extract {score.flexible:.1%} "
               f"[{m['harness.flexible_extract_ci95_low']:.1%}, {m['harness.flexible_extract_ci95_high']:.1%}] "
               f"in {score.seconds / 60:.1f} min")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"

