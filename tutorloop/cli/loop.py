"""`tutorloop` commands that run the loop: validate, deps, run, demo, recipe, seeds, schedule.

May import: the library and flows/ (the Prefect flows and how DVC is started), lazily inside the
commands so that `tutorloop --help` stays fast.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import typer

from tutorloop.cli.common import app, bad_input, check_or_write, console, recipe_params, validate_project
from tutorloop.cli.inspect import doctor, show_report
from tutorloop.config.recipes import apply_overrides, exp_command

@app.command(rich_help_panel="Run the loop")
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
    import shlex
    import subprocess

    overrides, raw = recipe_params(name, project, sets)
    _say_leftovers(project, overrides)
    cmd = exp_command(name_as or name, overrides, raw)
    typer.echo(shlex.join(cmd))   # quoted so the printed command runs as is (-S 'controls.1="0"' stays a string)
    if dry_run:
        return 0
    from flows.process import dvc, interpreter_env

    with _one_run(project, f"tutorloop recipe {name}"):
        return subprocess.run(dvc(*cmd[1:]), cwd=project, env=interpreter_env()).returncode


def _say_leftovers(project: Path, overrides: dict, also_set: tuple[str, ...] = ()) -> dict:
    """Warn (stderr) of params.yaml values that differ from git HEAD's and that this run would
    inherit (an earlier experiment applied them, or an uncommitted edit); `also_set`: keys the run
    sets itself. Returns every such difference, {key: (workspace value, committed value)}."""
    from tutorloop.config.recipes import leftovers

    left = leftovers(project, overrides)
    said = {k: v for k, v in left.items() if k not in also_set}
    for key, (now, committed) in said.items():
        typer.echo(f"tutorloop: params.yaml {key}: {now!r} (committed: {committed!r}) is not set by this run "
                   "and rides along", err=True)
    if said:
        typer.echo("tutorloop: (an earlier experiment applied it to the workspace, or an uncommitted edit; "
                   "`git checkout params.yaml` starts from the committed values)", err=True)
    return left


@app.command(rich_help_panel="Run the loop")
def validate(project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Validate params.yaml."""
    params = validate_project(project)
    typer.echo(f"params.yaml is valid: {len(params.rounds)} round(s), checkpoints {list(params.checkpoints)}")


@app.command(rich_help_panel="Run the loop")
def deps(project: Path = typer.Option(Path("."), help="project root"),
         write: bool = typer.Option(False, "--write", help="rewrite dvc.yaml's tutorloop/ deps lines in place"),
         check: bool = typer.Option(False, "--check", help="exit 1 if they are stale (the default)")) -> None:
    """Check (default) or --write each dvc.yaml stage's `tutorloop/...` deps from its import graph."""
    from tutorloop.runtime import deps as stage_deps

    root = project.resolve()
    check_or_write(write, check, lambda: stage_deps.write(root),
                   lambda: [f"dvc.yaml: {line}" for line in stage_deps.stale(root)],
                   "dvc.yaml: tutorloop deps", stage_deps.WRITE_COMMAND)


@app.command(rich_help_panel="Run the loop")
def run(project: Path = typer.Option(Path("."), help="project root"),
        round: Optional[str] = typer.Option(None, "--round", help="run this round and the rounds it builds on ('0' = SFT)"),
        push: bool = typer.Option(False, "--push", help="dvc push each stage's outputs to the default DVC remote "
                                                        "when it is done (another machine then `dvc pull`s them)")) -> None:
    """Run the improvement loop (Prefect flow over the DVC stages) and print the accuracy table."""
    params = validate_project(project)
    if push:
        _require_remote(project)
    with _one_run(project, "tutorloop run"):
        results = _run_flows(project, params, round, push)
    ran = [r["stage"] for r in results if r["ran"]]
    typer.echo(f"stages run: {len(ran)} of {len(results)} ({', '.join(ran) or 'all up to date'})")
    show_report(project)


def _run_flows(project: Path, params, round: Optional[str], push: bool) -> list[dict]:
    """The loop flow, or round `round` after the rounds it builds on."""
    from flows.pipeline import loop_flow, round_flow

    if round is None:
        return loop_flow(str(project), push)
    if round != "0" and round not in params.rounds:
        typer.secho(f"--round {round!r}: not in params.yaml rounds {sorted(params.rounds)}", fg="red", err=True)
        raise typer.Exit(2)
    # Stages run with `dvc repro -s`, which does not look upstream: so run the rounds this one
    # builds on first (DVC skips them in ~1 s each when they are up to date).
    chain = [round]
    while chain[-1] != "0":
        chain.append(params.rounds[chain[-1]].prev)
    return [r for key in reversed(chain) for r in round_flow(key, str(project), push)]


@contextmanager
def _one_run(project: Path, what: str):
    """Hold the workspace's run lock (flows/process.py) for `what`; exit 2 with one line naming
    the holder when another flow run or recipe has it."""
    from flows.process import WorkspaceBusy, workspace_lock

    try:
        with workspace_lock(project, what):   # re-entered in this process without raising
            yield
    except WorkspaceBusy as err:
        typer.secho(f"tutorloop: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def _require_remote(project: Path) -> None:
    """Exit 2 with one line unless the project has a default DVC remote (`dvc remote add -d`)."""
    import subprocess

    from flows.process import dvc, interpreter_env

    got = subprocess.run(dvc("remote", "default"), cwd=project, env=interpreter_env(), capture_output=True, text=True)
    if got.returncode != 0 or not got.stdout.strip():
        typer.secho("--push: no default DVC remote; add one: `dvc remote add -d storage /path/or/s3://bucket/dvc` "
                    "(infra/README.md: the team stack's MinIO)", fg="red", err=True)
        raise typer.Exit(2)


DEMO_SIZES = ("auto", "full", "quick")


def demo_size(project: Path) -> tuple[str, str]:
    """("full" | "quick", why): the default loop where this machine computes in bf16 (or on a GPU),
    recipes/quick.yaml where it computes in fp32 on the CPU, where the full loop takes ~3x longer
    (~2.5 h on 2 AVX2 cores, measured in the README) — the demo must fit an hour on any CPU."""
    from tutorloop import hardware

    resolved = hardware.resolve_runtime(validate_project(project).runtime)
    precision = resolved.precision
    if resolved.device == "cpu" and precision.dtype == "float32":
        return "quick", f"this CPU computes in fp32 ({precision.reason})"
    return "full", f"{resolved.device} computes in {precision.dtype}"


@app.command(rich_help_panel="Run the loop")
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
        run(project, round=None, push=False)
        return
    code = _run_recipe("quick", project)
    if code != 0:
        raise typer.Exit(code)
    show_report(project)


SEED_STEP = 1000   # seed i of an arm adds i x this to the round's practice and training seeds


@app.command(rich_help_panel="Run the loop")
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
    import shlex
    import shutil
    import subprocess

    from flows.process import dvc, interpreter_env
    from tutorloop.config import validate as validate_raw

    overrides, raw = recipe_params(recipe_name, project, sets)
    seed_keys = (f"rounds.{round_key}.practice.seed", f"rounds.{round_key}.preference.seed")
    left = _say_leftovers(project, overrides, also_set=seed_keys)
    params = validate_raw(apply_overrides(raw, overrides))
    if round_key not in params.rounds:
        bad_input(ValueError(f"--round {round_key!r}: not a round of recipe {recipe_name} ({sorted(params.rounds)})"))
    rnd, name = params.rounds[round_key], name_as or f"{recipe_name}-r{round_key}"
    checkpoints = [rnd.prev, round_key] + ([f"control-{round_key}"] if round_key in params.controls else []) \
        + (["0"] if rnd.prev != "0" else [])   # a later round is held against SFT too
    out = project / "extra" / "seeds" / name
    # the seeds count from the committed ones, not from those an earlier seeds run left applied
    committed = [left.get(k, (None, None))[1] for k in seed_keys]
    base = [own if c is None else c for c, own in zip(committed, (rnd.practice.seed, rnd.preference.seed))]
    typer.echo(f"decision rule (fixed before the runs): round {round_key} beats a baseline when the pooled "
               f"one-sided sign test over problems gives p < 0.05 ({n} seeds)")
    with nullcontext() if dry_run else _one_run(project, f"tutorloop seeds {recipe_name}"):
        for i in range(n):
            shifted = {key: seed + SEED_STEP * i for key, seed in zip(seed_keys, base)}
            # params.yaml as it is now: DVC applied the last seed's values to the workspace
            over, now = recipe_params(recipe_name, project, sets, shifted)
            cmd = exp_command(f"{name}-seed{i}", over, now, tuple(f"evaluate@{c}" for c in checkpoints))
            typer.echo(shlex.join(cmd))
            if dry_run:
                continue
            if subprocess.run(dvc(*cmd[1:]), cwd=project, env=interpreter_env()).returncode != 0:
                raise typer.Exit(1)
            for c in checkpoints:   # the workspace holds this experiment's evaluations until the next one
                (out / f"seed{i}").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(project / "eval" / c / "predictions.jsonl", out / f"seed{i}" / f"{c}.jsonl")
                if extra is not None:
                    # the checkpoints the arm starts from are the same model in every seed (restored from
                    # DVC's cache, scored greedily): score them once, reuse seed 0's predictions after
                    again = out / "seed0" / f"{c}-extra" if i and c not in (round_key, f"control-{round_key}") else None
                    _score_extra(project, c, params.checkpoints[c], extra, out / f"seed{i}", again)
    if not dry_run:
        _print_pooled(out, n, checkpoints)


def _score_extra(project: Path, checkpoint: str, model: str, problems: Path, seed_dir: Path,
                 scored: Optional[Path] = None) -> None:
    """The evaluate stage by hand on `problems` (outside metrics/, so the report ignores it), its
    predictions appended to the seed's held-out ones: one larger paired set (ids never clash:
    `tutorloop heldout` names its problems extra-<seed>-i). `scored`: an earlier seed's evaluation
    of the same checkpoint, copied instead of scoring it again."""
    import shutil
    import subprocess
    import sys

    from flows.process import interpreter_env
    from tutorloop.data.jsonl import read_jsonl, write_jsonl

    work = seed_dir / f"{checkpoint}-extra"
    if scored is not None and (scored / "predictions.jsonl").exists():
        shutil.copytree(scored, work, dirs_exist_ok=True)
    else:
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
    console().print(t)
    console().print(f"saved: {out / 'pooled.json'}")


@app.command(rich_help_panel="Run the loop")
def schedule(cron: str = typer.Option("0 3 * * *", help="cron expression (server time zone: UTC)"),
             name: str = typer.Option("nightly", help="deployment name"),
             project: Path = typer.Option(Path("."), help="project root")) -> None:
    """Serve the loop flow as a deployment on a cron schedule (blocks; Ctrl-C stops)."""
    validate_project(project)
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            typer.secho("No Prefect server configured: the temporary server cannot run schedules.\n"
                        "Start one (infra/start-servers.sh) and export "
                        "PREFECT_API_URL=http://127.0.0.1:4200/api", fg="red", err=True)
            raise typer.Exit(2)
    from flows.pipeline import loop_flow

    loop_flow.serve(name=name, cron=cron, parameters={"project": str(project.resolve())})

