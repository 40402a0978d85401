"""The README and docs/ stay usable: short README, links that resolve, commands that exist, and
no quantity stated twice with two values.

Fast and offline: reads the markdown files, the Makefile and the CLI's `--help` (typer's test
runner; no command runs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "infra" / "README.md"]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def code_lines(text: str) -> list[str]:
    """Every line inside a fenced code block."""
    return [line for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text()), re.MULTILINE):
        base, n = slug(heading), 0
        name = base
        while name in found:   # GitHub numbers repeated headings: x, x-1, x-2, ...
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


# --- (a) the README is short and reaches `make demo` at once ---------------------------------

def test_readme_is_short_and_reaches_make_demo_in_its_first_40_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200: details go to docs/)"
    assert any("make demo" in line for line in lines[:40]), "README.md must reach `make demo` in its first 40 lines"


# --- (b) every relative link resolves --------------------------------------------------------

def broken_links(page: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto: ...: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{rel(page)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{rel(page)}: {target} (no heading #{anchor} in {rel(dest)})")
    return bad


def test_the_pages_exist():
    assert DOCS, "docs/ holds no page"
    for page in PAGES:
        assert page.exists(), f"{rel(page)} is missing"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    bad = broken_links(page)
    assert not bad, "broken links:\n" + "\n".join(bad)


# --- (c) every command in a code block exists ------------------------------------------------

def cli_commands() -> set[str]:
    """The subcommands `tutorloop --help` lists (click's view of the Typer app, as --help renders it)."""
    import typer

    from tutorloop.cli import app

    names = set(typer.main.get_command(app).commands)
    assert {"run", "demo", "recipe"} <= names, f"could not read the commands of the Typer app: {sorted(names)}"
    return names


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.%-]+)\s*:(?!=)", text, re.MULTILINE)) - {".PHONY"}


def invocations(pages: list[Path], program: str) -> list[tuple[str, str]]:
    """(page, line) for each line of a fenced block that runs `program` (a leading `$ ` allowed)."""
    found = []
    for page in pages:
        for line in code_lines(page.read_text()):
            words = line.strip().removeprefix("$ ").split()
            if words and words[0] == program:
                found.append((rel(page), line.strip()))
    return found


def first_argument(line: str) -> str | None:
    """The subcommand or target: the first word after the program that is no option or VAR=value."""
    for word in line.removeprefix("$ ").split()[1:]:
        if word.startswith("#"):
            return None
        if not word.startswith("-") and "=" not in word:
            return word
    return None


@pytest.mark.parametrize("program, known, what", [("tutorloop", cli_commands, "`tutorloop` subcommand"),
                                                  ("make", make_targets, "Makefile target")])
def test_every_command_in_a_code_block_is_a_real_subcommand_or_target(program, known, what):
    names = known()
    uses = invocations([README, *DOCS], program)
    assert uses, f"no `{program} <...>` line in any code block: the check would check nothing"
    bad = [f"{page}: {line}" for page, line in uses if first_argument(line) not in names]
    assert not bad, f"not a {what} ({sorted(names)}):\n" + "\n".join(bad)


# --- (d) one value per quantity in the README ------------------------------------------------

# (quantity, what a sentence about it mentions, the value in such a sentence). A sentence that
# mentions the quantity's subject and states a value in its unit states that quantity.
QUANTITIES = [
    ("the quick demo's minutes in all", r"\bquick\b", r"(\d+(?:\.\d+)?) ?min\b"),
    ("the full demo's minutes", r"\bfull (?:loop|demo|default loop|one)\b", r"(\d+(?:\.\d+)?) ?min\b"),
    ("the full default loop's hours on an fp32 CPU", r"\bfull (?:default )?loop\b", r"(\d+(?:\.\d+)?) ?h\b"),
    ("the engine's speed-up over HF generate", r"HF `?generate", r"(\d+(?:\.\d+)?)x\b"),
]
# A measured figure: a percentage, a duration, a speed-up, a p-value, won/lost counts.
FIGURE = re.compile(r"\d+(?:\.\d+)?\s?(?:%|min\b|h\b|x\b|s\b)|\bp\s?[=<]\s?\d|[+]\d+/[-−]\d+")
CITED = ("37.8%", "81.5%", "86.8%",   # Orca-Math's published GSM8K figures, quoted, not measured here
         "95%")                        # the confidence level of the intervals, a setting


def sentences(text: str) -> list[str]:
    flat = re.sub(r"\s+", " ", text)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(*`\[])", flat)


def stated_values(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {name: set() for name, _, _ in QUANTITIES}
    for sentence in sentences(text):
        for name, subject, value in QUANTITIES:
            if re.search(subject, sentence, re.IGNORECASE):
                found[name] |= {str(float(v)) for v in re.findall(value, sentence)}
    return found


def test_the_readme_states_each_quantity_once():
    for name, values in stated_values(README.read_text()).items():
        assert len(values) <= 1, f"README.md states {name} with different values: {sorted(values)}"


def test_the_readme_types_no_measured_figure_outside_its_generated_tables():
    from tutorloop.eval.results import BLOCK

    text = prose(BLOCK.sub("", README.read_text()))
    for cited in CITED:
        text = text.replace(cited, "")
    typed = FIGURE.findall(text)
    assert not typed, f"README.md types measured figures {typed}: paste them from docs/results/ " \
                      "(tutorloop report --save, tutorloop docs --write) or leave them to docs/experiments.md"


# --- (e) every results table is generated: pasted from docs/results/, never typed -----------

def test_every_results_block_is_what_its_saved_run_generates():
    from tutorloop.eval import results

    assert results.stale(ROOT) == [], "run `tutorloop docs --write` (tables come from docs/results/)"
