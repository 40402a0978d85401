"""Results tables that cannot drift: every table of figures in README.md and docs/ is generated
from a file a run wrote, never typed.

A run's figures are saved under docs/results/ by `tutorloop report --save NAME` (the report
stage's reports/accuracy.csv, with each checkpoint's minutes from MLflow, or a `tutorloop seeds`
pooled.json with `--from`), beside NAME.json: the commit, CPU, precision, date and the command
that reproduces them. A page shows them in a block

    <!-- results: NAME -->
    (generated table)
    <!-- /results -->

that `tutorloop docs --write` fills from those files and `tutorloop docs --check` (a test) finds
stale: a figure edited by hand, or a file re-saved without re-pasting, fails the suite.

May import: config, data, eval (itself).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path

from tutorloop.data.jsonl import write_json
from tutorloop.eval.report import COLUMNS, label, rows
from tutorloop.eval.stats import wilson

RESULTS = Path("docs") / "results"
PAGES = ("README.md", "docs/*.md", "infra/README.md")
BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.DOTALL)
WRITE_COMMAND = "tutorloop docs --write"


def save(project: Path, name: str, provenance: dict, source: Path | None = None,
         minutes: dict[str, float] | None = None) -> list[Path]:
    """File a run's figures as docs/results/NAME.{csv | pooled.json} with NAME.json (provenance):
    the workspace's report rows (what reports/accuracy.csv holds, with the rounds' training and
    practice figures from data/ and each checkpoint's minutes), or a copy of `source`: a
    `tutorloop seeds` pooled.json or another accuracy.csv."""
    out = project / RESULTS
    out.mkdir(parents=True, exist_ok=True)
    if source is not None and source.suffix == ".json":
        # benchmarks/load.py's figures or a `tutorloop seeds` pooled.json
        kind = "load" if isinstance(json.loads(source.read_text()), dict) else "pooled"
        target = out / f"{name}.{kind}.json"
        shutil.copyfile(source, target)
    else:
        target = out / f"{name}.csv"
        data = _read_csv(source) if source is not None else \
            rows(project / "metrics", project / "data", project / "eval")
        with open(target, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*COLUMNS, "minutes"], extrasaction="ignore")
            writer.writeheader()
            for row in data:
                m = (minutes or {}).get(row["checkpoint"])
                writer.writerow({**row, "minutes": f"{m:.1f}" if m is not None else ""})
    write_json(provenance, out / f"{name}.json")
    return [target, out / f"{name}.json"]


def render(project: Path, name: str, page: Path | None = None) -> str:
    """The markdown a `results: NAME` block of `page` holds: the table, then where the figures
    come from (linked relative to the page)."""
    folder = project / RESULTS
    meta_path = folder / f"{name}.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no saved results named {name!r} (tutorloop report --save {name})")
    meta = json.loads(meta_path.read_text())
    pooled, load = folder / f"{name}.pooled.json", folder / f"{name}.load.json"
    if pooled.exists():
        body, source = pooled_markdown(json.loads(pooled.read_text())), pooled.name
    elif load.exists():
        body, source = load_markdown(json.loads(load.read_text())), load.name
    else:
        body, source = accuracy_markdown(_read_csv(folder / f"{name}.csv")), f"{name}.csv"
    link = os.path.relpath(folder / source, (page or project / "docs" / "x.md").parent)
    return (body + f"\n\n*{meta.get('cpu', 'CPU not recorded')}, {meta.get('precision', '?')}; commit "
            f"`{meta.get('commit', '?')}`, {meta.get('date', '?')}; `{meta.get('command', '?')}`; "
            f"generated from [docs/results/{source}]({link}) by `{WRITE_COMMAND}`.*\n")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pct(acc: str, n: str) -> str:
    lo, hi = wilson(round(float(acc) * int(n)), int(n))
    return f"{float(acc):.1%} [{lo:.0%}, {hi:.0%}]"


def _vs(r: dict, tag: str) -> str:
    return f"+{r[f'won_vs_{tag}']}/−{r[f'lost_vs_{tag}']} (p {float(r[f'p_vs_{tag}']):.2g})" \
        if r.get(f"p_vs_{tag}", "") != "" else "–"


def accuracy_markdown(data: list[dict]) -> str:
    """A report's rows (reports/accuracy.csv) as a markdown table: greedy pass@1 with its 95%
    interval, GSM8K beside it, each checkpoint paired (won/lost, one-sided McNemar p)."""
    gsm8k, minutes, practice = (any(r.get(c, "") != "" for r in data)
                                for c in ("gsm8k_accuracy", "minutes", "practice_pass_rate"))
    head = ["checkpoint", f"held-out, n = {data[0]['n']} [95% CI]"] + (["GSM8K side check"] if gsm8k else []) \
        + ["vs SFT", "vs previous", "vs its control"] + (["practice pass"] if practice else []) \
        + (["minutes"] if minutes else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in data:
        cells = [label(r["checkpoint"]), _pct(r["accuracy"], r["n"])]
        if gsm8k:
            cells.append(_pct(r["gsm8k_accuracy"], r["gsm8k_n"]) if r["gsm8k_accuracy"] != "" else "–")
        cells += [_vs(r, "sft") if r["checkpoint"] != "0" else "–", _vs(r, "prev"), _vs(r, "control")]
        if practice:
            cells.append(f"{float(r['practice_pass_rate']):.1%}" if r.get("practice_pass_rate", "") != "" else "–")
        cells += [r["minutes"] or "–"] if minutes else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled_markdown(results: list[dict]) -> str:
    """`tutorloop seeds`' pooled.json as a markdown table (sign test over problems, seed-averaged)."""
    lines = ["| arm | vs | arm pass@1 | baseline pass@1 | problems ahead / behind | one-sided p |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {label(r['arm'])} | {label(r['baseline'])} | {r['arm_accuracy']:.1%} | "
                     f"{r['baseline_accuracy']:.1%} | +{r['ahead']}/−{r['behind']} of {r['n']} | {r['p']:.2g} |")
    return "\n".join(lines)


def load_markdown(f: dict) -> str:
    """benchmarks/load.py's figures as a one-row markdown table."""
    answered = ", ".join(f"{n} x {k}" for k, n in sorted(f["statuses"].items()))
    return ("| clients x seconds (with the drain) | requests (status x count) | hung | p50 / p99 | useful tok/s | peak RSS | "
            "longest sampled wait |\n|---|---|---|---|---|---|---|\n"
            f"| {f['clients']} x {f['seconds']:.0f} s | {f['requests']} ({answered}) | {f['hung']} | "
            f"{f['p50_s']:.1f} / {f['p99_s']:.1f} s | {f['tokens_per_second']:.1f} | "
            f"{f['peak_rss_gb']:.2f} GB (KV budget {f['kv_budget_gb']:.0f} GB) | {f['longest_sampled_wait_s']:.1f} s |")


def pages(project: Path) -> list[Path]:
    return sorted({p for pattern in PAGES for p in project.glob(pattern)})


def _pasted(project: Path, text: str, page: Path) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(project, m.group("name"), page) + m.group(4), text)


def paste(project: Path) -> list[Path]:
    """Fill every results block of the pages from docs/results/; the pages that changed."""
    changed = []
    for page in pages(project):
        text = page.read_text()
        new = _pasted(project, text, page)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def stale(project: Path) -> list[str]:
    """One line per page whose results blocks differ from what docs/results/ generates."""
    problems = []
    for page in pages(project):
        text = page.read_text()
        try:
            if _pasted(project, text, page) != text:
                problems.append(f"{page.relative_to(project)}: a results block differs from docs/results/")
        except FileNotFoundError as err:
            problems.append(f"{page.relative_to(project)}: {err}")
    return problems
