"""More held-out problems for a workspace, disjoint from everything it trained and was scored on.

A 100-problem held-out set (the quick demo's) cannot separate two rounds a few points apart: the
README's n = 500 comparisons pair it with 400 more problems drawn here. The workspace's own
teacher writes them (`generate` at another seed, test split only: seed problems, as the held-out
set is), and a problem is kept only when it is neither a copy of nor overlapping — by
decontaminate's n-gram rule — any SFT, practice or held-out problem of the workspace. Scoring
them is the evaluate stage run by hand on the file; pairing is `tutorloop paired`.

    tutorloop heldout --n 400 --seed 777 --out data/extra/heldout.jsonl
    python -m components.evaluate extra-2 models/round-2 data/extra/heldout.jsonl metrics/extra-2.json eval/extra-2 --gsm8k /dev/null
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tutorloop.config import Params
from tutorloop.data.contamination import EvalIndex
from tutorloop.data.jsonl import read_jsonl, write_jsonl
from tutorloop.errors import DataError
from tutorloop.teachers.generation import generate_dataset

# The workspace files a drawn problem must be disjoint from (relative to the project root).
SEEN = ("data/clean/sft.jsonl", "data/clean/practice.jsonl", "data/generated/test.jsonl")
OVERDRAW = 1.3   # candidates per wanted problem: ~5% are dropped as overlapping on the templated families


def _normal(question: str) -> str:
    return " ".join(question.split())


def seen_problems(project: Path) -> list[dict]:
    """Every problem the workspace trained or was scored on; it must have run generate and decontaminate."""
    missing = [p for p in SEEN if not (project / p).exists()]
    if missing:
        raise DataError(f"{', '.join(missing)}: missing -> run `dvc repro decontaminate` first (the new problems "
                        "must be checked against the workspace's own)")
    return [r for p in SEEN for r in read_jsonl(project / p, required=("question",))]


def disjoint(candidates: list[dict], seen: list[dict], ngram: int, min_overlap: float) -> list[dict]:
    """The candidates that are no copy of a seen question and share < min_overlap of n-grams with one."""
    questions = {_normal(p["question"]) for p in seen}
    index = EvalIndex(seen, ngram)
    return [p for p in candidates
            if _normal(p["question"]) not in questions and index.overlap(p["question"]) < min_overlap]


def draw(params: Params, project: Path, n: int, seed: int, out: Path) -> dict:
    """Write n new held-out problems (ids extra-0..) to out; return the counts."""
    if seed == params.generate.seed:
        raise DataError(f"--seed {seed}: that is generate.seed, the workspace's own problems -> pick another")
    seen = seen_problems(project)
    config = params.generate.model_copy(update={
        "seed": seed, "n_test": int(n * OVERDRAW) + 1, "n_practice": 0, "n_sft": 0,
        "cache_dir": str(project / params.generate.cache_dir)})
    with tempfile.TemporaryDirectory() as scratch:   # generate's split files: only test.jsonl is wanted
        generate_dataset(config, Path(scratch), progress=False, seeds_file=_seeds_file(project))
        candidates = read_jsonl(Path(scratch) / "test.jsonl", required=("question", "answer"))
    kept = disjoint(candidates, seen, params.decontaminate.ngram, params.decontaminate.min_overlap)
    if len(kept) < n:
        raise DataError(f"--n {n}: only {len(kept)} of {len(candidates)} drawn problems are new to this "
                        "workspace -> ask for fewer, or add seed problems")
    rows = [{**p, "id": f"extra-{i}"} for i, p in enumerate(kept[:n])]
    write_jsonl(out, rows)
    return {"candidates": len(candidates), "disjoint": len(kept), "written": n}


def _seeds_file(project: Path) -> Path | None:
    """The inputs stage's seed rows (jsonl/dataset seeds), as generate reads them; None = procedural."""
    path = project / "data" / "inputs" / "seeds.jsonl"
    return path if path.exists() and path.stat().st_size else None
