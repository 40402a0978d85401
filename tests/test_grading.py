"""The one grading function, on the formats students and teachers actually write."""

import pytest

from tutorloop.eval.grading import extract_answer, grade, reference_value


@pytest.mark.parametrize("text, expected", [
    ("so 48+24 = 72 clips\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("The answer is $18.", "18"),
    ("\\boxed{18}", "18"),
    ("$1,234.00", "1234"),
    ("18.0", "18"),
    ("$29.00", "29"),
    ("-5", "-5"),
    ("half of it: 3/4", "3/4"),
    ("\\frac{3}{4}", "3/4"),
    ("the discount is 25%", "25"),
    ("#### 56\nThe answer is: 98", "56"),  # GSM8K's marker wins over a later sentence
    ("I am not sure.", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_grade_compares_numbers_exactly():
    assert grade("#### 18.0", "18").correct
    assert grade("The answer is $1,234.", "1234").correct
    assert not grade("#### 17", "18").correct
    assert not grade("no idea", "18").correct
    assert grade("no idea", "18").extracted is None
    assert grade("#### 0.5", "1/2").correct


def test_reference_value_accepts_gsm8k_answers():
    assert reference_value("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == 72
    with pytest.raises(ValueError):
        reference_value("none")


def test_grade_is_safe_in_worker_threads(monkeypatch):
    """Prefect runs tasks in threads, where math-verify's signal timeout raises: in a worker thread
    grading must reach math-verify without one, and give the main thread's verdicts."""
    import math_verify

    texts = ["The answer is \\boxed{7}", "\\frac{14}{2}", "so it is $7.00", "seven", "#### 7", "7 or 8?"]
    in_main = [grade(t, "7") for t in texts]
    timeouts = []
    real = math_verify.parse

    def spy(text, parsing_timeout=5, **kw):
        timeouts.append(parsing_timeout)
        return real(text, parsing_timeout=parsing_timeout, **kw)

    monkeypatch.setattr(math_verify, "parse", spy)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(4) as pool:
        in_threads = list(pool.map(lambda t: grade(t, "7"), texts * 5))
    assert in_threads == in_main * 5
    assert timeouts and set(timeouts) == {None}     # math-verify was reached, without its alarm


@pytest.mark.parametrize("text, extracted, strict", [
    # the last statement of the answer counts, for #### as for \boxed and "answer is"
    ("#### 71\nWait, I made a mistake.\n#### 72", "72", True),
    ("\\boxed{71} no: \\boxed{72}", "72", True),
    # "answer is" must be followed by the number: this states none
    ("the answer is not 71 but 72", None, False),
    ("The answer is: **72**", "72", True),
    # a list is not one number with thousands separators
    ("1,2,72", "72", False),
    ("#### 1,234", "1234", False),
])
def test_the_answer_is_the_last_one_stated(text, extracted, strict):
    g = grade(text, "72")
    if extracted is not None:
        assert extract_answer(text) == extracted
    assert g.strict == strict
    assert grade("the answer is not 71 but 72", "71").strict is False     # never a strict 71 either
    assert extract_answer("1,2,3") not in ("123", "6/5")                   # neither 123 nor math-verify's 1.2


@pytest.mark.parametrize("text, lenient, strict", [
    ("so 48+24 = 72 clips\n#### 72", True, True),
    ("The answer is $72.", True, True),
    ("The final answer: 72", True, True),
    ("\\boxed{72}", True, True),
    ("48+24 = 72 clips", True, False),          # the right number, never stated as the answer
    ("72.0", True, False),
    ("#### 71\nThe answer is 72", False, False),  # the marker is the answer, and it is wrong
    ("no idea", False, False),
])
def test_strict_needs_a_final_answer_marker(text, lenient, strict):
    g = grade(text, "72")
    assert (g.correct, g.strict) == (lenient, strict)
