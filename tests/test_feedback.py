"""Orca-Math's pairing rules, proven on small hand-made tables."""

import pytest

from tutorloop.config import Feedback
from tutorloop.data.preferences import build_pairs
from tutorloop.eval.feedback import judge


def problem(pid, answer="10"):
    return {"id": pid, "question": f"question {pid}", "solution": f"teacher solution {pid}\n#### {answer}",
            "answer": answer}


def fb(pid, text, correct):
    return {"problem_id": pid, "completion": text, "correct": correct, "extracted": None}


CFG = Feedback(max_pairs_per_problem=100, borrowed_negatives=4, seed=0)


def test_mixed_problem_pairs_positives_with_negatives():
    probs = [problem("a")]
    table = [fb("a", "right 1", True), fb("a", "wrong 1", False), fb("a", "wrong 2", False),
             fb("a", "right 2", True)]
    pairs, stats = build_pairs(probs, table, CFG)
    # positives: teacher + 2 correct; negatives: 2 wrong -> 3 x 2
    assert len(pairs) == 6
    assert {p["chosen"] for p in pairs} == {"teacher solution a\n#### 10", "right 1", "right 2"}
    assert {p["rejected"] for p in pairs} == {"wrong 1", "wrong 2"}
    assert all(p["rejected_source"] == "own" for p in pairs)
    assert stats["negatives_borrowed"] == 0
    assert stats["practice_pass_rate"] == 0.5


def test_all_correct_borrows_one_negative_from_each_of_four_others():
    probs = [problem(x) for x in "abcdef"]
    table = [fb("a", f"right {k}", True) for k in range(4)]
    for other in "bcdef":
        table += [fb(other, f"wrong {other}", False)]
    pairs, stats = build_pairs(probs, table, CFG)
    a_pairs = [p for p in pairs if p["problem_id"] == "a"]
    donors = {p["rejected_source"] for p in a_pairs}
    assert len(donors) == 4 and all(d.startswith("borrowed:") for d in donors)
    assert "borrowed:a" not in donors
    # 5 positives (teacher + 4 correct) x 4 borrowed negatives
    assert len(a_pairs) == 20
    assert stats["negatives_borrowed"] == 4 and stats["problems_all_correct"] == 1


def test_all_wrong_uses_the_teacher_solution_as_the_only_positive():
    probs = [problem("a")]
    table = [fb("a", f"wrong {k}", False) for k in range(4)]
    pairs, stats = build_pairs(probs, table, CFG)
    assert len(pairs) == 4
    assert all(p["chosen_source"] == "teacher" for p in pairs)
    assert stats["problems_all_wrong"] == 1


def test_cap_and_duplicates():
    probs = [problem("a")]
    table = [fb("a", "right", True), fb("a", "right", True), fb("a", "wrong", False), fb("a", "wrong", False),
             fb("a", "other wrong", False)]
    pairs, _ = build_pairs(probs, table, Feedback(max_pairs_per_problem=100, borrowed_negatives=4, seed=0))
    assert len(pairs) == 4  # (teacher, right) x (wrong, other wrong): duplicates folded
    capped, _ = build_pairs(probs, table, Feedback(max_pairs_per_problem=3, borrowed_negatives=4, seed=0))
    assert len(capped) == 3
    again, _ = build_pairs(probs, table, Feedback(max_pairs_per_problem=3, borrowed_negatives=4, seed=0))
    assert capped == again  # seeded


def test_round_cap_keeps_student_chosen_pairs_first():
    probs = [problem(x) for x in "abcd"]
    table = [fb("a", "right a", True), fb("a", "wrong a", False)]     # 1 student-chosen + 1 teacher
    for other in "bcd":                                               # 4 teacher-chosen each
        table += [fb(other, f"wrong {other} {k}", False) for k in range(4)]
    full, stats = build_pairs(probs, table, CFG)
    assert stats["pairs"] == 14 and stats["pairs_student_chosen"] == 1
    capped, stats = build_pairs(probs, table, Feedback(max_pairs_per_problem=100, max_pairs=5, seed=0))
    assert len(capped) == 5 and stats["pairs_before_cap"] == 14
    assert [p["chosen"] for p in capped].count("right a") == 1       # the student's own positive survives
    assert stats["pairs_student_chosen"] == 1 and stats["pairs_teacher_chosen"] == 4
    assert stats["student_to_teacher_chosen"] == 0.25
    assert all(p in full for p in capped)                              # a subset, in the original order
    assert capped == sorted(capped, key=full.index)


def test_judge_uses_the_shared_grader():
    rows = judge([problem("a", "12")], [{"problem_id": "a", "sample": 0, "completion": "so #### 12"},
                                        {"problem_id": "a", "sample": 1, "completion": "The answer is 13."}])
    assert [r["correct"] for r in rows] == [True, False]
    assert rows[1]["extracted"] == "13"
    assert rows[0]["teacher_solution"].startswith("teacher solution")


# --- KTO's unpaired view of the same table --------------------------------------------------

def test_unpaired_table_follows_the_same_rules():
    from tutorloop.data.preferences import build_unpaired

    probs = [problem(x) for x in "abcdef"]
    table = [fb("a", f"right {k}", True) for k in range(4)]  # all correct: borrows negatives
    table += [fb("b", "right b", True), fb("b", "wrong b", False), fb("b", "wrong b", False)]
    for other in "cdef":
        table += [fb(other, f"wrong {other}", False)]
    pairs, _ = build_pairs(probs, table, CFG)
    rows = build_unpaired(probs, table, pairs)
    a = [r for r in rows if r["problem_id"] == "a"]
    assert sum(r["label"] for r in a) == 5  # teacher + 4 correct samples
    assert {r["source"] for r in a if not r["label"]} == {p["rejected_source"] for p in pairs if p["problem_id"] == "a"}
    b = [r for r in rows if r["problem_id"] == "b"]
    assert [(r["completion"], r["label"]) for r in b] == [("teacher solution b\n#### 10", True), ("right b", True),
                                                          ("wrong b", False)]  # duplicates folded
    c = [r for r in rows if r["problem_id"] == "c"]
    assert [(r["source"], r["label"]) for r in c] == [("teacher", True), ("own", False)]


def test_unpaired_cap_keeps_the_students_positives_then_the_pairs_problems():
    from tutorloop.data.preferences import build_unpaired

    probs = [problem(x) for x in "abcdefgh"]
    table = [fb("a", "right a", True), fb("a", "wrong a", False)]
    for other in "bcdefgh":
        table += [fb(other, f"wrong {other} {k}", False) for k in range(4)]
    pairs = [{"problem_id": "c", "rejected": "wrong c 0", "rejected_source": "own"}]
    full = build_unpaired(probs, table, pairs)
    assert len(full) == 3 + 7 * 5
    rows = build_unpaired(probs, table, pairs, max_rows=8, seed=3)
    assert len(rows) == 8
    assert ("right a", True) in [(r["completion"], r["label"]) for r in rows]   # the student's own first
    assert sum(r["problem_id"] == "c" for r in rows) == 5                        # then the pairs' problem
    assert rows == [r for r in full if r in rows]                                # table order kept
    assert rows == build_unpaired(probs, table, pairs, max_rows=8, seed=3)       # seeded
    assert build_unpaired(probs, table, pairs, max_rows=100) == full


# --- the optional LLM judge -----------------------------------------------------------------

class _JudgeModel:
    """A deterministic judge *model* for the control flow (real HTTP in test_teacher_http.py):
    says correct iff the student's text contains the reference's final number."""

    kind, model = "scripted", "judge-1"

    def __init__(self):
        self.calls = 0

    def __call__(self, messages, sampling, sample=0):
        self.calls += 1
        user = messages[1]["content"]
        ref = user.split("Reference solution:\n")[1].split("#### ")[1].split()[0]
        student = user.split("Student solution:\n")[1]
        return '{"correct": %s}' % ("true" if ref in student else "false")


def test_llm_judge_fallback_decides_only_unreadable_samples():
    from tutorloop.config import Judge
    from tutorloop.teachers.judge import llm_judge

    probs = [problem("a", "12")]
    rows = judge(probs, [{"problem_id": "a", "sample": 0, "completion": "#### 12"},
                         {"problem_id": "a", "sample": 1, "completion": "twelve, i.e. 12 apples and some"},
                         {"problem_id": "a", "sample": 2, "completion": "no idea"}])
    rows[1]["extracted"] = None  # as if the grader could not read it
    model = _JudgeModel()
    stats = llm_judge(rows, probs, Judge(mode="fallback", model="m"), model)
    assert model.calls == 2 and stats["judge_decided"] == 2
    assert [r["correct"] for r in rows] == [True, True, False]


def test_llm_judge_double_check_logs_disagreement():
    from tutorloop.config import Judge
    from tutorloop.teachers.judge import llm_judge

    probs = [problem("a", "12")]
    rows = judge(probs, [{"problem_id": "a", "sample": i, "completion": c}
                         for i, c in enumerate(["#### 12", "#### 13", "12 is wrong, #### 13", "#### 12.0"])])
    before = [r["correct"] for r in rows]
    stats = llm_judge(rows, probs, Judge(mode="double_check", model="m"), _JudgeModel())
    assert [r["correct"] for r in rows] == before  # the exact grader stands where it read an answer
    assert stats["judge_calls"] == 4 and stats["judge_disagreement_rate"] == 0.25  # "12 is wrong, #### 13"


def test_judge_disagreement_compares_like_with_like():
    """A right answer stated without a marker is strict-negative but right: a judge that says
    right agrees with the grader; only a verdict on the answer itself can disagree."""
    from tutorloop.config import Judge
    from tutorloop.teachers.judge import llm_judge

    probs = [problem("a", "12")]
    rows = judge(probs, [{"problem_id": "a", "sample": i, "completion": c}
                         for i, c in enumerate(["so she has 12 apples", "#### 12", "so 13 apples"])])
    assert [(r["correct"], r["correct_lenient"]) for r in rows] == [(False, True), (True, True), (False, False)]
    stats = llm_judge(rows, probs, Judge(mode="double_check", model="m"), _JudgeModel())
    assert stats["judge_disagreement_rate"] == 0.0


def test_labels_are_strict_by_default_an_unstated_answer_is_a_negative(tmp_path):
    """A sample that never states its answer (only the lenient last-number fallback reads the
    right number) is a negative under the default labels, and a positive only with `lenient`."""
    from components.feedback import run
    from tutorloop.data.jsonl import read_jsonl, write_jsonl

    probs = [problem("a", "18")]
    samples = [{"problem_id": "a", "sample": 0, "completion": "6 * 3 = 18 apples, then she"},
               {"problem_id": "a", "sample": 1, "completion": "6 * 3 = 18\n#### 18"},
               {"problem_id": "a", "sample": 2, "completion": "#### 17"}]
    assert Feedback().labels == "strict"
    rows = judge(probs, samples)
    assert [r["correct"] for r in rows] == [False, True, False]
    assert [r["correct_lenient"] for r in rows] == [True, True, False]
    assert [r["correct"] for r in judge(probs, samples, strict=False)] == [True, True, False]
    write_jsonl(tmp_path / "problems.jsonl", probs)
    write_jsonl(tmp_path / "round" / "samples.jsonl", samples)
    stats = run(CFG, tmp_path / "problems.jsonl", tmp_path / "round")
    pairs = read_jsonl(tmp_path / "round" / "pairs.jsonl")
    assert "6 * 3 = 18 apples, then she" in {p["rejected"] for p in pairs}
    assert "6 * 3 = 18 apples, then she" not in {p["chosen"] for p in pairs}
    assert stats["practice_pass_rate"] == 1 / 3 and stats["practice_pass_rate_lenient"] == 2 / 3
    lenient = run(CFG.model_copy(update={"labels": "lenient"}), tmp_path / "problems.jsonl", tmp_path / "round")
    assert lenient["practice_pass_rate"] == 2 / 3
    assert "6 * 3 = 18 apples, then she" in {p["chosen"] for p in read_jsonl(tmp_path / "round" / "pairs.jsonl")}


# --- RFT: the student's own distinct, strictly correct solutions ------------------------------

def test_equations_are_the_reasoning_path():
    from tutorloop.data.preferences import equations

    a = "She buys 3*4 = <<3*4=12>>12 apples, then 12+5 = <<12+5=17>>17.\n#### 17"
    b = "3 bags of 4: <<3 * 4 = 12>>12. With 5 more: <<12 + 5=17>>17 apples. The answer is 17."
    assert equations(a) == equations(b) == ("3*4=12", "12+5=17")
    assert equations("Each costs $1,200 x 2 = $2,400 so #### 2400") == ("1200*2=2400",)
    assert equations("It is seventeen. #### 17") == ()
    assert equations(a) != equations("<<4*3=12>>12 then <<12+5=17>>17")   # another order is another path


def test_rft_keeps_distinct_strictly_correct_solutions_mixed_with_the_teachers():
    from tutorloop.data.preferences import build_rft

    probs = [problem("a", "17"), problem("b", "8")]
    same_path = ["<<3*4=12>>12 then <<12+5=17>>17. #### 17", "First <<3*4=12>>12, add five: <<12+5=17>>17\n#### 17"]
    other_path = "<<5+12=17>>17\n#### 17"
    unstated = "<<3*4=12>>12 and <<12+5=17>>17 apples"                  # right number, no final answer
    samples = [{"problem_id": "a", "sample": i, "completion": c}
               for i, c in enumerate(same_path + [other_path, unstated, "#### 16"])]
    samples += [{"problem_id": "b", "sample": 0, "completion": "#### 9"}]
    for lenient in (False, True):   # strictness holds whatever feedback.labels says
        rows, stats = build_rft(probs, judge(probs, samples, strict=not lenient))
        student = [r["solution"] for r in rows if r["source"] == "student"]
        assert student == [same_path[0], other_path]                     # one per path, in sample order
        assert [r["problem_id"] for r in rows if r["source"] == "teacher"] == ["a", "b"]
        assert all(r["solution"] == next(p["solution"] for p in probs if p["id"] == r["problem_id"])
                   for r in rows if r["source"] == "teacher")
        assert stats == {"rft_rows": 4, "rft_student_solutions": 2, "rft_strict_correct_samples": 3,
                         "rft_problems_with_student_solution": 1, "rft_student_share": 0.5}
    # what a round trains on (rounds.N.preference.rft_rows): teacher-only is the control
    from tutorloop.data.preferences import select_rft

    alone = select_rft(build_rft(probs, judge(probs, samples))[0], "student")
    assert [r["source"] for r in alone] == ["student", "student"]
    assert select_rft(rows, "both") == rows
    assert [r["solution"] for r in select_rft(rows, "student")] == [same_path[0], other_path]
    assert [r["problem_id"] for r in select_rft(rows, "teacher")] == ["a", "b"]
    assert all(r["source"] == "teacher" for r in select_rft(rows, "teacher"))


def test_failures_weighting_spends_the_rounds_rows_where_the_judge_found_errors():
    from tutorloop.data.preferences import build_rft, select_rft, weigh_rft

    probs = [problem("easy", "5"), problem("mixed", "5"), problem("hard", "5")]
    right, wrong = "<<2+3=5>>5\n#### 5", "<<2+2=4>>4\n#### 4"
    samples = [{"problem_id": p, "sample": i, "completion": c} for p, texts in
               {"easy": [right] * 4, "mixed": [right, wrong, wrong, right], "hard": [wrong] * 4}.items()
               for i, c in enumerate(texts)]
    rows, _ = build_rft(probs, judge(probs, samples))
    assert {r["problem_id"]: r["wrong"] for r in rows if r["source"] == "teacher"} == {"easy": 0, "mixed": 2, "hard": 4}
    assert weigh_rft(rows, "uniform") == rows
    got = weigh_rft(rows, "failures")
    # the teacher's solution once per wrong sample, the student's solution once, the always-solved problem gone
    assert [(r["problem_id"], r["source"]) for r in got] == [("mixed", "student")] + [("mixed", "teacher")] * 2 \
        + [("hard", "teacher")] * 4
    assert [r["problem_id"] for r in select_rft(got, "student")] == ["mixed"]
    with pytest.raises(ValueError, match="re-run the feedback stage"):
        weigh_rft([{k: v for k, v in r.items() if k != "wrong"} for r in rows], "failures")


def test_control_rows_are_the_teachers_repeated_to_the_rounds_count():
    from tutorloop.data.preferences import control_rows

    rows = [{"problem_id": f"p{i}", "solution": f"s{i}", "source": "teacher"} for i in range(3)]
    rows += [{"problem_id": "p0", "solution": "mine", "source": "student"}] * 4
    got = control_rows(rows, 7, seed=1)
    assert len(got) == 7 and all(r["source"] == "teacher" for r in got)
    assert sorted(r["problem_id"] for r in got[:3]) == ["p0", "p1", "p2"]    # every solution once before any twice
    assert got == control_rows(rows, 7, seed=1)                                # seeded
    assert any(control_rows(rows, 3, seed=s) != control_rows(rows, 3, seed=1) for s in range(2, 9))
    assert control_rows(rows, 0, seed=1) == [] and control_rows(rows[3:], 5, seed=1) == []


def test_a_weighted_rounds_control_takes_as_many_rows_as_the_round(tmp_path):
    """control@k trains on as many rows as its round: under `rft_weight: failures` that is the
    weighted count, not rft.jsonl's."""
    from tutorloop.config.schema import RftRound
    from tutorloop.data.jsonl import write_jsonl
    from tutorloop.data.preferences import build_rft
    from tutorloop.train.preference import round_rows

    probs = [problem("easy", "5"), problem("hard", "5")]
    samples = [{"problem_id": p, "sample": i, "completion": c} for p, c in
               [("easy", "#### 5"), ("easy", "#### 5"), ("hard", "#### 4"), ("hard", "#### 6")] for i in (0,)]
    write_jsonl(tmp_path / "rft.jsonl", build_rft(probs, judge(probs, samples))[0])
    uniform = RftRound(method="rft", learning_rate=1e-4, seed=1)
    assert round_rows(tmp_path, uniform) == 3                                    # easy: own + teacher; hard: teacher
    assert round_rows(tmp_path, uniform.model_copy(update={"rft_weight": "failures"})) == 2   # hard's teacher x 2
    assert round_rows(tmp_path, uniform.model_copy(update={"rft_rows": "teacher"})) == 2
