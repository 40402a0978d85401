"""dvc.yaml's library deps, computed from the import graph: `tutorloop deps --write` rewrites them,
`tutorloop deps --check` (and tests/test_config.py) says where they are stale.

A stage depends on the library modules its `components/<stage>.py` imports, transitively
(function-level imports too, and the `__init__` of each package on the way, which runs first),
on the files those modules read beside themselves (`Path(__file__).with_name("prompts")`: a
string naming a sibling that is not a module), and is listed by folder where it uses every file
of one. Plumbing is left out on purpose (dvc.yaml's header says why), and so are docstring-only
`__init__` files. Only the `- tutorloop/...` lines of each stage's deps (a foreach stage's `do`
body too) are rewritten; every other line, comment and the order of the rest stay as they are.

May import: the standard library only (it reads source, it imports none of it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

# How a stage runs, logs and ends does not change what it computes (dvc.yaml's header).
PLUMBING = ("tutorloop/runtime/", "tutorloop/data/jsonl.py", "tutorloop/errors.py", "tutorloop/secrets.py",
            "tutorloop/__init__.py", "components/__init__.py")
LIBRARY = "tutorloop/"
WRITE_COMMAND = "tutorloop deps --write"


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules(root: Path, folder: Path) -> dict[str, Path]:
    return {module_name(root, p): p for p in sorted(folder.rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of this project that `path` imports (absolute names; `from a import b` counts
    `a.b` when that is a module, else `a`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("tutorloop", "components", "flows")}
    return found


def _docs_only(path: Path) -> bool:
    return path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in ast.parse(path.read_text()).body)


def _read_beside(path: Path) -> set[Path]:
    """The non-module files and folders next to `path` that its code names in a string (the
    prompt files, the C kernel's source); docstrings do not count."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and ast.get_docstring(n) is not None}
    names = {n.value for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}
    beside = {path.with_name(name) for name in names
              if re.fullmatch(r"[\w.-]+", name) and len(name) < 256 and name not in (".", "..")}
    return {p for p in beside if p.name != "__pycache__" and (
        (p.is_file() and p.suffix != ".py") or (p.is_dir() and not any(p.rglob("*.py"))))}


def _files_under(path: Path) -> set[Path]:
    if path.is_file():
        return {path}
    return {p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def computes_with(root: Path, start: Path) -> set[str]:
    """Every library file (relative, posix) `start` computes with: the modules it imports,
    transitively, and the files they read beside themselves; no plumbing, no docstring-only
    `__init__`."""
    files = {**modules(root, root / "tutorloop"), **modules(root, root / "components")}
    known = {**files, **modules(root, root / "flows")}
    seen: set[str] = set()
    todo = [start]
    while todo:
        for mod in imports(todo.pop(), known):
            parts = mod.split(".")
            for path in filter(None, (files.get(".".join(parts[:n])) for n in range(2, len(parts) + 1))):
                rel = path.relative_to(root).as_posix()
                if rel in seen or rel.startswith(PLUMBING):
                    continue
                seen.add(rel)
                todo.append(path)
    read = {f.relative_to(root).as_posix() for rel in seen for beside in _read_beside(root / rel)
            for f in _files_under(beside)}
    return {rel for rel in seen if not _docs_only(root / rel)} | read


def _whole(root: Path, folder: Path, used: set[str]) -> bool:
    return all(f.relative_to(root).as_posix() in used or _docs_only(f) for f in _files_under(folder))


def dep_lines(root: Path, used: set[str], listed: list[str] = ()) -> list[str]:
    """`used` as dvc.yaml lists it: a folder (never tutorloop/ itself) where every file in it is
    used (docstring-only `__init__` files aside), else the files; sorted. A folder that the
    `listed` lines already spell file by file stays so: another spelling of the same deps would
    change dvc.lock and re-run the stage for nothing."""
    split = {parent.as_posix() for rel in listed for parent in Path(rel).parents}
    out: set[str] = set()
    for rel in used:
        path = root / rel
        top = path
        for folder in path.parents:
            if folder == root / "tutorloop" or root not in folder.parents:
                break
            if folder.relative_to(root).as_posix() in split:
                break
            if _whole(root, folder, used):
                top = folder
        out.add(top.relative_to(root).as_posix())
    return sorted(out)


def stage_deps(root: Path, stage: str, listed: list[str] = ()) -> list[str]:
    """The `tutorloop/...` deps of stage `stage` (its source is components/<stage>.py), spelled
    as `listed` (its lines in dvc.yaml now) spells them where both are right."""
    return dep_lines(root, computes_with(root, root / "components" / f"{stage}.py"), listed)


_STAGE = re.compile(r"^  ([A-Za-z_][\w-]*):")
_DEPS = re.compile(r"^(\s+)deps:\s*(#.*)?$")
_ITEM = re.compile(r"^(\s+)- (\S+)")


def _deps_blocks(root: Path, lines: list[str]):
    """(stage, first item index, end index) for each stage's deps list in dvc.yaml's lines; a stage
    with no components/<stage>.py (one added by hand) is left as it is."""
    stage, in_stages = None, False
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("stages:"):
            in_stages = True
        elif line and not line[0].isspace() and not line.startswith("#"):
            in_stages = False
        if in_stages and (m := _STAGE.match(line)):
            stage = m.group(1)
        elif in_stages and stage and (m := _DEPS.match(line)):
            indent, j = len(m.group(1)), i + 1
            while j < len(lines) and (not lines[j].strip() or lines[j].lstrip().startswith("#")
                                      or len(lines[j]) - len(lines[j].lstrip()) > indent):
                j += 1
            while j > i + 1 and not _ITEM.match(lines[j - 1]):   # trailing blanks/comments belong after
                j -= 1
            if (root / "components" / f"{stage}.py").exists():
                yield stage, i + 1, j
            i = j
            continue
        i += 1


def rewrite(root: Path, text: str) -> str:
    """dvc.yaml's `text` with each stage's `- tutorloop/...` lines set to what it computes with:
    lines that stay keep their text (inline comments too); the block sits where the first one was
    (else after the stage's own source line)."""
    lines = text.splitlines(keepends=True)
    out, done = [], 0
    for stage, start, end in _deps_blocks(root, lines):
        out += lines[done:start]
        block = lines[start:end]
        items = [(_ITEM.match(ln), ln) for ln in block]
        kept = {m.group(2): ln for m, ln in items if m and m.group(2).startswith(LIBRARY)}
        indent = next((m.group(1) for m, _ in items if m), " " * 6)
        eol = next((ln[len(ln.rstrip("\r\n")):] for ln in block), "\n") or "\n"
        new = [kept.get(dep, f"{indent}- {dep}{eol}") for dep in stage_deps(root, stage, list(kept))]
        rest = [ln for m, ln in items if not (m and m.group(2).startswith(LIBRARY))]
        at = next((k for k, (m, _) in enumerate(items) if m and m.group(2).startswith(LIBRARY)), None)
        if at is None:   # none listed yet: after the stage's own source
            own = f"components/{stage}.py"
            at = next((k + 1 for k, (m, _) in enumerate(items) if m and m.group(2) == own), 0)
        out += rest[:at] + new + rest[at:]
        done = end
    return "".join(out + lines[done:])


def stale(root: Path, text: str | None = None) -> list[str]:
    """One line per stage whose `tutorloop/...` deps in dvc.yaml (or `text`) differ from what it
    computes with (missing, not used, or out of order); empty when dvc.yaml is current."""
    text = (root / "dvc.yaml").read_text() if text is None else text
    problems = []
    for stage, start, end in _deps_blocks(root, text.splitlines(keepends=True)):
        listed = [m.group(2) for ln in text.splitlines()[start:end] if (m := _ITEM.match(ln))
                  and m.group(2).startswith(LIBRARY)]
        wanted = stage_deps(root, stage, listed)
        missing, extra = [d for d in wanted if d not in listed], [d for d in listed if d not in wanted]
        if missing or extra:
            problems.append(f"{stage}: " + "; ".join(
                filter(None, [missing and f"missing {', '.join(missing)}", extra and f"not used {', '.join(extra)}"])))
        elif listed != wanted:
            problems.append(f"{stage}: tutorloop deps out of order")
    if not problems and rewrite(root, text) != text:
        problems.append("the tutorloop deps lines are not where they are written")
    return problems


def write(root: Path) -> bool:
    """Rewrite dvc.yaml's `tutorloop/...` deps in place; whether anything changed."""
    path = root / "dvc.yaml"
    text = path.read_text()
    new = rewrite(root, text)
    if new != text:
        path.write_text(new)
    return new != text
