"""Where practice carries signal: mixed-group shares, predicted pass rates and the p(1 - p) draw
(tutorloop/eval/signal.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from tutorloop.eval.signal import (
    add_round,
    choose,
    empty_history,
    group_key,
    mixed_probability,
    predicted,
    signal_stats,
)


def _verdicts(pid: str, right: list[bool], texts: list[str] | None = None) -> list[dict]:
    texts = texts or [f"2+2 = <<2+2=4>>4 #### 4 ({i})" for i in range(len(right))]
    return [{"problem_id": pid, "sample": i, "correct": ok, "completion": t}
            for i, (ok, t) in enumerate(zip(right, texts))]


def test_mixed_probability_matches_the_issue_figures():
    assert mixed_probability(0.39, 4) == pytest.approx(0.84, abs=0.01)      # ASDiv after SFT
    assert mixed_probability(0.02, 4) == pytest.approx(0.078, abs=0.002)    # GSM8K's ~2%
    assert mixed_probability(0.0, 8) == 0.0 and mixed_probability(1.0, 8) == 0.0


def test_signal_stats_count_mixed_groups_and_distinct_correct_paths():
    feedback = (_verdicts("a", [True, False, True, False],
                          ["3*4 = <<3*4=12>>12 #### 12", "x", "4*3 = <<4*3=12>>12 #### 12", "y"])
                + _verdicts("b", [True, True, True, True], ["5+5 = <<5+5=10>>10 #### 10"] * 4)
                + _verdicts("c", [False] * 4))
    s = signal_stats(feedback)
    assert s["signal/mixed_group_share"] == pytest.approx(1 / 3)
    assert s["signal/all_right_share"] == pytest.approx(1 / 3)
    # a: two paths (3*4 and 4*3), b: one path written four times, c: none
    assert s["signal/distinct_correct_per_problem"] == pytest.approx(3 / 3)


def test_group_key_uses_family_type_and_grade():
    assert group_key({"family": "asdiv", "meta": {"type": "Ratio", "grade": 5}}) == "asdiv/Ratio/5"
    assert group_key({"family": "gsm8k"}) == "gsm8k" and group_key({}) == "all"


def test_predicted_pass_uses_own_samples_then_the_group_then_everything():
    seen = [{"id": f"add{i}", "family": "asdiv", "meta": {"type": "Addition", "grade": 1}} for i in range(5)]
    seen += [{"id": f"gcd{i}", "family": "asdiv", "meta": {"type": "GCD", "grade": 6}} for i in range(5)]
    feedback = [v for i in range(5) for v in _verdicts(f"add{i}", [True, True, True, False])]
    feedback += [v for i in range(5) for v in _verdicts(f"gcd{i}", [False] * 4)]
    new = [{"id": "add-new", "family": "asdiv", "meta": {"type": "Addition", "grade": 1}},
           {"id": "gcd-new", "family": "asdiv", "meta": {"type": "GCD", "grade": 6}},
           {"id": "lcm-new", "family": "asdiv", "meta": {"type": "LCM", "grade": 6}}]
    p = predicted(new + seen[:1], add_round(empty_history(), seen, feedback))
    assert 0.6 < p["add-new"] < 0.75                      # the Addition group's ~3/4, shrunk a little
    assert p["gcd-new"] < 0.1                             # GCD: never solved
    assert 0.3 < p["lcm-new"] < 0.45                      # unseen group: the overall rate (15/40)
    assert p["add0"] == pytest.approx(p["add-new"] * 0.5 + 0.75 * 0.5)   # own 3/4 weighs as much as the prior


def test_choose_draws_by_p_times_one_minus_p_seeded_and_in_order():
    problems = [{"id": f"p{i}"} for i in range(40)]
    predicted = {f"p{i}": (0.5 if i < 20 else 0.01) for i in range(40)}
    picks = Counter()
    for seed in range(200):
        chosen = choose(problems, predicted, 10, seed)
        assert len(chosen) == 10 and chosen == sorted(chosen, key=lambda p: int(p["id"][1:]))
        picks.update(int(p["id"][1:]) < 20 for p in chosen)
    assert picks[True] > 0.9 * picks.total()              # p(1-p): 0.25 vs 0.0099
    assert choose(problems, predicted, 10, 3) == choose(problems, predicted, 10, 3)
    assert choose(problems, predicted, 10, 3) != choose(problems, predicted, 10, 4)
    assert choose(problems, predicted, 50, 0) == problems


def test_round_problems_slice_or_draw_where_the_history_predicts_mixed_groups():
    from tutorloop.eval.signal import add_round, empty_history, round_problems

    pool = [{"id": f"e{i}", "family": "asdiv", "meta": {"type": "Addition"}} for i in range(30)]
    pool += [{"id": f"h{i}", "family": "asdiv", "meta": {"type": "GCD"}} for i in range(30)]
    sliced, info = round_problems(pool, 5, 10, "all", empty_history(), seed=1, k=4)
    assert sliced == pool[5:15] and info["pool"] == 55 and info["select"] == "all"
    # nothing seen yet: a uniform draw of `limit` from the offset on, seeded
    drawn, info = round_problems(pool, 5, 10, "signal", empty_history(), seed=1, k=4)
    assert len(drawn) == 10 and all(p in pool[5:] for p in drawn) and info["history_samples"] == 0
    assert drawn == round_problems(pool, 5, 10, "signal", empty_history(), seed=1, k=4)[0]
    # the earlier round: Addition right half the time (mixed groups), GCD never (no signal)
    seen = pool[:4] + pool[30:34]
    feedback = [v for p in seen[:4] for v in _verdicts(p["id"], [True, False, True, False])]
    feedback += [v for p in seen[4:] for v in _verdicts(p["id"], [False] * 4)]
    history = add_round(empty_history(), seen, feedback)
    picked = Counter()
    for seed in range(30):
        drawn, info = round_problems(pool, 0, 10, "signal", history, seed=seed, k=4)
        picked.update(p["meta"]["type"] for p in drawn)
    assert picked["Addition"] > 2 * picked["GCD"]
    assert info["history_samples"] == 32
    # the draw expects more mixed groups than the slice (which is Addition and GCD half and half)
    _, plain = round_problems(pool[:5] + pool[30:35], 0, 10, "all", history, seed=0, k=4)
    assert info["predicted_mixed_share"] > plain["predicted_mixed_share"] + 0.1


def test_history_travels_beside_the_practice_set(tmp_path):
    import json

    from tutorloop.eval.signal import (
        add_round,
        empty_history,
        history_path,
        read_history,
    )

    assert history_path(tmp_path / "after-1.jsonl") == tmp_path / "after-1.history.json"
    assert read_history(tmp_path / "none.json") == empty_history()
    h = add_round(empty_history(), [{"id": "a", "family": "f"}], _verdicts("a", [True, False]))
    (tmp_path / "h.json").write_text(json.dumps(h))
    again = add_round(read_history(tmp_path / "h.json"), [{"id": "a", "family": "f"}], _verdicts("a", [True]))
    assert again == {"problems": {"a": [2, 3]}, "groups": {"f": [2, 3]}} and h["problems"]["a"] == [1, 2]
