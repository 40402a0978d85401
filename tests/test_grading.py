"""The one grading function, on the formats students and teachers actually write."""

import threading

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


def test_grade_is_safe_in_worker_threads():
    """Prefect runs tasks in threads; math-verify's signal timeouts would raise there."""
    out = []
    t = threading.Thread(target=lambda: out.append(grade("The answer is \\boxed{7}", "7")))
    t.start()
    t.join()
    assert out and out[0].correct


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
