"""Stage `feedback@r`: judge every practice sample and build preference pairs (Orca-Math rules).

Judge: `grading.grade` against the teacher's answer — the same function `evaluate` uses.

Pairs, per problem (Orca-Math §4):
- positives = the student's correct samples + the teacher's solution (always positive);
- negatives = the student's wrong samples; a problem with none borrows one negative from each of
  `borrowed_negatives` other problems (seeded choice);
- pairs = positives x negatives (duplicated texts folded), at most `max_pairs_per_problem`
  (a seeded sample of the product).

Outputs: feedback.jsonl (every sample, its extracted answer and verdict, with the teacher's
solution), pairs.jsonl, and the round's feedback metrics.

    python -m components.feedback 1 data/generated/practice.jsonl data/round-1
"""

from __future__ import annotations

import argparse
import itertools
import random
from collections import defaultdict
from pathlib import Path

from components import tracking
from components.config import Feedback, load_params
from components.data import read_jsonl, write_json, write_jsonl
from components.grading import grade


def judge(problems: list[dict], samples: list[dict]) -> list[dict]:
    """One feedback row per sample: extracted answer and verdict against the teacher's answer."""
    by_id = {p["id"]: p for p in problems}
    rows = []
    for s in samples:
        p = by_id.get(s["problem_id"])
        if p is None:
            raise ValueError(f"sample refers to unknown problem {s['problem_id']!r}")
        g = grade(s["completion"], p["answer"])
        rows.append({"problem_id": s["problem_id"], "sample": s["sample"], "completion": s["completion"],
                     "extracted": g.extracted, "correct": g.correct, "reference": p["answer"],
                     "teacher_solution": p["solution"]})
    return rows


def _unique(items: list, key=lambda x: x) -> list:
    """Items in order with repeats (by `key`) dropped: a text sampled twice is one example."""
    seen: set = set()
    return [x for x in items if not (key(x) in seen or seen.add(key(x)))]


def build_pairs(problems: list[dict], feedback: list[dict], cfg: Feedback) -> tuple[list[dict], dict]:
    """Apply the Orca-Math pairing rules; returns (pairs, stats). Pure and seeded."""
    rng = random.Random(cfg.seed)
    pos: dict[str, list[tuple[str, str]]] = defaultdict(list)  # id -> [(text, source)]
    neg: dict[str, list[str]] = defaultdict(list)
    for row in feedback:
        if row["correct"]:
            pos[row["problem_id"]].append((row["completion"], "student"))
        else:
            neg[row["problem_id"]].append(row["completion"])
    pairs: list[dict] = []
    borrowed = all_correct = 0
    for p in problems:
        pid = p["id"]
        positives = _unique([(p["solution"], "teacher")] + pos[pid], key=lambda x: x[0])
        negatives = [(t, "own") for t in _unique(neg[pid])]
        if not negatives:
            all_correct += 1
            donors = sorted(q for q in neg if q != pid and neg[q])
            for donor in rng.sample(donors, min(cfg.borrowed_negatives, len(donors))):
                negatives.append((rng.choice(neg[donor]), f"borrowed:{donor}"))
            borrowed += len(negatives)
        product = list(itertools.product(positives, negatives))
        if len(product) > cfg.max_pairs_per_problem:
            product = rng.sample(product, cfg.max_pairs_per_problem)
        for (chosen, c_src), (rejected, r_src) in product:
            pairs.append({"problem_id": pid, "question": p["question"], "chosen": chosen,
                          "rejected": rejected, "chosen_source": c_src, "rejected_source": r_src})
    n = len(feedback)
    correct = sum(r["correct"] for r in feedback)
    solved_any = sum(1 for p in problems if pos[p["id"]])
    stats = {
        "samples": n, "practice_pass_rate": correct / n if n else 0.0,
        "unparsed_rate": sum(r["extracted"] is None for r in feedback) / n if n else 0.0,
        "problems": len(problems), "problems_all_correct": all_correct,
        "problems_all_wrong": len(problems) - solved_any,
        "pairs": len(pairs), "negatives_borrowed": borrowed,
        "pairs_teacher_chosen": sum(x["chosen_source"] == "teacher" for x in pairs),
    }
    return pairs, stats


def run(cfg: Feedback, problems_file: Path, round_dir: Path) -> dict:
    problems = read_jsonl(problems_file, required=("id", "question", "solution", "answer"))
    samples = read_jsonl(round_dir / "samples.jsonl", required=("problem_id", "sample", "completion"))
    ids = {s["problem_id"] for s in samples}
    problems = [p for p in problems if p["id"] in ids]  # practice.limit may have used a prefix
    feedback = judge(problems, samples)
    pairs, stats = build_pairs(problems, feedback, cfg)
    if not pairs:
        raise RuntimeError("no preference pairs could be built (no negatives anywhere?)")
    write_jsonl(round_dir / "feedback.jsonl", feedback)
    write_jsonl(round_dir / "pairs.jsonl", pairs)
    write_json(stats, round_dir / "feedback_metrics.json")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round")
    parser.add_argument("problems", type=Path)
    parser.add_argument("round_dir", type=Path)
    args = parser.parse_args()
    params = load_params()
    with tracking.stage_run("feedback", params.feedback.model_dump(), round_key=args.round) as log:
        log.metrics(run(params.feedback, args.problems, args.round_dir))
        log.artifact(args.round_dir / "feedback.jsonl", "feedback")
        log.artifact(args.round_dir / "pairs.jsonl", "feedback")


if __name__ == "__main__":
    main()
