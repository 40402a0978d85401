"""The layout: the library never imports a stage or a flow, no stage imports another stage, the
library's packages import only the layers below them, and no module is part of an import circle.
The command line (tutorloop/cli/) is the top layer: the one part of the package that starts the
Prefect flows (flows/), which never import it back; it never imports a stage.

Imports are read from the source (function-level imports too), so a lazy import that would
close a circle at run time fails here as well. Each module of tutorloop/ is also imported alone,
in a fresh interpreter per package, so an import that only works after some other module has run
first fails too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

from tutorloop.runtime import deps

LIB = ROOT / "tutorloop"

# Bottom to top: a package may import the ones before it and itself, never one after it.
LAYERS = ["secrets", "errors", "config", "hardware", "runtime", "data", "llm", "modeling", "inference", "eval",
          "teachers", "train", "registry", "serving", "cli"]
CLI = "tutorloop.cli"


def module_name(path: Path) -> str:
    return deps.module_name(ROOT, path)


def modules(folder: Path) -> dict[str, Path]:
    return deps.modules(ROOT, folder)


def imports(path: Path) -> set[str]:
    """Every module of this project that `path` imports: the import reader `tutorloop deps` uses."""
    return deps.imports(path, {**modules(LIB), **modules(ROOT / "components"), **modules(ROOT / "flows")})


def layer(name: str) -> int:
    return LAYERS.index(name.split(".")[1])


def is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def test_the_library_never_imports_stages_or_flows():
    for name, path in modules(LIB).items():
        banned = ("components",) if is_cli(name) else ("components", "flows")
        bad = {m for m in imports(path) if m.split(".")[0] in banned}
        assert not bad, f"{name} imports {sorted(bad)}: the library never imports a stage or a flow " \
                        "(only the command line, tutorloop/cli/, starts flows)"


def test_flows_never_import_the_command_line():
    for name, path in modules(ROOT / "flows").items():
        bad = {m for m in imports(path) if is_cli(m)}
        assert not bad, f"{name} imports {sorted(bad)}: the CLI starts flows, never the other way round"


def test_no_stage_imports_another_stage_or_a_flow():
    for name, path in modules(ROOT / "components").items():
        bad = {m for m in imports(path) if m.split(".")[0] == "flows" or
               (m.startswith("components.") and m != name)}
        assert not bad, f"{name} imports {sorted(bad)}: stages hand off through files only"


def test_library_packages_import_only_the_layers_below():
    for name, path in modules(LIB).items():
        if name == "tutorloop":
            continue
        for target in imports(path):
            if target == "tutorloop" or not target.startswith("tutorloop."):   # flows/: checked above
                continue
            assert layer(target) <= layer(name), \
                f"{name} (layer {LAYERS[layer(name)]}) imports {target} (layer {LAYERS[layer(target)]})"


def test_no_import_circles():
    graph = {name: {m for m in imports(path) if m in modules(LIB)} - {name}
             for name, path in modules(LIB).items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_every_library_module_imports_alone():
    names = sorted(n for n in modules(LIB) if not n.endswith(".__main__"))   # __main__ runs the CLI
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    for m in [k for k in sys.modules if k.split('.')[0] == 'tutorloop']:\n"
            "        del sys.modules[m]\n"
            "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_library_has_no_entry_points():
    for name, path in modules(LIB).items():
        if is_cli(name):   # the command line is the entry point
            continue
        blocks = [n for n in ast.parse(path.read_text()).body
                  if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        assert not blocks, f"{name}: the library has no entry points (a stage or the CLI runs it)"


def test_every_folder_and_module_opens_with_a_docstring():
    for folder in (LIB, ROOT / "components", ROOT / "flows"):
        for name, path in modules(folder).items():
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no docstring"
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir() and p.name != "__pycache__"
                              and any(p.glob("*.py")))]:
            init = sub / "__init__.py"
            assert init.exists() and "May import" in init.read_text(), \
                f"{sub.relative_to(ROOT)}/__init__.py must say what the folder holds and what it may import"


def test_no_function_is_longer_than_60_lines():
    for folder in (LIB, ROOT / "components"):
        for name, path in modules(folder).items():
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    assert length <= 60, f"{name}.{node.name} is {length} lines: split it into named steps"


def test_the_layout_map_names_every_stage_package_and_module():
    page = (ROOT / "docs" / "layout.md").read_text()          # the README links it
    block = page.split("```", 2)[1]
    names = [p.name + "/" for p in LIB.iterdir() if p.is_dir() and any(p.glob("*.py"))]
    names += [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    names += [p.stem for p in (ROOT / "components").glob("*.py") if p.name != "__init__.py"]
    missing = [n for n in names if n not in block]
    assert not missing, f"docs/layout.md's map does not name {missing}"
