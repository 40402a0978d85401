"""Data quality and speed of the embedded teacher: N problems through the real `generate` stage.

Times `tutorloop.teachers.generation.generate_dataset` (procedural teacher, all agents) for N training problems, then
audits the output independently of the stage's own filters: every ``<<expr=value>>`` step and
every final answer re-derived with exact arithmetic, family and agent spread, and duplicates by
a stricter measure than the stage's (exact normalised text, and word-5-gram Jaccard >= 0.8 over
all pairs). Prints a table; exits 1 if any answer fails to re-derive.

    python benchmarks/data_quality.py [--n 2000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tutorloop.config import load_params  # noqa: E402
from tutorloop.data.jsonl import read_jsonl  # noqa: E402
from tutorloop.eval.grading import extract_answer  # noqa: E402
from tutorloop.teachers import normalise  # noqa: E402
from tutorloop.teachers.arith import annotations, evaluate  # noqa: E402


def audit(records: list[dict], threshold: float = 0.8) -> dict:
    """Re-derivation failures, exact and near duplicates (all pairs), spread by family and agent."""
    wrong = []
    for r in records:
        ok = all(evaluate(e) == Fraction(v) for e, v in annotations(r["solution"]))
        ok = ok and extract_answer(r["solution"]) == r["answer"] and Fraction(r["answer"]) > 0
        if not ok:
            wrong.append(r.get("id"))
    keys = [normalise(r["question"]) for r in records]
    exact = len(keys) - len(set(keys))
    grams = []
    for k in keys:
        w = k.split()
        grams.append({tuple(w[i:i + 5]) for i in range(max(1, len(w) - 4))})
    order = sorted(range(len(grams)), key=lambda i: len(grams[i]))
    near = set()
    for a_pos, i in enumerate(order):  # Jaccard >= t needs |small| >= t * |large|: prune by size
        gi = grams[i]
        for j in order[a_pos + 1:]:
            gj = grams[j]
            if len(gi) < threshold * len(gj):
                break
            inter = len(gi & gj)
            if inter and inter / (len(gi) + len(gj) - inter) >= threshold:
                near.add(j)
    return {"n": len(records), "wrong": wrong, "exact_dups": exact, "near_dups": len(near),
            "dup_rate": (exact + len(near)) / max(1, len(records)),
            "families": Counter(r["family"] for r in records),
            "agents": Counter(r["provenance"]["agent_path"].split("/")[0] for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    from tutorloop.teachers.generation import generate_dataset as run

    cfg = load_params().generate
    cfg = cfg.model_copy(update={"n_sft": args.n, "teacher": cfg.teacher.model_copy(update={"kind": "procedural"})})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = run(cfg, Path(tmp) / "out", cache_dir=Path(tmp) / "cache", progress=False)
        seconds = time.perf_counter() - start
        records = read_jsonl(Path(tmp) / "out" / "sft.jsonl")
    a = audit(records)
    total = cfg.n_sft + cfg.n_practice + cfg.n_test
    print(f"generated {total} problems ({a['n']} sft) in {seconds:.1f} s = {total / seconds:.0f} problems/s")
    print(f"families: {len(a['families'])} (min {min(a['families'].values())}, max {max(a['families'].values())} "
          f"per family); agents: {dict(a['agents'])}")
    print(f"stage filters dropped: { {k: v for k, v in stats.items() if k.startswith('drop/')} }")
    print(f"audit: {len(a['wrong'])} answers fail to re-derive; {a['exact_dups']} exact + {a['near_dups']} near "
          f"duplicates (5-gram Jaccard >= 0.8) = {100 * a['dup_rate']:.2f}%")
    sys.exit(1 if a["wrong"] else 0)


if __name__ == "__main__":
    main()
