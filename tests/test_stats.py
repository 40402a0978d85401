"""The statistics behind promotion and the reported intervals, pinned against scipy."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tutorloop.eval.stats import mcnemar_p, wilson

scipy_stats = pytest.importorskip("scipy.stats")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_is_scipys_exact_one_sided_binomial_test(b, c):
    want = 1.0 if b + c == 0 else scipy_stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue
    assert mcnemar_p(b, c) == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_mcnemar_known_values():
    assert mcnemar_p(0, 5) == 1 / 32 and mcnemar_p(2, 8) == 56 / 1024 and mcnemar_p(5, 5) == 638 / 1024


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_is_scipys_wilson_interval(kn):
    k, n = kn
    z = scipy_stats.norm.ppf(0.975)
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n, z=z) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-4)  # z = 1.96, as reported


def test_wilson_edges():
    assert wilson(0, 0) == (0.0, 0.0)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35  # no zero-width interval at 0%, unlike Wald


def test_pass_at_k_by_hand():
    from tutorloop.eval.stats import mean_pass_at_k, pass_at_k

    assert pass_at_k(4, 1, 1) == 0.25 and pass_at_k(4, 1, 2) == 0.5         # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)                          # 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 1, 16) == 1.0 and pass_at_k(4, 2, 3) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)
    assert mean_pass_at_k([(4, 1), (4, 0), (8, 8)], [1, 4, 16]) == {1: pytest.approx(1.25 / 3), 4: pytest.approx(2 / 3)}


def test_pooled_sign_test_averages_seeds_per_problem_and_counts_problems():
    from tutorloop.eval.stats import mcnemar_p, pooled_sign_test

    sft = {f"q{i}": i < 40 for i in range(100)}
    # three seeds of a round: each solves SFT's 40 plus 10 more, the extra ten overlapping in part
    arm = [{f"q{i}": i < 40 or 40 + 5 * s <= i < 50 + 5 * s for i in range(100)} for s in range(3)]
    res = pooled_sign_test([sft] * 3, arm)
    assert res["n"] == 100 and res["seeds"] == 3
    assert res["ahead"] == 20 and res["behind"] == 0          # q40..q59 ahead in at least one seed
    assert res["arm_accuracy"] == pytest.approx(0.5) and res["baseline_accuracy"] == pytest.approx(0.4)
    assert res["mean_difference"] == pytest.approx(0.1)
    assert res["p"] == pytest.approx(mcnemar_p(0, 20))
    # a problem won in one seed and lost in two counts once, behind
    a = [{"x": True, "y": True}, {"x": False, "y": True}, {"x": False, "y": True}]
    b = [{"x": False, "y": True}, {"x": True, "y": True}, {"x": True, "y": True}]
    assert pooled_sign_test(b, a)["behind"] == 1 and pooled_sign_test(b, a)["ahead"] == 0
    with pytest.raises(ValueError, match="one baseline run per arm run"):
        pooled_sign_test([sft], arm)
    with pytest.raises(ValueError, match="share no problem"):
        pooled_sign_test([{"a": True}], [{"b": True}])
