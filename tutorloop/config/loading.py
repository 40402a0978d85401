"""Reading params.yaml and recipes: YAML errors and bad values as `file:line:` problems.

Errors are for the one who edits the file: `ConfigError.lines()` gives one line per problem,
each starting `params.yaml:<line>:` (the line of the offending key, found by composing the YAML),
and a YAML syntax error becomes a ConfigError naming the line and column PyYAML stopped at.
`tutorloop/runtime/entry.py` prints those lines (exit code 2) instead of a traceback.

    tutorloop validate      # what the CLI does with it: one line per problem, exit 2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tutorloop.config.schema import Params, validate
from tutorloop.errors import PARAMS_FILE, ConfigError
from tutorloop.secrets import redact


def yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    """A parse error as one line, `file:line:column: problem (context and where it started)`.

    Only PyYAML's problem/context texts and marks are used, never str(err): that embeds a
    snippet of the file, which may hold a pasted key.
    """
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and cmark is not None and (mark is None or cmark.line != mark.line):
        problem += f" ({context} started at line {cmark.line + 1})"
    elif context:
        problem += f" ({context})"
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    return ConfigError(redact(f"{where}: {problem}"), path=path)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file the user edits (params.yaml, a recipe); any problem is a ConfigError
    that names the file (and for syntax errors the line and column)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file", path=path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML file", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})", path=path) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise yaml_error(path, err) from None


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every key path in a YAML text: ("sft", "learning_rate") -> 42."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = prefix + (str(k.value),)
                lines.setdefault(key, k.start_mark.line + 1)
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(prefix + (str(i),), item.start_mark.line + 1)
                walk(item, prefix + (str(i),))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:  # it parsed once already; never let locating hide the real errors
        pass
    return lines


def _locate(problem: str, lines: dict[tuple[str, ...], int]) -> int | None:
    """The line of a problem's key (`rounds.1.preference.beta: ...`), or of its nearest present parent
    (a missing required key points at its section)."""
    parts = tuple(problem.split(": ", 1)[0].split("."))
    for n in range(len(parts), 0, -1):
        if parts[:n] in lines:
            return lines[parts[:n]]
    return None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; every problem is a ConfigError (see its `lines()`)."""
    path = Path(path)
    raw = read_yaml(path)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}", path=path)
    try:
        return validate(raw)
    except ConfigError as err:
        lines = _key_lines(path.read_text(encoding="utf-8"))
        err.path = str(path)
        err.locations = [_locate(p, lines) for p in err.problems]
        raise
