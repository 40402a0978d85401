"""`tutorloop`: the command line over the Prefect flows.

    tutorloop validate                     check params.yaml (every problem, with key and value)
    tutorloop deps --write                 rewrite dvc.yaml's tutorloop/ deps from the import graph (--check: stale?)
    tutorloop doctor                       this machine: CPU, the precision auto resolves to and why
    tutorloop demo                         what `make demo` runs: doctor, then the loop sized for this machine
    tutorloop run                          the loop flow: round 0, every round, the report
    tutorloop run --round 2                round 2 and the rounds it builds on (its prev chain)
    tutorloop report                       the accuracy table of the evaluated checkpoints
    tutorloop schedule --cron "0 3 * * *"  serve the loop on a cron schedule (needs a Prefect server)
    tutorloop recipe gsm8k                 run recipes/gsm8k.yaml's overrides as a DVC experiment
    tutorloop serve --model models:/tutor@champion   an OpenAI-compatible server over the engine
    tutorloop harness --model models/base  lm-evaluation-harness GSM8K through that server, logged to MLflow
    tutorloop heldout --n 400               more held-out problems, disjoint from the workspace's (bigger paired tests)
    tutorloop paired eval/1 eval/2          pass@1 and paired McNemar between scored prediction sets
    tutorloop seeds asdiv --round 1 --seeds 3   one round (and its control) under 3 seeds, the paired test pooled
                                           (--extra extra/heldout.jsonl: also on `tutorloop heldout`'s problems)

A bad params.yaml or recipe (YAML syntax, a bad value, a missing file) is reported as
`tutorloop: <file>:<line>: <problem>` lines on stderr with exit code 2, as the stages do
(tutorloop/runtime/entry.py), never as a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn, Optional

import typer

# Offline, telemetry calls time out slowly (~18 s per CLI call); keep Prefect's state in the project.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(add_completion=False, help="Specialise a small language model by iterative teacher feedback.")


def _bad_input(err: BaseException, context: str = "") -> NoReturn:
    """Print `err` as the stages do (one `tutorloop: file:line: problem` line each) and exit 2."""
    from tutorloop.runtime.entry import BAD_INPUT_EXIT, PREFIX, problem_lines

    for line in problem_lines(err):
        typer.secho(PREFIX + context + line, fg="red", err=True)
    raise typer.Exit(BAD_INPUT_EXIT)


def _console():
    """A rich console for the tables: the terminal's width, or outside a terminal (a log, CI, a
    Prefect worker) wide enough that no cell is cut (rich would squeeze to 80 columns)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)


def _validate(project: Path):
    from tutorloop.config import load_params
    from tutorloop.runtime.entry import BAD_INPUT

    try:
        return load_params(project / "params.yaml")
    except BAD_INPUT as err:
        _bad_input(err)


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_overrides(name: str) -> dict:
    """The recipe's overrides as dotted keys (`generate.teacher.kind`: value), DVC's -S form."""
    from tutorloop.config import ConfigError, read_yaml

    path = RECIPES / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name!r} (known: {known})")

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            key = f"{prefix}{k}"
            out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
        return out

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of params.yaml keys, got {type(data).__name__}", path=path)
    return flat(data)


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """params.yaml's mapping with the dotted overrides set (what `dvc exp run -S` will write)."""
    import copy

    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _has_key(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@app.command()
def recipe(name: str = typer.Argument(..., help="a recipe in recipes/, e.g. gsm8k"),
           project: Path = typer.Option(Path("."), help="project root"),
           dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc command only"),
           name_as: str = typer.Option("", "--name", help="experiment name (default: the recipe's)"),
           sets: list[str] = typer.Option([], "--set", "-S",
                                          help="one more override on top of the recipe, KEY=VALUE (YAML value)")) -> None:
    """Run a recipe (a set of params overrides) as a named DVC experiment, validated first.

    `tutorloop recipe gsm8k -S evaluate.calculator=false --name gsm8k-nocalc` scores the same
    recipe without the calculator (DVC re-runs only the stages whose params changed)."""
    raise typer.Exit(_run_recipe(name, project, dry_run=dry_run, name_as=name_as, sets=sets))


def _run_recipe(name: str, project: Path, dry_run: bool = False, name_as: str = "", sets: list[str] = ()) -> int:
    """Validate a recipe on params.yaml, print its `dvc exp run` command, run it: the exit code."""
    import subprocess

    overrides, raw = _recipe_params(name, project, sets)
    cmd = exp_command(name_as or name, overrides, raw)
    typer.echo(" ".join(cmd if not dry_run else [c if " " not in c else repr(c) for c in cmd]))
    if dry_run:
        return 0
    from flows.process import dvc, interpreter_env

    return subprocess.run(dvc(*cmd[1:]), cwd=project, env=interpreter_env()).returncode


def _recipe_params(name: str, project: Path, sets: list[str] = (), extra: dict | None = None) -> tuple[dict, dict]:
    """(the recipe's dotted overrides with `sets` and `extra` on top, params.yaml's mapping),
    validated together as `dvc exp run` will write them; bad input exits 2 with one line each."""
    import yaml

    from tutorloop.config import ConfigError, read_yaml
    from tutorloop.config import validate as validate_raw
    from tutorloop.runtime.entry import BAD_INPUT

    try:
        overrides = recipe_overrides(name)
        for item in sets:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--set {item!r} -> expected KEY=VALUE, e.g. evaluate.calculator=false")
            try:
                overrides[key] = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise ConfigError(f"--set {item!r} -> not a YAML value ({getattr(err, 'problem', None) or err})") from None
        overrides.update(extra or {})
        raw = read_yaml(project / "params.yaml")
        if not isinstance(raw, dict):
            raise ConfigError(f"{project / 'params.yaml'}: top level must be a mapping, got {type(raw).__name__}")
        validate_raw(apply_overrides(raw, overrides))
    except BAD_INPUT as err:
        _bad_input(err, context=f"recipe {name}: ")
    return overrides, raw


def exp_command(name: str, overrides: dict, raw: dict, targets: tuple[str, ...] = ()) -> list[str]:
    """`dvc exp run -n NAME -S key=value ... [targets]` for overrides on params.yaml's `raw`."""
    import json

    cmd = ["dvc", "exp", "run", "-n", name]
    for key, value in overrides.items():
        # DVC's Hydra-style -S only overrides keys params.yaml has; a new one needs `+key=`.
        key = key if _has_key(raw, key) else "+" + key
        # JSON keeps '' and booleans intact through DVC's parser, and quotes a string YAML would
        # read as something else (a checkpoint key "0" must not become the integer 0)
        cmd += ["-S", f"{key}={value if _plain(value) else json.dumps(value)}"]
    return cmd + list(targets)


def _plain(value) -> bool:
    """A string that YAML (and so DVC's -S) reads back as itself."""
    import yaml

    try:
        return isinstance(value, str) and value != "" and yaml.safe_load(value) == value
    except yaml.YAMLError:
        return False


@app.command()
def validate(project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Validate params.yaml."""
    params = _validate(project)
    typer.echo(f"params.yaml is valid: {len(params.rounds)} round(s), checkpoints {list(params.checkpoints)}")


@app.command()
def deps(project: Path = typer.Option(Path("."), help="project root"),
         write: bool = typer.Option(False, "--write", help="rewrite dvc.yaml's tutorloop/ deps lines in place"),
         check: bool = typer.Option(False, "--check", help="exit 1 if they are stale (the default)")) -> None:
    """Check (default) or --write each dvc.yaml stage's `tutorloop/...` deps from its import graph."""
    from tutorloop.runtime import deps as stage_deps

    if write and not check:
        changed = stage_deps.write(project.resolve())
        typer.echo("dvc.yaml: tutorloop deps rewritten" if changed else "dvc.yaml: tutorloop deps already current")
        return
    problems = stage_deps.stale(project.resolve())
    for line in problems:
        typer.secho(f"dvc.yaml: {line}", fg="red", err=True)
    if problems:
        typer.secho(f"run `{stage_deps.WRITE_COMMAND}` to rewrite them", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo("dvc.yaml: tutorloop deps are current")


@app.command()
def run(project: Path = typer.Option(Path("."), help="project root"),
        round: Optional[str] = typer.Option(None, "--round", help="run this round and the rounds it builds on ('0' = SFT)")) -> None:
    """Run the improvement loop (Prefect flow over the DVC stages) and print the accuracy table."""
    params = _validate(project)
    from flows.pipeline import loop_flow, round_flow

    if round is None:
        results = loop_flow(str(project))
    else:
        if round != "0" and round not in params.rounds:
            typer.secho(f"--round {round!r}: not in params.yaml rounds {sorted(params.rounds)}", fg="red", err=True)
            raise typer.Exit(2)
        # Stages run with `dvc repro -s`, which does not look upstream: so run the rounds this one
        # builds on first (DVC skips them in ~1 s each when they are up to date).
        chain = [round]
        while chain[-1] != "0":
            chain.append(params.rounds[chain[-1]].prev)
        results = [r for key in reversed(chain) for r in round_flow(key, str(project))]
    ran = [r["stage"] for r in results if r["ran"]]
    typer.echo(f"stages run: {len(ran)} of {len(results)} ({', '.join(ran) or 'all up to date'})")
    report(project)


DEMO_SIZES = ("auto", "full", "quick")


def demo_size(project: Path) -> tuple[str, str]:
    """("full" | "quick", why): the default loop where this machine computes in bf16 (or on a GPU),
    recipes/quick.yaml where it computes in fp32 on the CPU, where the full loop takes ~3x longer
    (~2.5 h on 2 AVX2 cores, measured in the README) — the demo must fit an hour on any CPU."""
    from tutorloop import hardware

    resolved = hardware.resolve_runtime(_validate(project).runtime)
    precision = resolved.precision
    if resolved.device == "cpu" and precision.dtype == "float32":
        return "quick", f"this CPU computes in fp32 ({precision.reason})"
    return "full", f"{resolved.device} computes in {precision.dtype}"


@app.command()
def demo(project: Path = typer.Option(Path("."), help="project root"),
         size: str = typer.Option("auto", help="auto | full (params.yaml as it is) | quick (recipes/quick.yaml)"),
         dry_run: bool = typer.Option(False, "--dry-run", help="say what would run, run nothing")) -> None:
    """What `make demo` runs: `doctor`, then the loop at the size this machine does in about an hour.

    full = `tutorloop run` (the Prefect flow over params.yaml); quick = `tutorloop recipe quick`
    (the same stages on about half the problems, calculator on, as the DVC experiment `quick`), then the report."""
    if size not in DEMO_SIZES:
        typer.secho(f"--size {size!r}: expected one of {', '.join(DEMO_SIZES)}", fg="red", err=True)
        raise typer.Exit(2)
    doctor(project)
    why = f"--size {size}"
    if size == "auto":
        size, why = demo_size(project)
    plan = "tutorloop run (params.yaml)" if size == "full" else "tutorloop recipe quick (recipes/quick.yaml)"
    typer.echo(f"demo: {size} size, {why}: {plan}")
    if dry_run:
        return
    if size == "full":
        run(project, round=None)
        return
    code = _run_recipe("quick", project)
    if code != 0:
        raise typer.Exit(code)
    report(project)


@app.command()
def doctor(project: Path = typer.Option(Path("."), help="project root")) -> None:
    """What this machine will do: CPU capability, the precision `auto` resolves to and why, the
    decode attention path, measured fp32/bf16 matmul speed, versions, where the stores live."""
    from rich.console import Console
    from rich.table import Table

    from tutorloop import hardware
    from tutorloop.inference.kernels import attention
    from tutorloop.runtime import tracking
    from tutorloop.runtime.entry import BAD_INPUT

    runtime = _validate(project).runtime
    try:
        resolved = hardware.resolve_runtime(runtime)   # what every stage resolves, once, here
    except BAD_INPUT as err:   # bfloat16 forced on a GPU without it
        _bad_input(err)
    rows = hardware.describe(resolved, runtime.precision)
    # the runtime's path is the kernel's; whether it builds here is the loader's to say
    kernel = resolved.attention == "kernel" and attention.load() is not None
    rows.append(("decode attention", "tutorloop's C kernel" if kernel else
                 f"torch SDPA ({'runtime.attention: sdpa' if runtime.attention == 'sdpa' else 'the C kernel covers bf16 and fp32 on x86-64 CPUs with a C compiler'})"))
    rows += [("MLflow store", tracking.tracking_uri(project)), ("stale runs", _reap(project)),
             ("Prefect home", os.environ.get("PREFECT_HOME", "~/.prefect (PREFECT_HOME unset)")),
             ("DVC cache", str((project / ".dvc" / "cache").resolve()))]
    table = Table(title="tutorloop doctor", show_header=False)
    for what, value in rows:
        table.add_row(what, value)
    Console().print(table)


def _reap(project: Path) -> str:
    """End the RUNNING runs of this host whose process is gone (a SIGKILL, the OOM killer); a
    line saying how many. Only an existing store is opened: doctor creates nothing."""
    from tutorloop.runtime import tracking

    uri = tracking.tracking_uri(project)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return "none (no MLflow store yet)"
    try:
        import mlflow

        mlflow.set_tracking_uri(uri)
        exp = mlflow.get_experiment_by_name(tracking.experiment_name())
        reaped = tracking.reap_stale_runs(exp.experiment_id) if exp else []
    except Exception as err:  # noqa: BLE001 - doctor reports, it does not fail on a store
        return f"not checked ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    return f"{len(reaped)} run(s) of dead processes marked KILLED" if reaped else "none"


def _served_runtime(precision: str):
    """The runtime `tutorloop serve` / `harness` run a checkpoint on: `--precision` on this machine's
    device (auto), resolved once here (a ConfigError for a precision the device cannot do)."""
    from tutorloop.config import Runtime
    from tutorloop.hardware import resolve_runtime

    return resolve_runtime(Runtime(precision=precision))


@app.command()
def serve(model: str = typer.Option("models:/tutor@champion", help="a checkpoint folder or models:/<name>@<alias>"),
          host: str = typer.Option("127.0.0.1", help="address to listen on"),
          port: int = typer.Option(8000, help="port to listen on"),
          calculator: Optional[bool] = typer.Option(None, "--calculator/--no-calculator",
                                                    help="default: what the version was evaluated with (its eval.calculator tag); off for a folder"),
          precision: str = typer.Option("auto", help="auto | float32 | bfloat16 (runtime.precision's rule)"),
          rows: int = typer.Option(64, help="engine rows decoded together"),
          backend: str = typer.Option("engine", help="engine (tutorloop's, any CPU) | vllm (exec `vllm serve` on the folder: a GPU)")) -> None:
    """Serve a checkpoint over an OpenAI-compatible API (tutorloop/serving/server.py)."""
    import shutil

    import uvicorn

    from tutorloop.runtime.entry import BAD_INPUT
    from tutorloop.serving.server import create_app, load_served, resolve_model

    if backend not in ("engine", "vllm"):
        typer.secho(f"--backend {backend!r}: expected engine or vllm", fg="red", err=True)
        raise typer.Exit(2)
    if backend == "vllm":
        # vLLM's server does not run the engine's calculator: a model evaluated with it scores lower there.
        exe = shutil.which("vllm")
        if exe is None:
            typer.secho("--backend vllm: no `vllm` on PATH (pip install vllm, on a machine with a GPU)", fg="red", err=True)
            raise typer.Exit(2)
        try:
            folder, name, tags = resolve_model(model)
        except BAD_INPUT as err:
            _bad_input(err)
        typer.echo(f"serving {name} with vLLM at http://{host}:{port}/v1 (the calculator is off under vLLM"
                   f"{'; this version was evaluated with it' if tags.get('eval.calculator') == 'true' else ''})", err=True)
        os.execv(exe, [exe, "serve", str(folder), "--served-model-name", name, "--host", host, "--port", str(port)])
    try:
        served = load_served(model, _served_runtime(precision), calculator=calculator, rows=rows)
    except BAD_INPUT as err:
        _bad_input(err)
    typer.echo(f"serving {served.name} (calculator {'on' if served.calculator else 'off'}) "
               f"at http://{host}:{port}/v1", err=True)
    # A stop (SIGTERM / Ctrl-C) gives requests in flight 3 s to finish, then drops them: the process
    # is gone within 5 s (measured in tests/test_serve.py), whatever max_tokens they asked for.
    uvicorn.run(create_app(served), host=host, port=port, timeout_graceful_shutdown=3, log_level="warning")


@app.command()
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
        served = load_served(model, _served_runtime(precision), calculator=calculator)
    except BAD_INPUT as err:
        _bad_input(err)
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


@app.command()
def report(project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Print accuracy per checkpoint with CIs, pairs and minutes; write reports/accuracy.png."""
    from tutorloop.eval.report import rows, stage_minutes, table, write_report

    if not rows(project / "metrics"):
        typer.secho("no evaluations yet: run `tutorloop run` first", fg="yellow", err=True)
        raise typer.Exit(1)
    if not (project / "reports" / "accuracy.png").exists():
        # normally the `report` stage's output; never overwrite it here, or DVC would see it modified
        write_report(project / "metrics", project / "reports")
    _console().print(table(project / "metrics", stage_minutes(project)))
    typer.echo(f"plot: {project / 'reports' / 'accuracy.png'}")


@app.command()
def compare(project: Path = typer.Option(Path("."), help="project root"),
            out: Path = typer.Option(Path("reports/compare.png"), help="figure to write (and a .csv beside it)"),
            all_commits: bool = typer.Option(False, "--all-commits", "-A",
                                             help="experiments of every commit, not only those run on HEAD "
                                                  "(DVC files an experiment under the commit it ran on)")) -> None:
    """Accuracy per round for every DVC experiment, e.g. after `dvc exp run -S rounds.2.preference.method=kto`."""
    import json
    import subprocess

    from rich.table import Table

    from flows.process import dvc
    from tutorloop.eval.report import compare as plot
    from tutorloop.eval.report import experiments, label

    proc = subprocess.run(dvc("exp", "show", "--json", *(["--all-commits"] if all_commits else [])), cwd=project,
                          capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise typer.Exit(f"dvc exp show failed: {proc.stderr.strip()}")
    exps = experiments(json.loads(proc.stdout or "[]"))
    path = plot(exps, project / out)
    cks = sorted({c for e in exps for c in e["accuracy"]}, key=lambda c: (c != "base", int(c) if c.isdigit() else -1))
    t = Table(title="held-out pass@1 per experiment")
    t.add_column("experiment")
    t.add_column("method")
    for c in cks:
        t.add_column(label(c), justify="right")
    t.add_column("round minutes", justify="right")   # practice + training per round: the budget each spent
    for e in exps:
        spent = " · ".join(f"{m:.1f}" for _, m in sorted(e["minutes"].items(), key=lambda kv: int(kv[0])))
        t.add_row(e["name"], e["method"], *[f"{e['accuracy'][c][0]:.1%}" if c in e["accuracy"] else "-" for c in cks],
                  spent or "-")
    _console().print(t)
    _console().print(f"figure: {path}")


@app.command()
def heldout(n: int = typer.Option(400, min=1, help="problems to write"),
            seed: int = typer.Option(777, help="generate's seed for the draw (not the workspace's generate.seed)"),
            out: Path = typer.Option(Path("extra/heldout.jsonl"), help="jsonl to write, under the project "
                                                                        "(ids extra-<seed>-0..)"),
            project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Draw more held-out problems, disjoint from the workspace's SFT, practice and held-out sets."""
    from tutorloop.hardware import resolve_runtime
    from tutorloop.runtime.entry import BAD_INPUT
    from tutorloop.teachers.heldout import draw

    params = _validate(project)
    out = project / out
    try:
        # resolved once here: a local (transformers) teacher writes the draw on it
        counts = draw(params, project, n, seed, out, resolve_runtime(params.runtime))
    except BAD_INPUT as err:
        _bad_input(err)
    typer.echo(f"{out}: {counts['written']} problems ({counts['disjoint']} of {counts['candidates']} drawn "
               "were new to this workspace)")


@app.command()
def paired(predictions: list[str] = typer.Argument(..., help="predictions.jsonl files or evaluation folders "
                                                         "holding one, the first the baseline; join parts of one "
                                                         "set with commas: eval/2,extra/eval/2")) -> None:
    """Pass@1 of each set with Wilson intervals; won/lost on the problem ids it shares with the first
    and the previous set, with the exact one-sided McNemar p that it is the better one."""
    from rich.console import Console
    from rich.table import Table

    from tutorloop.eval.report import scored_joined
    from tutorloop.eval.stats import wilson
    from tutorloop.runtime.entry import BAD_INPUT

    try:
        sets = [scored_joined(p) for p in predictions]
    except BAD_INPUT as err:
        _bad_input(err)
    t = Table(title="pass@1 per set; won/lost (shared ids) and one-sided McNemar p")
    for col in ("predictions", "pass@1 [95% CI]", "n", "vs first", "vs previous"):
        t.add_column(col)
    for i, (path, d) in enumerate(zip(predictions, sets)):
        lo, hi = wilson(sum(d.values()), len(d))
        vs = [_won_lost(sets[j], d) if i else "-" for j in (0, i - 1)]
        t.add_row(path, f"{sum(d.values()) / len(d):.1%} [{lo:.1%}, {hi:.1%}]", str(len(d)), *vs)
    Console().print(t)


def _won_lost(a: dict, b: dict) -> str:
    from tutorloop.eval.report import paired as mcnemar

    res = mcnemar(a, b)
    return "no shared problem" if res is None else f"+{res[0]}/-{res[1]} of {len(a.keys() & b.keys())} p={res[2]:.2g}"


SEED_STEP = 1000   # seed i of an arm adds i x this to the round's practice and training seeds


@app.command()
def seeds(recipe_name: str = typer.Argument(..., metavar="RECIPE", help="a recipe in recipes/, e.g. asdiv"),
          round_key: str = typer.Option("1", "--round", help="the round whose arm is repeated"),
          n: int = typer.Option(3, "--seeds", min=1, help="seeds: the recipe's own, then +1000, +2000, ..."),
          name_as: str = typer.Option("", "--name", help="experiment name prefix (default: RECIPE-rROUND)"),
          sets: list[str] = typer.Option([], "--set", "-S", help="one more override, KEY=VALUE (YAML value)"),
          extra: Optional[Path] = typer.Option(None, "--extra", help="also score every checkpoint on these problems "
                                               "(`tutorloop heldout --n 2000`'s file), pooled with the held-out set"),
          dry_run: bool = typer.Option(False, "--dry-run", help="print the commands, run nothing"),
          project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Run one round (and its control) under N seeds from the same checkpoint; pool the paired test.

    Each seed is a DVC experiment that re-runs only the round's practice, training and evaluation
    (and the control's): the checkpoint it starts from is restored from DVC's cache. The decision
    rule is fixed before the runs: the round beats a baseline when the exact one-sided sign test
    over problems, each problem's difference averaged over the seeds, gives p < 0.05."""
    import shutil
    import subprocess

    from flows.process import dvc, interpreter_env
    from tutorloop.config import validate as validate_raw

    overrides, raw = _recipe_params(recipe_name, project, sets)
    params = validate_raw(apply_overrides(raw, overrides))
    if round_key not in params.rounds:
        _bad_input(ValueError(f"--round {round_key!r}: not a round of recipe {recipe_name} ({sorted(params.rounds)})"))
    rnd, name = params.rounds[round_key], name_as or f"{recipe_name}-r{round_key}"
    checkpoints = [rnd.prev, round_key] + ([f"control-{round_key}"] if round_key in params.controls else []) \
        + (["0"] if rnd.prev != "0" else [])   # a later round is held against SFT too
    out = project / "extra" / "seeds" / name
    typer.echo(f"decision rule (fixed before the runs): round {round_key} beats a baseline when the pooled "
               f"one-sided sign test over problems gives p < 0.05 ({n} seeds)")
    for i in range(n):
        shifted = {f"rounds.{round_key}.practice.seed": rnd.practice.seed + SEED_STEP * i,
                   f"rounds.{round_key}.preference.seed": rnd.preference.seed + SEED_STEP * i}
        over, _ = _recipe_params(recipe_name, project, sets, shifted)
        cmd = exp_command(f"{name}-seed{i}", over, raw, tuple(f"evaluate@{c}" for c in checkpoints))
        typer.echo(" ".join(cmd))
        if dry_run:
            continue
        if subprocess.run(dvc(*cmd[1:]), cwd=project, env=interpreter_env()).returncode != 0:
            raise typer.Exit(1)
        for c in checkpoints:   # the workspace holds this experiment's evaluations until the next one
            (out / f"seed{i}").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(project / "eval" / c / "predictions.jsonl", out / f"seed{i}" / f"{c}.jsonl")
            if extra is not None:
                _score_extra(project, c, params.checkpoints[c], extra, out / f"seed{i}")
    if not dry_run:
        _print_pooled(out, n, checkpoints)


def _score_extra(project: Path, checkpoint: str, model: str, problems: Path, seed_dir: Path) -> None:
    """The evaluate stage by hand on `problems` (outside metrics/, so the report ignores it), its
    predictions appended to the seed's held-out ones: one larger paired set (ids never clash:
    `tutorloop heldout` names its problems extra-<seed>-i)."""
    import subprocess
    import sys

    from flows.process import interpreter_env
    from tutorloop.data.jsonl import read_jsonl, write_jsonl

    work = seed_dir / f"{checkpoint}-extra"
    cmd = [sys.executable, "-m", "components.evaluate", f"extra-{checkpoint}", model, str(problems.resolve()),
           str((work / "metrics.json").resolve()), str(work.resolve()), "--shots", "data/clean/sft.jsonl",
           "--gsm8k", "/dev/null"]
    if subprocess.run(cmd, cwd=project, env=interpreter_env()).returncode != 0:
        raise typer.Exit(1)
    held = read_jsonl(seed_dir / f"{checkpoint}.jsonl")
    more = read_jsonl(work / "predictions.jsonl")
    if {str(r["id"]) for r in held} & {str(r["id"]) for r in more}:
        raise typer.Exit(f"{problems}: shares problem ids with the held-out set; draw it with `tutorloop heldout`")
    write_jsonl(seed_dir / f"{checkpoint}.jsonl", held + more)


def _print_pooled(out: Path, n: int, checkpoints: list[str]) -> None:
    """The pooled comparisons of an arm's seeds (`tutorloop seeds`), printed and saved as pooled.json."""
    from rich.table import Table

    from tutorloop.data.jsonl import write_json
    from tutorloop.eval.report import pooled_comparisons

    results = pooled_comparisons(out, n, checkpoints)
    write_json(results, out / "pooled.json")
    t = Table(title=f"pooled over {n} seeds: one-sided sign test over problems (seed-averaged difference)")
    for col in ("arm", "vs", "arm pass@1", "baseline", "ahead/behind", "p"):
        t.add_column(col)
    for r in results:
        t.add_row(r["arm"], r["baseline"], f"{r['arm_accuracy']:.1%}", f"{r['baseline_accuracy']:.1%}",
                  f"+{r['ahead']}/-{r['behind']} of {r['n']}", f"{r['p']:.2g}")
    _console().print(t)
    _console().print(f"saved: {out / 'pooled.json'}")


@app.command()
def schedule(cron: str = typer.Option("0 3 * * *", help="cron expression (server time zone: UTC)"),
             name: str = typer.Option("nightly", help="deployment name"),
             project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Serve the loop flow as a deployment on a cron schedule (blocks; Ctrl-C stops)."""
    _validate(project)
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            typer.secho("No Prefect server configured: the temporary server cannot run schedules.\n"
                        "Start one (infra/start-servers.sh) and export "
                        "PREFECT_API_URL=http://127.0.0.1:4200/api", fg="red", err=True)
            raise typer.Exit(2)
    from flows.pipeline import loop_flow

    loop_flow.serve(name=name, cron=cron, parameters={"project": str(project.resolve())})


if __name__ == "__main__":
    app()
