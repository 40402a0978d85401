"""Recipes: a recipe (recipes/NAME.yaml) is a set of params.yaml overrides run as one DVC
experiment; here they become dotted keys, are applied to params.yaml's mapping and validated
together, and turn into the `dvc exp run -S key=value ...` command that writes them.

May import: config (itself). Used by `tutorloop recipe` / `seeds` / `demo` (tutorloop/cli/).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from tutorloop.config.loading import ConfigError, read_yaml
from tutorloop.config.schema import expected_checkpoints, validate

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe_overrides(name: str) -> dict:
    """The recipe's overrides as dotted keys (`generate.teacher.kind`: value), DVC's -S form."""
    path = RECIPES / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {name!r} (known: {known})")

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of params.yaml keys, got {type(data).__name__}", path=path)
    return flat(data)


def flat(d: dict, prefix: str = "") -> dict:
    """A nested mapping as dotted keys to leaf values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def leftovers(project: Path, overrides: dict) -> dict:
    """{dotted key: (workspace value, committed value)} where params.yaml differs from git HEAD's
    and `overrides` sets nothing there. `dvc exp run` applies an experiment's values to the
    workspace, so an earlier experiment's knob rides along into the next one unless reset: said
    before the run. {} outside a git repository or without a committed params.yaml."""
    import subprocess

    got = subprocess.run(["git", "show", "HEAD:./params.yaml"], cwd=project, capture_output=True, text=True)
    if got.returncode != 0:
        return {}
    committed, now = flat(yaml.safe_load(got.stdout) or {}), flat(read_yaml(project / "params.yaml") or {})
    covered = tuple(overrides)
    return {key: (now.get(key), committed.get(key)) for key in sorted(set(now) | set(committed))
            if now.get(key) != committed.get(key)
            and not any(key == c or key.startswith(c + ".") or c.startswith(key + ".") for c in covered)}


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """params.yaml's mapping with the dotted overrides set (what `dvc exp run -S` will write)."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def has_key(raw: dict, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def recipe_params(name: str, project: Path, sets: list[str] = (), extra: dict | None = None) -> tuple[dict, dict]:
    """(the recipe's dotted overrides with `sets` (KEY=VALUE, a YAML value) and `extra` on top,
    params.yaml's mapping), validated together as `dvc exp run` will write them."""
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
    overrides = complete(raw, overrides)
    validate(apply_overrides(raw, overrides))
    return overrides, raw


def complete(raw: dict, overrides: dict) -> dict:
    """`overrides` plus the checkpoints of the rounds and controls they add (DVC's foreach reads
    `checkpoints` from params.yaml): derived here, never a second map a recipe keeps."""
    merged = apply_overrides(raw, overrides)
    have = merged.get("checkpoints") if isinstance(merged.get("checkpoints"), dict) else {}
    return {**overrides, **{f"checkpoints.{key}": folder for key, folder in expected_checkpoints(merged).items()
                            if have.get(key) != folder}}


def exp_command(name: str, overrides: dict, raw: dict, targets: tuple[str, ...] = ()) -> list[str]:
    """`dvc exp run -n NAME -S key=value ... [targets]` for overrides on params.yaml's `raw`."""
    cmd = ["dvc", "exp", "run", "-n", name]
    for key, value in overrides.items():
        # DVC's Hydra-style -S only overrides keys params.yaml has; a new one needs `++key=` (add or
        # override: a single `+` fails once an earlier experiment has applied the key to the workspace)
        key = key if has_key(raw, key) else "++" + key
        # JSON keeps '' and booleans intact through DVC's parser, and quotes a string YAML would
        # read as something else (a checkpoint key "0" must not become the integer 0)
        cmd += ["-S", f"{key}={value if _plain(value) else json.dumps(value)}"]
    return cmd + list(targets)


def _plain(value) -> bool:
    """A string that YAML (and so DVC's -S) reads back as itself."""
    try:
        return isinstance(value, str) and value != "" and yaml.safe_load(value) == value
    except yaml.YAMLError:
        return False

