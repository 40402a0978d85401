"""AgentInstruct data generation, split into sft / practice / test (the `generate` stage's library).

Seeds (procedural graphs, a GSM8K-format jsonl, or a `datasets` id) are expanded by the agents —
Ask-Me-Anything, two Suggester -> Editor rounds, the Solver (twice, for LLM teachers) — on the
embedded procedural teacher (`agents.py`) or an LLM (`instruct.py`). Filters: solutions over
`max_answer_chars` (Orca-Math's 1,800), unparseable answers, disagreeing solves, problems that are
not self-contained, exact and near duplicates (word-3-gram Jaccard). Every record carries
provenance: teacher, model, seed id, agent path, generation params.

Safe to interrupt: teacher calls are cached on disk (`tutorloop.llm.cache.CachedChat`), and each
finished seed is appended to a journal (one JSON line per seed, flushed) under `cache_dir` —
outside the DVC output, which `dvc repro` deletes before running. A re-run replays the journal
(repairing a torn last line), re-expands only unfinished seeds (their finished calls hit the
cache), and applies the global filters in seed order, so the output is the same as an
uninterrupted run's. The journal is keyed by everything that decides a seed's records, the code
of tutorloop/teachers/ and the grader included.

Splits: one seed stream, consumed test first, then practice, then sft; so the held-out set
depends only on (teacher, seeds, seed, n_test). Test seeds are not expanded unless
`agents.test_agents` (the held-out set stays original problems, as GSM8K's test set is).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from tutorloop.config import Generate
from tutorloop.data.dedup import Dedup
from tutorloop.data.digest import digest
from tutorloop.data.evalsets import seed_rows
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.hardware import ResolvedRuntime
from tutorloop.runtime.pool import run_all
from tutorloop.teachers import ProceduralTeacher, graph_record, normalise

SPLITS = ("test", "practice", "sft")
TEACHERS_DIR = Path(__file__).parent


# --- seeds ----------------------------------------------------------------------------------

class SeedsExhausted(RuntimeError):
    """The seed stream ended before a split was full (a RuntimeError, as it always was, for the
    generate stage; `tutorloop heldout` reports it as bad input: the draw asked past the seeds)."""


class SeedSource:
    """Seed i of the stream as {seed_id, question, solution?, family?}; None past the end."""

    def __init__(self, config: Generate, seeds_file: Path | None = None) -> None:
        """`seeds_file`: the inputs stage's copy of the jsonl/dataset seeds (a DVC dep), read
        instead of the configured source; seed ids still name the source."""
        self.cfg = config
        self.procedural = ProceduralTeacher(config.families) if config.seeds.source == "procedural" else None
        self.rows: list[dict] | None = None
        s = config.seeds
        if s.source in ("jsonl", "dataset"):
            prefix = Path(s.path).name if s.source == "jsonl" else f"{s.dataset}/{s.split}"
            rows = read_jsonl(seeds_file, required=("question",)) if seeds_file is not None else seed_rows(s)[0]
            self.rows = [_seed(f"{prefix}:{i}", r) for i, r in enumerate(rows)]
        if self.rows is not None:
            self.rows = self.rows[config.seeds.offset:]
            if config.seeds.shuffle:
                random.Random(config.seed).shuffle(self.rows)

    def __call__(self, i: int) -> dict | None:
        if self.procedural is not None:
            sid = self.procedural.seed_id(i, self.cfg.seed)
            seed = {"seed_id": sid, "family": sid.split(":")[0]}
            if self.cfg.teacher.kind not in ("procedural", "dataset"):  # an LLM teacher expands the seed's text
                seed["question"], seed["solution"], _ = ProceduralTeacher.graph(sid).render()
            return seed
        return self.rows[i] if i < len(self.rows) else None


def _seed(seed_id: str, row: dict) -> dict:
    """A jsonl/dataset row as a seed: its label is the seed's solution; ASDiv-style `formula`,
    `grade` and `type` ride along (the dataset teacher and frontier practice read them)."""
    seed = {"seed_id": seed_id, "question": row["question"], "solution": row.get("answer", "")}
    if row.get("formula"):
        seed["formula"] = row["formula"]
    meta = {k: row[k] for k in ("grade", "type") if row.get(k) not in (None, "")}
    if meta:
        seed["meta"] = meta
    return seed


# --- expansion (one seed -> its records) ----------------------------------------------------

class ProceduralExpander:
    concurrency = 1

    def __init__(self, config: Generate) -> None:
        self.cfg = config
        a = config.agents
        self.params = {"ama": a.ama, "suggest_edit_rounds": a.suggest_edit_rounds, "edits": list(a.edits),
                       "seed": config.seed}

    def __call__(self, seed: dict, agents: bool) -> tuple[list[dict], Counter]:
        from tutorloop.teachers.agents import expand

        a = self.cfg.agents
        g = ProceduralTeacher.graph(seed["seed_id"])
        out, drops = [], Counter()
        variants = expand(seed["seed_id"], g, a.ama, a.suggest_edit_rounds, a.edits) if agents else [("seed", g, [])]
        for path, v, sugg in variants:
            r = graph_record(v, seed["seed_id"], path)
            if not _rederives(r):  # the Verifier: cheap, so every record is checked
                drops["failed_verification"] += 1
                continue
            if sugg:
                r["provenance"]["suggestions"] = sugg
            r["provenance"]["params"] = self.params  # what made it, for ablations by source
            if len(r["solution"]) > self.cfg.max_answer_chars:
                drops["too_long"] += 1
                continue
            out.append(r)
        return out, drops


def _rederives(record: dict) -> bool:
    """Every <<expr=value>> step evaluates to its value and the final answer reads back."""
    from fractions import Fraction

    from tutorloop.eval.grading import extract_answer
    from tutorloop.teachers.arith import annotations, evaluate

    steps = annotations(record["solution"])
    return (bool(steps) and all(evaluate(e) == Fraction(v) for e, v in steps)
            and extract_answer(record["solution"]) == record["answer"])


class LLMExpander:
    def __init__(self, config: Generate, cache_dir: Path, runtime: ResolvedRuntime | None) -> None:
        from tutorloop.teachers.chat import make_chat
        from tutorloop.teachers.instruct import LLMAgents

        self.chat = make_chat(config.teacher, cache_dir, runtime)
        self.agents = LLMAgents(self.chat, config.teacher, config.agents, config.max_answer_chars)
        self.concurrency = config.teacher.concurrency

    def __call__(self, seed: dict, agents: bool) -> tuple[list[dict], Counter]:
        return self.agents.expand(seed, agents)


class DatasetExpander:
    """`teacher.kind: dataset`: each labelled seed (GSM8K format: a solution ending `#### N`)
    passes through as the teacher's record, with the same filters and provenance as generated
    ones. It invents no text, so the agents do not run (an LLM teacher expands such seeds).

    A seed with a `formula` (ASDiv: `7+2=9`) whose expression evaluates exactly to its labelled
    answer gets a GSM8K-style solution written from it (`7+2 = <<7+2=9>>9` then `#### 9`); one
    whose label is the bare answer and whose formula is no plain expression (ratios, remainders,
    unit words) is marked `answer_only`: a fine problem to evaluate on, but a solution with no
    steps teaches nothing, so the training splits drop it (`_fill`)."""

    concurrency = 1

    def __init__(self, config: Generate) -> None:
        self.cfg = config
        s = config.seeds
        self.source = s.dataset or Path(s.path).name
        self.family = "gsm8k" if "gsm8k" in (s.dataset or s.path).lower() else Path(self.source).stem

    def __call__(self, seed: dict, agents: bool) -> tuple[list[dict], Counter]:
        from tutorloop.eval.grading import marked_answer

        solution = (seed.get("solution") or "").strip()
        answer = marked_answer(solution) if "####" in solution else None
        if answer is None:
            return [], Counter(unparseable=1)
        written = formula_solution(seed["formula"], answer) if seed.get("formula") else None
        # only a seed that came with a formula is judged by it: other labels pass through as they are
        kind = "formula" if written else (
            "answer_only" if seed.get("formula") and _answer_only(solution, answer) else "label")
        solution = written or solution
        if len(solution) > self.cfg.max_answer_chars:
            return [], Counter(too_long=1)
        record = {"question": seed["question"].strip(), "solution": solution, "answer": answer,
                  "family": self.family,
                  "provenance": {"teacher": "dataset", "model": self.source, "seed_id": seed["seed_id"],
                                 "agent_path": "seed"}}
        if kind != "label":   # a label passed through verbatim (GSM8K) keeps its records as they were
            record["provenance"]["solution"] = kind
        if seed.get("meta"):
            record["meta"] = seed["meta"]
        return [record], Counter()


_PLAIN = re.compile(r"^[0-9.+\-*/() ]+$")


def formula_solution(formula: str, answer: str) -> str | None:
    """A GSM8K-style solution from a formula `expr=value` whose expr evaluates exactly to
    `answer`; None for anything else (several equations, ratios, `r` remainders, unit words)."""
    from fractions import Fraction

    from tutorloop.teachers.arith import evaluate, fmt

    expr, _, _stated = formula.rpartition("=")
    expr = " ".join(expr.split())
    if not expr or ";" in formula or not _PLAIN.match(expr):
        return None
    try:
        value = evaluate(expr.replace(" ", ""))
        shown = fmt(value)
    except (ArithmeticError, ValueError):   # CalcError and NotRepresentable are ValueErrors
        return None
    if value != Fraction(answer):
        return None
    compact = expr.replace(" ", "")
    return f"{compact} = <<{compact}={shown}>>{shown}\n#### {shown}"


def _answer_only(solution: str, answer: str) -> bool:
    """A label that states only its answer (`9\n#### 9`): no step to learn from."""
    from fractions import Fraction

    body = [ln.strip().replace(",", "") for ln in solution.splitlines()
            if ln.strip() and not ln.strip().startswith("####")]
    try:   # the grader's answers are canonical (`0.59` reads back as `59/100`): compare values
        return all(Fraction(ln) == Fraction(answer) for ln in body)
    except (ValueError, ZeroDivisionError):
        return False


def make_expander(config: Generate, cache_dir: Path, runtime: ResolvedRuntime | None):
    if config.teacher.kind == "procedural":
        return ProceduralExpander(config)
    if config.teacher.kind == "dataset":
        return DatasetExpander(config)
    return LLMExpander(config, cache_dir, runtime)


def procedural_part(config: Generate) -> Generate:
    """The config of the procedural share mixed into a dataset/LLM teacher's sft and practice sets."""
    return config.model_copy(update={"teacher": config.teacher.model_copy(update={"kind": "procedural"}),
                                     "seeds": config.seeds.model_copy(update={"source": "procedural"}),
                                     "procedural_share": 0.0})


# --- journal --------------------------------------------------------------------------------

class Journal:
    """Append-only JSONL of finished seeds; a torn last line (kill -9 mid-write) is cut off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: dict[int, dict] = {}
        self.repaired = 0
        if path.exists():
            data = path.read_bytes()
            good = 0
            for line in data.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break
                try:
                    b = json.loads(line)
                except json.JSONDecodeError:
                    break
                self.done[b["index"]] = b
                good += len(line)
            if good < len(data):
                self.repaired = len(data) - good
                with open(path, "r+b") as f:
                    f.truncate(good)
        self._f = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def append(self, bundle: dict) -> None:
        line = json.dumps(bundle) + "\n"
        with self._lock:  # worker threads append; one line must never interleave with another
            self._f.write(line)
            self._f.flush()
            self.done[bundle["index"]] = bundle

    def close(self) -> None:
        self._f.close()


def journal_key(config: Generate, seeds: "SeedSource") -> str:
    """What decides a seed's records: the teacher (minus transport knobs), the seeds (config and
    content), agents, and the code and prompts that make and filter records (a fixed template or
    filter must not be served from an old journal)."""
    t = config.teacher.model_dump(exclude={"concurrency", "timeout", "max_retries", "batch_size", "api_key_env",
                                           "base_url"})
    spec = {"teacher": t, "seeds": config.seeds.model_dump(), "agents": config.agents.model_dump(),
            "seed": config.seed, "families": config.families, "max_answer_chars": config.max_answer_chars}
    lib = TEACHERS_DIR.parent
    code = sorted(f for f in TEACHERS_DIR.rglob("*") if f.is_file() and f.suffix in (".py", ".md"))
    # the grader that reads answers, and the chat backends that fetch the replies
    code += [lib / "eval" / "grading.py", *sorted((lib / "llm").glob("*.py")), lib / "inference" / "chat.py"]
    return digest(spec, seeds.rows, *code, length=16)


# --- the dataset ------------------------------------------------------------------------------

# counters that describe this run rather than its output (a resumed run replays, a re-run hits the cache)
RUN_STATS = ("journal_repaired_bytes", "journal_replayed_seeds", "calls/cache_hits", "calls/sent")


def _fill(split: str, n: int, config: Generate, seeds: SeedSource, expander, cursor: int, dedup: Dedup,
          counts: Counter, cache_dir: Path, progress: bool) -> tuple[list[dict], int]:
    """Take seeds from `cursor` on until `n` records of `split` pass the global filters; returns
    (records, next cursor). Finished seeds come from (and go to) the split's journal."""
    from tqdm.auto import tqdm

    agents = split != "test" or config.agents.test_agents
    journal = Journal(cache_dir / "journal" / f"{journal_key(config, seeds)}-{split}.jsonl")
    counts["journal_repaired_bytes"] += journal.repaired
    counts["journal_replayed_seeds"] += len(journal.done)
    kept: list[dict] = []
    bar = tqdm(total=n, desc=f"generate {split}", unit="problem", file=sys.stderr, disable=not progress)
    i = cursor
    while len(kept) < n:
        # Seeds expanded at once: enough to keep `concurrency` workers busy, but no more than the
        # records still wanted (a seed that passes gives at least its own record). Seeds expanded
        # past a split's end are paid for and never used: with a fixed 8 they were a third of the
        # calls the llama.cpp integration test sent (tests/integration).
        chunk = max(expander.concurrency, min(expander.concurrency * 4, n - len(kept)))
        todo = []
        for j in range(i, i + chunk):
            if j not in journal.done:
                s = seeds(j)
                if s is not None:
                    todo.append((j, s))
        _expand_all(expander, todo, agents, journal)
        for j in range(i, i + chunk):
            if j not in journal.done:
                raise SeedsExhausted(f"{split}: the seed source ran out at seed {j} with {len(kept)} of "
                                     f"{n} problems; add seeds or lower generate.n_{split}")
            b = journal.done[j]
            if b["seed_id"] != seeds(j)["seed_id"]:
                raise RuntimeError(f"journal {journal.path} holds seed {b['seed_id']!r} at {j}, expected "
                                   f"{seeds(j)['seed_id']!r}: delete it (it belongs to other seeds)")
            # drops by reason, and the LLM agents' calls by role (journaled with the seed, so a resumed
            # run counts what an uninterrupted one would)
            counts.update({k if k.startswith("agent_calls/") else f"drop/{k}": v for k, v in b["drops"].items()})
            counts["seeds"] += 1
            for r in b["records"]:
                # a bare-answer label serves evaluation; SFT and practice need a solution to learn from
                why = "answer_only" if split != "test" and r["provenance"].get("solution") == "answer_only" \
                    else dedup.verdict(r["question"], r["answer"])
                if why:
                    counts[f"drop/{why}"] += 1
                    continue
                r["id"] = f"{split}-{hashlib.sha1(normalise(r['question']).encode()).hexdigest()[:12]}"
                kept.append(r)
                bar.update(1)
                if len(kept) == n:
                    break
            if len(kept) == n:
                cursor = j + 1
                break
        else:
            i += chunk
    bar.close()
    journal.close()
    return kept, cursor


def generate_dataset(config: Generate, out: Path, cache_dir: Path | None = None,
                     runtime: ResolvedRuntime | None = None, progress: bool = True, run_stats: Path | None = None,
                     seeds_file: Path | None = None) -> dict:
    """Write out/{sft,practice,test}.jsonl and out/stats.json (and run_stats); return all counts.
    `runtime`: the stage's resolved runtime, which a local (transformers) teacher runs on."""
    start = time.perf_counter()
    cache_dir = Path(cache_dir or config.cache_dir)
    sources = [(config, SeedSource(config, seeds_file), make_expander(config, cache_dir, runtime))]
    if config.procedural_share:   # a second stream: the embedded teacher's share of sft/practice
        mixed = procedural_part(config)
        sources.append((mixed, SeedSource(mixed), make_expander(mixed, cache_dir, runtime)))
    dedup = Dedup(config.near_dup)   # one dedup across sources: a problem is kept once
    counts: Counter = Counter()
    cursors = [0] * len(sources)
    sizes = {"test": config.n_test, "practice": config.n_practice, "sft": config.n_sft}
    for split in SPLITS:
        share = 0.0 if split == "test" else config.procedural_share
        wanted = [sizes[split] - round(sizes[split] * share), round(sizes[split] * share)][:len(sources)]
        kept: list[dict] = []
        for k, ((cfg, seeds, expander), n) in enumerate(zip(sources, wanted)):
            if n:
                part, cursors[k] = _fill(split, n, cfg, seeds, expander, cursors[k], dedup, counts, cache_dir,
                                         progress)
                kept += part
        write_jsonl(out / f"{split}.jsonl", kept)
        counts[f"n_{split}"] = len(kept)
        for r in kept:
            counts[f"family/{split}/{r['family']}"] += 1
            counts[f"agent/{split}/{r['provenance']['agent_path'].split('/')[0]}"] += 1
            counts[f"teacher/{split}/{r['provenance']['teacher']}"] += 1
    chat = getattr(sources[0][2], "chat", None)
    if chat is not None:
        counts["calls/cache_hits"], counts["calls/sent"] = chat.hits, chat.misses
    seconds = time.perf_counter() - start
    volatile = {k: counts.pop(k) for k in RUN_STATS if k in counts}
    volatile.update(seconds=round(seconds, 4), problems_per_s=round(sum(sizes.values()) / seconds, 1))
    write_json(dict(counts), out / "stats.json")
    if run_stats is not None:
        write_json(volatile, run_stats)
    return {**counts, **volatile}


def _expand_all(expander, todo: list[tuple[int, dict]], agents: bool, journal: Journal) -> None:
    """Expand seeds, journaling each as it finishes; at most `concurrency` in flight (so at most
    that many calls are lost to a kill). The first TeacherError stops everything."""
    def one(item: tuple[int, dict]) -> None:
        j, seed = item
        records, drops = expander(seed, agents)
        journal.append({"index": j, "seed_id": seed["seed_id"], "records": records, "drops": dict(drops)})

    run_all(one, todo, workers=expander.concurrency, name="teacher")
