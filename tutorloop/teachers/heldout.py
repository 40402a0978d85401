"""More held-out problems for a workspace, disjoint from everything it trained and was scored on.

A 100-problem held-out set (the quick demo's) cannot separate two rounds a few points apart: the
docs/experiments.md's n = 500 comparisons pair it with 400 more problems drawn here. The workspace's own
teacher writes them (`generate` at another seed, test split only, so they are made as the
held-out set was), and a problem is kept only when it shares no seed with, is no near-duplicate
of (generate's word-3-gram rule) and does not overlap (decontaminate's n-gram rule) any SFT,
practice or held-out problem of the workspace, follow-up practice sets included. Rounds run
*after* the draw may practise on follow-up variants of anything: draw when the rounds are done.
Scoring them is the evaluate stage run by hand on the file; pairing is `tutorloop paired`.

    tutorloop heldout --n 400 --seed 777 --out extra/heldout.jsonl
    python -m components.evaluate extra-2 models/round-2 extra/heldout.jsonl extra/metrics/2.json extra/eval/2 \
        --shots data/clean/sft.jsonl --gsm8k /dev/null
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tutorloop.config import Params
from tutorloop.data.contamination import EvalIndex
from tutorloop.data.dedup import Dedup
from tutorloop.data.jsonl import read_jsonl, write_jsonl
from tutorloop.errors import DataError
from tutorloop.hardware import ResolvedRuntime
from tutorloop.teachers.generation import SeedsExhausted, generate_dataset

# The workspace files a drawn problem must be disjoint from (relative to the project root), and
# the practice sets that follow-up rounds grew (after-0 is the clean practice set itself).
SEEN = ("data/clean/sft.jsonl", "data/clean/practice.jsonl", "data/generated/test.jsonl")
FOLLOWUP_SETS = "data/practice-sets/after-*.jsonl"
# The inputs stage's seed rows (dvc.yaml: inputs' out, generate's --seeds); empty = procedural seeds.
SEEDS = "data/inputs/seeds.jsonl"
# Procedural seeds are fresh at a new seed (~5% of the quick workspace's were dropped): draw 1.3x.
# Row seeds (jsonl, dataset) are the same pool reshuffled: draw past every seed the workspace used.
OVERDRAW = 1.3


def seen_problems(project: Path) -> list[dict]:
    """Every problem the workspace trained or was scored on; it must have run generate and decontaminate."""
    missing = [p for p in SEEN if not (project / p).exists()]
    if missing:
        raise DataError(f"{', '.join(missing)}: missing -> run `dvc repro decontaminate` first (the new problems "
                        "must be checked against the workspace's own)")
    files = [project / p for p in SEEN] + sorted(project.glob(FOLLOWUP_SETS))
    return [r for f in files for r in read_jsonl(f, required=("question",))]


def _seed_id(record: dict) -> str | None:
    return (record.get("provenance") or {}).get("seed_id")


def disjoint(candidates: list[dict], seen: list[dict], ngram: int, min_overlap: float,
             near_dup: float) -> list[dict]:
    """The candidates sharing no seed with a seen problem, no near-duplicate of one (Jaccard of
    word 3-grams >= near_dup, as generate keeps its splits apart) and < min_overlap of its n-grams."""
    seeds = {_seed_id(p) for p in seen} - {None}
    dedup = Dedup(near_dup)
    for p in seen:
        dedup.verdict(p["question"], p.get("answer", ""))
    index = EvalIndex(seen, ngram)
    return [p for p in candidates
            if _seed_id(p) not in seeds and index.overlap(p["question"]) < min_overlap
            and dedup.verdict(p["question"], p.get("answer", "")) is None]


def draw(params: Params, project: Path, n: int, seed: int, out: Path, runtime: ResolvedRuntime | None = None) -> dict:
    """Write n new held-out problems (ids extra-<seed>-0..) to out; return the counts. `runtime`:
    the caller's resolved runtime, which a local (transformers) teacher runs on."""
    if n < 1:
        raise DataError(f"--n {n}: ask for at least one problem")
    if seed == params.generate.seed:
        raise DataError(f"--seed {seed}: that is generate.seed, the workspace's own problems -> pick another")
    seen = seen_problems(project)
    candidates = _candidates(params, project, n, seed, len(seen), runtime)
    kept = disjoint(candidates, seen, params.decontaminate.ngram, params.decontaminate.min_overlap,
                    params.generate.near_dup)
    if len(kept) < n:
        raise DataError(f"--n {n}: only {len(kept)} of {len(candidates)} drawn problems are new to this "
                        "workspace -> ask for fewer, or add seed problems")
    write_jsonl(out, [{**p, "id": f"extra-{seed}-{i}"} for i, p in enumerate(kept[:n])])
    return {"candidates": len(candidates), "disjoint": len(kept), "written": n}


def _candidates(params: Params, project: Path, n: int, seed: int, n_seen: int,
                runtime: ResolvedRuntime | None) -> list[dict]:
    """generate's test split at `seed`, large enough that n survive the disjointness checks."""
    procedural = params.generate.seeds.source == "procedural"
    config = params.generate.model_copy(update={
        "seed": seed, "n_test": int(n * OVERDRAW) + 1 if procedural else n + n_seen, "n_practice": 0, "n_sft": 0,
        "cache_dir": str(project / params.generate.cache_dir)})
    with tempfile.TemporaryDirectory() as scratch:   # generate's split files: only test.jsonl is wanted
        try:
            generate_dataset(config, Path(scratch), runtime=runtime, progress=False,
                             seeds_file=_seeds_file(project))
        except SeedsExhausted as err:   # fewer seeds than the draw needs: bad input, not a bug
            raise DataError(f"--n {n}: {err}") from err
        return read_jsonl(Path(scratch) / "test.jsonl", required=("question", "answer"))


def _seeds_file(project: Path) -> Path | None:
    """The inputs stage's seed rows (jsonl/dataset seeds), as generate reads them; None = procedural."""
    path = project / SEEDS
    return path if path.exists() and path.stat().st_size else None
