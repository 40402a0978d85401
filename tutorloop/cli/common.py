"""What every `tutorloop` command shares: the Typer app, one-line errors, the table console,
params.yaml and recipe validation.

May import: the library (tutorloop/*); commands live in loop.py, inspect.py and serve.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import typer

# Offline, telemetry calls time out slowly (~18 s per CLI call); keep Prefect's state in the project.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

app = typer.Typer(add_completion=False, help="Specialise a small language model by iterative teacher feedback.")


def bad_input(err: BaseException, context: str = "") -> NoReturn:
    """Print `err` as the stages do (one `tutorloop: file:line: problem` line each) and exit 2."""
    from tutorloop.runtime.entry import BAD_INPUT_EXIT, PREFIX, problem_lines

    for line in problem_lines(err):
        typer.secho(PREFIX + context + line, fg="red", err=True)
    raise typer.Exit(BAD_INPUT_EXIT)


def console():
    """A rich console for the tables: the terminal's width, or outside a terminal (a log, CI, a
    Prefect worker) wide enough that no cell is cut (rich would squeeze to 80 columns)."""
    import sys

    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)


def check_or_write(write: bool, check: bool, rewrite, stale, what: str, fix: str) -> None:
    """The `--check` (default) / `--write` pair of `deps` and `docs`: `rewrite()` says whether it
    changed anything, `stale()` lists the problems; a stale check exits 1 naming `fix`."""
    if write and not check:
        typer.echo(f"{what}: rewritten" if rewrite() else f"{what}: already current")
        return
    problems = stale()
    for line in problems:
        typer.secho(line, fg="red", err=True)
    if problems:
        typer.secho(f"run `{fix}` to rewrite them", fg="red", err=True)
        raise typer.Exit(1)
    typer.echo(f"{what}: current")


def validate_project(project: Path):
    """params.yaml of `project`, validated; bad input exits 2 with one line per problem."""
    from tutorloop.config import load_params
    from tutorloop.runtime.entry import BAD_INPUT

    try:
        return load_params(project / "params.yaml")
    except BAD_INPUT as err:
        bad_input(err)


def recipe_params(name: str, project: Path, sets: list[str] = (), extra: dict | None = None) -> tuple[dict, dict]:
    """(the recipe's dotted overrides with `sets` and `extra` on top, params.yaml's mapping),
    validated together as `dvc exp run` will write them; bad input exits 2 with one line each."""
    from tutorloop.config import recipes
    from tutorloop.runtime.entry import BAD_INPUT

    try:
        return recipes.recipe_params(name, project, sets, extra)
    except BAD_INPUT as err:
        bad_input(err, context=f"recipe {name}: ")
