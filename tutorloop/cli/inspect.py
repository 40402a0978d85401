"""`tutorloop` commands that look at a workspace: doctor, report, docs, compare, heldout, paired, ui.

May import: the library and flows/process.py (DVC through this interpreter), lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from tutorloop.cli.common import app, bad_input, check_or_write, console, validate_project

@app.command(rich_help_panel="Inspect a workspace")
def doctor(project: Path = typer.Option(Path("."), help="project root")) -> None:
    """What this machine will do: CPU capability, the precision `auto` resolves to and why, the
    decode attention path, measured fp32/bf16 matmul speed, versions, where the stores live."""
    from rich.console import Console
    from rich.table import Table

    from tutorloop import hardware
    from tutorloop.inference.kernels import attention
    from tutorloop.runtime import tracking
    from tutorloop.runtime.entry import BAD_INPUT

    runtime = validate_project(project).runtime
    try:
        resolved = hardware.resolve_runtime(runtime)   # what every stage resolves, once, here
    except BAD_INPUT as err:   # bfloat16 forced on a GPU without it
        bad_input(err)
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


@app.command(rich_help_panel="Inspect a workspace")
def report(project: Path = typer.Option(Path("."), help="project root"),
           markdown: bool = typer.Option(False, "--markdown", help="print a markdown table (what docs/ paste)"),
           save: str = typer.Option("", "--save", metavar="NAME",
                                    help="save the figures as docs/results/NAME (+ NAME.json: commit, CPU, command)"),
           source: Optional[Path] = typer.Option(None, "--from", help="with --save: a `tutorloop seeds` pooled.json "
                                                                      "instead of reports/accuracy.csv"),
           command: str = typer.Option("tutorloop run", help="with --save: the command that reproduces the figures"),
           commit: str = typer.Option("", help="with --save: the commit that ran (default: the project's HEAD)")) -> None:
    """Print accuracy per checkpoint with CIs, pairs and minutes; write reports/accuracy.png.

    `--save NAME` files the run's figures under docs/results/ for `tutorloop docs --write` to paste
    into README.md and docs/ (after `dvc exp apply EXP` for an experiment's)."""
    show_report(project, markdown=markdown, save=save, source=source, command=command, commit=commit)


def show_report(project: Path, markdown: bool = False, save: str = "", source: Optional[Path] = None,
                command: str = "tutorloop run", commit: str = "") -> None:
    """`tutorloop report` as a plain function: what `run` and `demo` call when they end (calling the
    Typer command itself would pass its unfilled options, truthy OptionInfo objects, as values)."""
    from tutorloop.eval import results
    from tutorloop.eval.report import rows, stage_minutes, table, write_report

    if source is None and not rows(project / "metrics"):
        typer.secho("no evaluations yet: run `tutorloop run` first", fg="yellow", err=True)
        raise typer.Exit(1)
    if source is None and not (project / "reports" / "accuracy.png").exists():
        # normally the `report` stage's output; never overwrite it here, or DVC would see it modified
        write_report(project / "metrics", project / "reports")
    minutes = stage_minutes(project) if source is None else {}
    if save:
        saved = results.save(project, save, {**_provenance(project, command), **({"commit": commit} if commit else {})},
                             source, minutes)
        typer.echo("saved: " + ", ".join(str(p) for p in saved) + f"; paste with `{results.WRITE_COMMAND}`")
        return
    if markdown:
        typer.echo(results.accuracy_markdown(_with_minutes(project / "reports" / "accuracy.csv", minutes)))
        return
    console().print(table(project / "metrics", minutes))
    typer.echo(f"plot: {project / 'reports' / 'accuracy.png'}")


def _with_minutes(path: Path, minutes: dict[str, float]) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return [{**r, "minutes": f"{minutes[r['checkpoint']]:.1f}" if r["checkpoint"] in minutes else ""}
                for r in csv.DictReader(f)]


def _provenance(project: Path, command: str) -> dict:
    """Where saved figures come from: commit, CPU and the precision it computes in, date, command."""
    import datetime
    import json
    import subprocess

    from tutorloop import hardware
    from tutorloop.config import Runtime

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project, capture_output=True, text=True)
    # the precision the evaluations ran in (their metrics say), else what this machine resolves now
    ran = {json.loads(f.read_text()).get("precision") for f in (project / "metrics").glob("*.json")} - {None}
    precision = ran.pop() if len(ran) == 1 else hardware.resolve_runtime(Runtime()).precision.dtype
    return {"commit": commit.stdout.strip() or "not a git checkout", "cpu": hardware.cpu_summary(), "precision": precision,
            "date": datetime.date.today().isoformat(), "command": command}


@app.command(rich_help_panel="Inspect a workspace")
def docs(project: Path = typer.Option(Path("."), help="project root"),
         write: bool = typer.Option(False, "--write", help="paste every results block from docs/results/"),
         check: bool = typer.Option(False, "--check", help="exit 1 if a block is stale (the default)")) -> None:
    """Check (default) or --write the results tables of README.md and docs/ from docs/results/."""
    from tutorloop.eval import results

    root = project.resolve()
    check_or_write(write, check, lambda: bool(results.paste(root)), lambda: results.stale(root),
                   "results blocks", results.WRITE_COMMAND)


@app.command(rich_help_panel="Inspect a workspace")
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
    console().print(t)
    console().print(f"figure: {path}")


@app.command(rich_help_panel="Inspect a workspace")
def heldout(n: int = typer.Option(400, min=1, help="problems to write"),
            seed: int = typer.Option(777, help="generate's seed for the draw (not the workspace's generate.seed)"),
            out: Path = typer.Option(Path("extra/heldout.jsonl"), help="jsonl to write, under the project "
                                                                        "(ids extra-<seed>-0..)"),
            project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Draw more held-out problems, disjoint from the workspace's SFT, practice and held-out sets."""
    from tutorloop.hardware import resolve_runtime
    from tutorloop.runtime.entry import BAD_INPUT
    from tutorloop.teachers.heldout import draw

    params = validate_project(project)
    out = project / out
    try:
        # resolved once here: a local (transformers) teacher writes the draw on it
        counts = draw(params, project, n, seed, out, resolve_runtime(params.runtime))
    except BAD_INPUT as err:
        bad_input(err)
    typer.echo(f"{out}: {counts['written']} problems ({counts['disjoint']} of {counts['candidates']} drawn "
               "were new to this workspace)")


@app.command(rich_help_panel="Inspect a workspace")
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
        bad_input(err)
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



@app.command(rich_help_panel="Inspect a workspace")
def ui(project: Path = typer.Option(Path("."), help="project root (its MLflow store)"),
       host: str = typer.Option("127.0.0.1", help="address the MLflow UI listens on"),
       port: int = typer.Option(5000, help="port the MLflow UI listens on"),
       browser: bool = typer.Option(True, "--browser/--no-browser", help="open the runs page in a browser")) -> None:
    """Open the MLflow UI on this project's runs (not MLflow's GenAI overview): start `mlflow server`
    on the project's store, print the runs page and the registered model's page, serve until Ctrl-C."""
    import subprocess
    import sys

    from tutorloop.runtime import tracking

    params = validate_project(project)
    uri = tracking.tracking_uri(project)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        typer.secho(f"no MLflow store at {uri[len('sqlite:///'):]}: run the loop first (`make demo` or "
                    "`tutorloop run`)", fg="red", err=True)
        raise typer.Exit(2)
    exp_id = tracking.ensure_store(project)
    if tracking.is_server(uri):   # the team's tracking server already serves its UI
        _print_ui(tracking.ui_urls(uri, exp_id, params.register_.model_name), browser)
        return
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(cmd, cwd=project)
    try:
        _wait_healthy(server, f"http://{host}:{port}/health")
        _print_ui(tracking.ui_urls(f"http://{host}:{port}", exp_id, params.register_.model_name), browser)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_healthy(server, url: str, timeout: float = 60) -> None:
    """Block until the MLflow server answers /health (exit 1 with its code if it dies first)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            typer.secho(f"mlflow server exited with code {server.returncode}", fg="red", err=True)
            raise typer.Exit(1)
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    typer.secho(f"mlflow server did not answer {url} within {timeout:.0f} s", fg="red", err=True)
    raise typer.Exit(1)


def _print_ui(urls: dict[str, str], browser: bool) -> None:
    import sys
    import webbrowser

    typer.echo(f"runs (each round's stages nested under it): {urls['runs']}")
    typer.echo(f"registered model (champion's evidence):     {urls['model']}")
    # only where a graphical browser can open: on a headless machine webbrowser falls back to a
    # text browser that would take over this terminal
    graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform in ("darwin", "win32")
    if browser and graphical and sys.stdout.isatty():
        webbrowser.open(urls["runs"])
