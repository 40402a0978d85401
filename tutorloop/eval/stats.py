"""Small statistics shared by stages: the Wilson interval (evaluate), exact McNemar (register)
and the unbiased pass@k estimator (evaluate, feedback).

A library module, not a stage: stages import it, so editing a stage never re-runs another one.
Pinned against scipy/statsmodels in tests/test_stats.py.

    python -c "from tutorloop.eval.stats import wilson; print(wilson(50, 100))"   # 95% interval of 50/100
"""

from __future__ import annotations

import math
from math import comb


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at 0% and 100%, unlike Wald)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(b: int, c: int) -> float:
    """Exact one-sided McNemar p-value that the new model is better.

    b = problems only the champion solves, c = problems only the new model solves. Under the null
    (equally good), each of the b + c discordant problems goes either way with p = 1/2, so
    p = P(Binomial(b + c, 1/2) >= c).
    """
    n = b + c
    return 1.0 if n == 0 else sum(comb(n, k) for k in range(c, n + 1)) / 2 ** n


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are correct (Chen et al. 2021,
    arXiv 2107.03374): 1 - C(n-c, k) / C(n, k), the chance that k of the n drawn without
    replacement hold at least one correct. Needs n >= k."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@{k} needs 0 < k <= n and 0 <= c <= n (n={n}, c={c})")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(counts: list[tuple[int, int]], ks) -> dict[int, float]:
    """Mean pass@k over problems, given (n samples, c correct) per problem, for each k <= every n."""
    if not counts:
        return {}
    smallest = min(n for n, _ in counts)
    return {k: sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in ks if k <= smallest}


def pooled_sign_test(baseline: list[dict[str, bool]], arm: list[dict[str, bool]]) -> dict:
    """One arm against a baseline over several seeds, pooled: seed i of `arm` is paired with seed i
    of `baseline` (one run repeated where the baseline is a single checkpoint, e.g. SFT), each
    problem's difference is averaged over the seeds, and an exact one-sided sign test counts the
    problems where the arm is ahead against those where it is behind. Problems are the independent
    units: a seed's runs on one problem are not, so summing discordant pairs over seeds as if they
    were would overstate the evidence. Only problems every run scored are used."""
    if not arm or len(arm) != len(baseline):
        raise ValueError(f"pooled_sign_test needs one baseline run per arm run (got {len(baseline)} and {len(arm)})")
    shared = set.intersection(*(set(r) for r in arm + baseline))
    if not shared:
        raise ValueError("the runs share no problem id: no paired comparison")
    diffs = {i: sum(a[i] - b[i] for a, b in zip(arm, baseline)) / len(arm) for i in shared}
    ahead, behind = sum(d > 0 for d in diffs.values()), sum(d < 0 for d in diffs.values())
    n = len(shared)
    return {"seeds": len(arm), "n": n, "ahead": ahead, "behind": behind,
            "arm_accuracy": sum(sum(r[i] for i in shared) for r in arm) / (n * len(arm)),
            "baseline_accuracy": sum(sum(r[i] for i in shared) for r in baseline) / (n * len(baseline)),
            "mean_difference": sum(diffs.values()) / n, "p": mcnemar_p(behind, ahead)}
