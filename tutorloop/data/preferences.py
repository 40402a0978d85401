"""Preference data from judged samples, by Orca-Math's rules: DPO pairs and KTO's unpaired table.

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

RFT (rejection-sampling fine-tuning, arXiv 2308.01825; `rounds.N.preference.method: rft`):
the student's *strictly* correct samples (a stated final answer that is right, whatever
`feedback.labels` says), one per distinct reasoning path — samples are the same path when they
write the same sequence of equations (`equations`) — mixed with the teacher's solution of every
practice problem: rft.jsonl. Each teacher row carries `wrong`, how many of the problem's samples the
judge marked wrong, so a round can spend its rows where the student fails (`weigh_rft`).

Pure and seeded: the same feedback and config give the same pairs.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import defaultdict

from tutorloop.config import Feedback


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


_ANNOTATED = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
_EQUATION = re.compile(r"(-?[\d.,]+(?:\s*[-+*/x×]\s*-?[\d.,]+)+)\s*=\s*\$?(-?[\d.,]+)")


def equations(solution: str) -> tuple[str, ...]:
    """The sequence of equations a solution writes, normalised (no spaces, thousands commas or
    `$`; `x`/`×` as `*`): its calculator annotations `<<expr=value>>`, else the plain `a op b = c`
    it writes. Two solutions with the same sequence took the same path, whatever their words."""
    found = _ANNOTATED.findall(solution) or _EQUATION.findall(solution)

    def norm(t: str) -> str:
        return re.sub(r"[\s$,]", "", t).replace("×", "*").replace("x", "*")

    return tuple(f"{norm(a)}={norm(b)}" for a, b in found)


def solution_path(solution: str) -> tuple[str, ...]:
    """What makes two correct solutions the same one: their equations, or their whole text
    (whitespace-normalised) when they write none."""
    return equations(solution) or (" ".join(solution.split()),)


RFT_SOURCES = {"both": ("student", "teacher"), "student": ("student",), "teacher": ("teacher",)}


def select_rft(rows: list[dict], which: str) -> list[dict]:
    """The rft.jsonl rows a round trains on (`rounds.N.preference.rft_rows`): both sources, the
    student's solutions alone, or the teacher's alone — the control that says how much of a gain
    is the student's own signal rather than a second pass over the teacher's solutions."""
    return [r for r in rows if r["source"] in RFT_SOURCES[which]]


def weigh_rft(rows: list[dict], weight: str) -> list[dict]:
    """The rows a round trains on, weighted by the judge (`rounds.N.preference.rft_weight`):
    uniform = each row once; failures = a problem's teacher solution once per sample the judge
    marked wrong and its student solutions once, problems the student always solved dropped — the
    round spends its updates where practice found errors, which a teacher-only control (uniform
    over all the round's problems) cannot know; a problem with no samples counts as never wrong.
    Pure: the same rows give the same list, in order."""
    if weight == "uniform":
        return rows
    teacher = [r for r in rows if r["source"] == "teacher"]
    if any("wrong" not in r for r in teacher):
        raise ValueError("rft rows without `wrong` (written before rft_weight existed): re-run the feedback stage")
    wrong = {r["problem_id"]: r["wrong"] for r in teacher}
    out = []
    for r in rows:
        k = wrong.get(r["problem_id"], 0)
        out += [r] * (k if r["source"] == "teacher" else min(k, 1))
    return out


def build_rft(problems: list[dict], feedback: list[dict]) -> tuple[list[dict], dict]:
    """RFT's training rows: per problem, the distinct strictly correct student solutions (dedup by
    `equations`, or by the whole text when a solution writes none) and the teacher's solution,
    each row tagged with its `source` (`select_rft` picks what a round trains on) and the teacher's
    with `wrong`, the problem's samples the judge marked wrong (`weigh_rft`); (rows, stats).
    Pure: the same feedback gives the same rows."""
    kept: dict[str, list[str]] = defaultdict(list)
    paths: dict[str, set] = defaultdict(set)
    wrong: dict[str, int] = defaultdict(int)
    strict_right = 0
    for r in feedback:
        wrong[r["problem_id"]] += not r["correct"]
        if not r.get("correct_strict", r["correct"]):
            continue
        strict_right += 1
        path = solution_path(r["completion"])
        if path not in paths[r["problem_id"]]:
            paths[r["problem_id"]].add(path)
            kept[r["problem_id"]].append(r["completion"])
    rows = []
    for p in problems:
        rows += [{"problem_id": p["id"], "question": p["question"], "solution": t, "source": "student"}
                 for t in kept[p["id"]]]
        rows.append({"problem_id": p["id"], "question": p["question"], "solution": p["solution"],
                     "source": "teacher", "wrong": wrong[p["id"]]})
    student = sum(len(v) for v in kept.values())
    stats = {"rft_rows": len(rows), "rft_student_solutions": student, "rft_strict_correct_samples": strict_right,
             "rft_problems_with_student_solution": sum(1 for v in kept.values() if v),
             "rft_student_share": student / len(rows) if rows else 0.0}
    return rows, stats


def control_rows(rft_rows: list[dict], n: int, seed: int) -> list[dict]:
    """A control's training rows (control@k): the teacher's solutions of the round's problems
    (rft.jsonl's `teacher` rows), shuffled (seeded) and repeated to the `n` rows the round itself
    trains on, so the control takes as many examples and updates as the round, none of them the
    student's. Pure: the same rows, n and seed give the same list."""
    teacher = select_rft(rft_rows, "teacher")
    if not teacher or n < 1:
        return []
    order = teacher[:]
    random.Random(seed).shuffle(order)
    return [order[i % len(order)] for i in range(n)]
