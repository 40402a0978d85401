"""Where a round's practice carries signal: mixed groups, predicted pass rates, weighted choice.

A problem's K samples teach both ways only when some are right and some wrong: with pass rate p
that happens with probability 1 - p^K - (1 - p)^K, so a problem the student never solves (or
always solves) gives a preference or RFT round nothing new (arXiv 2502.12272, 2504.03380:
practise where p is intermediate, weighted by p(1 - p)). This module measures that on a round's
verdicts (`signal_stats`), predicts each problem's pass rate for the next round from the
verdicts so far (`add_round`, `predicted`: the problem's own samples shrunk toward its group's rate, the
group being its family, ASDiv type and grade), and draws a round's problems with weight
p(1 - p) (`choose`). Pure functions over rows: the followup and practice stages call them; the
counts so far travel between rounds in a history file beside each practice set (`history_path`),
so a round's choice depends only on files DVC tracks.

    python -c "from tutorloop.eval.signal import mixed_probability; print(mixed_probability(0.39, 4))"
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from tutorloop.data.preferences import solution_path

# Pseudo-samples of the group's rate added to a problem's own K samples (and of the overall rate
# to a group's): a problem seen 4 times keeps half its own evidence; one never seen gets its
# group's rate, a group never seen the overall rate.
SHRINK = 4.0


def mixed_probability(p: float, k: int) -> float:
    """Chance that K samples at pass rate p hold both a right and a wrong answer."""
    return 1.0 - p ** k - (1.0 - p) ** k


def group_key(problem: dict) -> str:
    """The group a problem's pass rate is predicted by: family, then ASDiv's type and grade."""
    meta = problem.get("meta") or {}
    parts = [str(problem.get("family", "")), str(meta.get("type", "")), str(meta.get("grade", ""))]
    return "/".join(p for p in parts if p) or "all"


def _by_problem(feedback: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in feedback:
        out[r["problem_id"]].append(r)
    return out


def signal_stats(feedback: list[dict]) -> dict:
    """Of a round's verdicts: the share of problems whose K samples are mixed (both ways) or all
    right (feedback logs all wrong already), and the distinct correct solutions per problem."""
    groups = _by_problem(feedback)
    n = max(1, len(groups))
    mixed = right = distinct = 0
    for rows in groups.values():
        hits = [r for r in rows if r["correct"]]
        mixed += 0 < len(hits) < len(rows)
        right += len(hits) == len(rows)
        distinct += len({solution_path(r["completion"]) for r in hits})   # as RFT dedups them
    return {"signal/mixed_group_share": mixed / n, "signal/all_right_share": right / n,
            "signal/distinct_correct_per_problem": distinct / n}


def empty_history() -> dict:
    """What the rounds so far have seen: right/total samples per problem id and per group."""
    return {"problems": {}, "groups": {}}


def add_round(history: dict, problems: list[dict], feedback: list[dict]) -> dict:
    """`history` with one round's verdicts on `problems` counted in (a new dict; pure)."""
    out = {"problems": {k: list(v) for k, v in history["problems"].items()},
           "groups": {k: list(v) for k, v in history["groups"].items()}}
    key_of = {p["id"]: group_key(p) for p in problems}
    for pid, rows in _by_problem(feedback).items():
        right = sum(bool(r["correct"]) for r in rows)
        for table, key in ((out["problems"], pid), (out["groups"], key_of.get(pid, "all"))):
            counts = table.setdefault(key, [0, 0])
            counts[0] += right
            counts[1] += len(rows)
    return out


def predicted(problems: list[dict], history: dict) -> dict[str, float]:
    """Each problem's predicted pass rate: its own samples so far shrunk toward its group's rate,
    the group's rate shrunk toward the overall one (Laplace-smoothed: never exactly 0 or 1)."""
    groups = history["groups"]
    right, n = sum(r for r, _ in groups.values()), sum(k for _, k in groups.values())
    overall = (right + 1) / (n + 2)
    rate = {g: (r + SHRINK * overall) / (k + SHRINK) for g, (r, k) in groups.items()}
    out = {}
    for p in problems:
        prior = rate.get(group_key(p), overall)
        own_right, own_n = history["problems"].get(p["id"], (0, 0))
        out[p["id"]] = (own_right + SHRINK * prior) / (own_n + SHRINK)
    return out


def choose(problems: list[dict], predicted: dict[str, float], n: int, seed: int) -> list[dict]:
    """`n` of `problems` drawn without replacement with weight p(1 - p) (Efraimidis-Spirakis:
    key u^(1/w), the n largest), seeded; returned in their original order. A problem with no
    prediction weighs as one at p = 1/2."""
    if n >= len(problems):
        return list(problems)
    rng = random.Random(seed)
    keyed = []
    for i, p in enumerate(problems):
        q = predicted.get(p["id"], 0.5)
        w = max(q * (1.0 - q), 1e-9)
        keyed.append((rng.random() ** (1.0 / w), i))
    picked = sorted(i for _, i in sorted(keyed, reverse=True)[:n])
    return [problems[i] for i in picked]


# --- the practice stage's problems -------------------------------------------------------------

def history_path(practice_set: Path) -> Path:
    """Where the history travels beside a practice set (data/practice-sets/after-r.jsonl ->
    after-r.history.json): decontaminate writes round 0's (empty), followup@r round r's."""
    return practice_set.with_name(practice_set.stem + ".history.json")


def read_history(path: Path | None) -> dict:
    """A history file's counts; an empty history where there is none yet."""
    if path is None or not path.exists():
        return empty_history()
    data = json.loads(path.read_text())
    return {"problems": data.get("problems", {}), "groups": data.get("groups", {})}


def round_problems(pool: list[dict], offset: int, limit: int, select: str, history: dict, seed: int,
                   k: int) -> tuple[list[dict], dict]:
    """A round's practice problems from its source's `pool`, and what describes the choice.
    select `all`: the slice [offset, offset + limit); `signal`: `limit` problems from offset on,
    drawn with weight p(1 - p) on the pass rates `history` predicts (uniform where it has seen
    nothing: round 1)."""
    rest = pool[offset:]
    if select == "all":
        chosen = rest[:limit] if limit else rest
    else:
        chosen = choose(rest, predicted(rest, history), limit or len(rest), seed)
    p = predicted(chosen, history)
    described = {"pool": len(rest), "select": select, "history_samples": sum(n for _, n in history["groups"].values()),
                 "predicted_pass_mean": sum(p.values()) / max(1, len(p)),
                 "predicted_mixed_share": sum(mixed_probability(q, k) for q in p.values()) / max(1, len(p))}
    return chosen, described


def frontier(problems: list[dict], verdicts: list[dict]) -> set[str]:
    """The ids of the problems right in some but not all of their samples (`source: frontier`)."""
    groups = _by_problem(verdicts)
    return {p["id"] for p in problems
            if 0 < sum(bool(r["correct"]) for r in groups[p["id"]]) < len(groups[p["id"]])}
