"""Verdicts on practice samples: the one grading function (`grading.grade`, shared with
evaluation) against the teacher's answer.

Labels are strict by default (`feedback.labels`): a sample is correct only if it states its
answer with a final-answer marker, so an unfinished solution that happens to contain the right
number is never a positive; `correct_lenient` keeps the lenient verdict beside it.
"""

from __future__ import annotations

from tutorloop.eval.grading import grade


def judge(problems: list[dict], samples: list[dict], strict: bool = True) -> list[dict]:
    """One feedback row per sample: extracted answer and verdict against the teacher's answer
    (`correct` is the strict verdict unless strict=False; `correct_lenient` and `correct_strict`
    are always those)."""
    by_id = {p["id"]: p for p in problems}
    rows = []
    for s in samples:
        p = by_id.get(s["problem_id"])
        if p is None:
            raise ValueError(f"sample refers to unknown problem {s['problem_id']!r}")
        g = grade(s["completion"], p["answer"])
        rows.append({"problem_id": s["problem_id"], "sample": s["sample"], "completion": s["completion"],
                     "extracted": g.extracted, "correct": g.strict if strict else g.correct,
                     "correct_lenient": g.correct, "correct_strict": g.strict, "reference": p["answer"],
                     "teacher_solution": p["solution"]})
    return rows
