"""Stage `feedback@r`: judge every practice sample and build preference pairs (Orca-Math rules).

Judge: `grading.grade` against the teacher's answer — the same function `evaluate` uses. Labels
are strict by default (`feedback.labels`): a sample is correct only if it states its answer with a
final-answer marker, so an unfinished solution that happens to contain the right number is never
a positive; `correct_lenient` keeps the lenient verdict beside it, and both pass rates are logged.

Pairs, per problem (Orca-Math §4):
- positives = the student's correct samples + the teacher's solution (always positive);
- negatives = the student's wrong samples; a problem with none borrows one negative from each of
  `borrowed_negatives` other problems (seeded choice);
- pairs = positives x negatives (duplicated texts folded), at most `max_pairs_per_problem`
  (a seeded sample of the product), and at most `max_pairs` in the round: student-chosen pairs
  are kept first, so a larger practice set buys more of the student's own positives rather than
  more DPO minutes. The student-/teacher-chosen ratio is logged.

Unpaired (KTO): the same table as desirable (positives) and undesirable (negatives, borrowed
ones included) examples, each text once per problem — unpaired.jsonl. With `max_pairs` set it is
capped at 2 x max_pairs rows, the texts a DPO round on the capped pairs sees, so DPO and KTO are
compared on one budget: the student's own correct samples first, then rows of the problems the
pairs train on, then the rest (seeded). Uncapped, a round of 300 problems x 4 samples is ~1,500
rows: ~7x the DPO round's minutes.

Optional LLM judge (`feedback.judge`, Orca-Math used GPT-4 as an exact-match judge): in
`fallback` mode it decides only samples the deterministic grader cannot read; in `double_check`
mode it sees every sample, the deterministic verdict stands where an answer was read, and the
share of disagreements is logged (a drifting grader or a sloppy judge shows up there).

Outputs: feedback.jsonl (every sample, its extracted answer and verdict(s), with the teacher's
solution), pairs.jsonl, unpaired.jsonl, and the round's feedback metrics.

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


def judge(problems: list[dict], samples: list[dict], strict: bool = True) -> list[dict]:
    """One feedback row per sample: extracted answer and verdict against the teacher's answer
    (`correct` is the strict verdict unless strict=False; `correct_lenient` is always lenient)."""
    by_id = {p["id"]: p for p in problems}
    rows = []
    for s in samples:
        p = by_id.get(s["problem_id"])
        if p is None:
            raise ValueError(f"sample refers to unknown problem {s['problem_id']!r}")
        g = grade(s["completion"], p["answer"])
        rows.append({"problem_id": s["problem_id"], "sample": s["sample"], "completion": s["completion"],
                     "extracted": g.extracted, "correct": g.strict if strict else g.correct,
                     "correct_lenient": g.correct, "reference": p["answer"],
                     "teacher_solution": p["solution"]})
    return rows


def llm_judge(rows: list[dict], problems: list[dict], cfg, chat=None, device: str = "auto") -> dict:
    """Consult the LLM judge per `cfg.mode`; updates rows in place, returns judge stats."""
    from concurrent.futures import ThreadPoolExecutor

    from components.teachers.instruct import BadReply, JudgeReply, parse_json, prompt
    from components.teachers.llm import Sampling, make_chat

    if cfg.mode == "none":
        return {}
    chat = chat or make_chat(cfg, cfg.cache_dir, device)
    by_id = {p["id"]: p for p in problems}
    todo = [r for r in rows if cfg.mode == "double_check" or r["extracted"] is None]
    system = prompt("judge")

    def ask(r: dict) -> bool | None:
        p = by_id[r["problem_id"]]
        user = (f"Problem:\n{p['question']}\n\nReference solution:\n{p['solution']}\n\n"
                f"Student solution:\n{r['completion']}")
        reply = chat([{"role": "system", "content": system}, {"role": "user", "content": user}],
                     Sampling(temperature=0.0, top_p=1.0, max_tokens=64, seed=0, json_mode=True))
        try:
            return parse_json(reply, JudgeReply).correct
        except BadReply:
            return None

    pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="judge")
    try:
        verdicts = list(pool.map(ask, todo))
    except BaseException:
        # Not `with`: its exit would wait for every queued judge call before a SIGTERM/Ctrl-C
        # (or the first failure) gets out; drop the queue instead.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    decided = disagree = unparsed = 0
    for r, v in zip(todo, verdicts):
        r["judge"] = v
        if v is None:
            unparsed += 1
        elif r["extracted"] is None:
            r["correct"] = v  # the deterministic grader had nothing to go on: the judge decides
            decided += 1
        elif v != r["correct"]:
            disagree += 1
    checked = sum(1 for r, v in zip(todo, verdicts) if v is not None and r["extracted"] is not None)
    return {"judge_calls": len(todo), "judge_decided": decided, "judge_unparsed": unparsed,
            "judge_disagreement_rate": disagree / checked if checked else 0.0}


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
    capped_from = len(pairs)
    if cfg.max_pairs and len(pairs) > cfg.max_pairs:
        # The round's training budget: student-chosen pairs first (Orca-Math: the student's own
        # correct answers as positives are worth ~2 points), then teacher-chosen ones, seeded.
        student = [i for i, x in enumerate(pairs) if x["chosen_source"] == "student"]
        teacher = [i for i, x in enumerate(pairs) if x["chosen_source"] != "student"]
        keep = rng.sample(student, min(len(student), cfg.max_pairs))
        keep += rng.sample(teacher, cfg.max_pairs - len(keep))
        pairs = [pairs[i] for i in sorted(keep)]
    n = len(feedback)
    correct = sum(r["correct"] for r in feedback)
    solved_any = sum(1 for p in problems if pos[p["id"]])
    stats = {
        "samples": n, "practice_pass_rate": correct / n if n else 0.0,
        "unparsed_rate": sum(r["extracted"] is None for r in feedback) / n if n else 0.0,
        "problems": len(problems), "problems_all_correct": all_correct,
        "problems_all_wrong": len(problems) - solved_any,
        "pairs": len(pairs), "negatives_borrowed": borrowed,
        "pairs_before_cap": capped_from,
        "pairs_teacher_chosen": sum(x["chosen_source"] == "teacher" for x in pairs),
        "pairs_student_chosen": sum(x["chosen_source"] == "student" for x in pairs),
    }
    stats["student_to_teacher_chosen"] = stats["pairs_student_chosen"] / max(1, stats["pairs_teacher_chosen"])
    return pairs, stats


def build_unpaired(problems: list[dict], feedback: list[dict], pairs: list[dict], max_rows: int = 0,
                   seed: int = 0) -> list[dict]:
    """KTO's view of the same table: every positive desirable, every negative undesirable (the
    borrowed negatives of all-correct problems included, as in the pairs), each text once; at most
    `max_rows` (0 = all): student-desirable rows first, then the pairs' problems, seeded within."""
    rows = []
    good = defaultdict(list)
    for r in feedback:
        if r["correct"]:
            good[r["problem_id"]].append(r["completion"])
    bad = defaultdict(list)
    for x in pairs:
        bad[x["problem_id"]].append((x["rejected"], x["rejected_source"]))
    for r in feedback:  # own negatives that the pair cap left out are still undesirable
        if not r["correct"]:
            bad[r["problem_id"]].append((r["completion"], "own"))
    for p in problems:
        for text, src in _unique([(p["solution"], "teacher")] + [(t, "student") for t in good[p["id"]]],
                                 key=lambda x: x[0]):
            rows.append({"problem_id": p["id"], "question": p["question"], "completion": text, "label": True,
                         "source": src})
        for text, src in _unique(bad[p["id"]], key=lambda x: x[0]):
            rows.append({"problem_id": p["id"], "question": p["question"], "completion": text, "label": False,
                         "source": src})
    if max_rows and len(rows) > max_rows:
        rng = random.Random(seed)
        covered = {x["problem_id"] for x in pairs}
        rank = [(not (r["label"] and r["source"] == "student"), r["problem_id"] not in covered, rng.random())
                for r in rows]
        keep = sorted(sorted(range(len(rows)), key=rank.__getitem__)[:max_rows])
        rows = [rows[i] for i in keep]
    return rows


def run(cfg: Feedback, problems_file: Path, round_dir: Path, chat=None, device: str = "auto") -> dict:
    problems = read_jsonl(problems_file, required=("id", "question", "solution", "answer"))
    samples = read_jsonl(round_dir / "samples.jsonl", required=("problem_id", "sample", "completion"))
    ids = {s["problem_id"] for s in samples}
    problems = [p for p in problems if p["id"] in ids]  # practice.limit may have used a prefix
    feedback = judge(problems, samples, strict=cfg.labels == "strict")
    judge_stats = llm_judge(feedback, problems, cfg.judge, chat, device)
    pairs, stats = build_pairs(problems, feedback, cfg)
    if not pairs:
        raise RuntimeError("no preference pairs could be built (no negatives anywhere?)")
    unpaired = build_unpaired(problems, feedback, pairs, max_rows=2 * cfg.max_pairs, seed=cfg.seed)
    stats.update(judge_stats)
    stats["practice_pass_rate_lenient"] = sum(r["correct_lenient"] for r in feedback) / max(1, len(feedback))
    stats["problems_all_wrong_share"] = stats["problems_all_wrong"] / max(1, stats["problems"])
    stats["unpaired_desirable"] = sum(r["label"] for r in unpaired)
    stats["unpaired_undesirable"] = len(unpaired) - stats["unpaired_desirable"]
    write_jsonl(round_dir / "feedback.jsonl", feedback)
    write_jsonl(round_dir / "pairs.jsonl", pairs)
    write_jsonl(round_dir / "unpaired.jsonl", unpaired)
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
        log.metrics(run(params.feedback, args.problems, args.round_dir, device=params.runtime.device))
        log.artifact(args.round_dir / "feedback.jsonl", "feedback")
        log.artifact(args.round_dir / "pairs.jsonl", "feedback")
        log.artifact(args.round_dir / "unpaired.jsonl", "feedback")


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
