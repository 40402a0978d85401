"""The one grading function: extract a final answer from a solution and judge it.

`feedback` (practice samples) and `evaluate` (held-out and GSM8K) both call `grade`, so a model
is never judged by one rule in training and another in evaluation (nanochat's tasks/gsm8k.py
does the same).

Order of extraction, and why:
1. ``#### N`` — GSM8K's own marker (the last one, as for every marker below). math-verify alone does not give it priority
   (``"#### 56\\nThe answer is: 98"`` parses as 98), so it is read first, by regex.
2. math-verify on the whole text — ``\\boxed{18}``, ``The answer is $18.``, ``$1,234.00``,
   fractions, LaTeX. Its signal-based timeout is used on the main thread only: off the main
   thread (Prefect task runners) it would raise.
3. The last number in the text, the classic GSM8K fallback.
Answers compare as exact rationals (`Fraction`), so ``18.0``, ``$18`` and ``18`` are equal
and no float tolerance is needed for grade-school arithmetic.

Strict and lenient: steps 2-3 read *some* number from a completion that never states a final
answer ("... so 18 apples are left" and then rambling), which inflates accuracy and puts unfinished
solutions on the positive side of preference pairs. `Grade.strict` is correct only when the
completion states its answer with a marker — ``#### N``, ``\boxed{N}`` or ``The (final) answer
is N`` — the format the prompt asks for. `evaluate` reports both (`strict_accuracy` beside
`accuracy`); `feedback` labels preference data strictly unless `feedback.labels: lenient`.

    python -c "from tutorloop.eval.grading import grade; print(grade('so 5*3 = 15. #### 15', '15'))"
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction

_MARKER = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
# "The answer is 18", "answer: $18", "final answer = **18**": the number must come first, so
# "the answer is not 72 but 73" states no answer (rather than a strict 72).
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|:|=)\s*:?\s*[$*\s]*(-?\d[^\n]*)", re.I)
# math-verify warns on every call made without its (thread-unsafe) timeouts; we call it that way
# on purpose, so its warning is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# Thousands separators only in groups of three ("1,234"): "1,2,3" is three numbers, not 123.
_INT = r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"
_NUMBER = re.compile(rf"-?(?:{_INT})(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion: the answer read from it (None if none) and whether it is right."""

    extracted: str | None
    correct: bool
    strict: bool = False  # correct *and* stated with a final-answer marker (see the module docstring)


def _number(text: str) -> Fraction | None:
    """The first number in `text` ("$1,234.50" -> 1234.5, "3/4" -> 3/4, "25%" -> 25)."""
    m = _NUMBER.search(text.replace("$", ""))
    if not m:
        return None
    token = m.group(0).replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) else None
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def _canonical(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _math_verify_number(text: str) -> Fraction | None:
    import threading

    import sympy
    from math_verify import parse

    # Its timeout is signal-based: usable on the main thread (stage processes), fatal elsewhere.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    for item in parse(text, parsing_timeout=timeout):
        if isinstance(item, sympy.Basic) and item.is_number and item.is_real:
            try:
                return Fraction(str(sympy.nsimplify(item, rational=True)))
            except (ValueError, TypeError):
                continue
    return None


def _last_marker(text: str) -> Fraction | None:
    """The number after the last ``####`` that has one: like the last ``\\boxed{}`` and the last
    "answer is", the final statement is the answer (a student that corrects itself)."""
    for found in reversed(_MARKER.findall(text)):
        if (value := _number(found)) is not None:
            return value
    return None


def _plausible(value: Fraction | None, text: str) -> Fraction | None:
    """math-verify's reading, unless it is a number the text never writes: it reads "1,2,3" as
    1.2 and "12,34" as 12.34 (decimal commas). Plain text must write the number itself; LaTeX
    (``\\frac{3}{4}``) is math-verify's to read."""
    if value is None or "\\" in text:
        return value
    written = {_number(token) for token in _NUMBER.findall(text.replace("$", ""))}
    return value if value in written else None


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a solution as a canonical string ("18", "3/4"), or None."""
    value = _last_marker(text)
    if value is None:
        value = _plausible(_math_verify_number(text), text)
    if value is None:
        # Last resort, as GSM8K graders do: the last number written ("... is 25%").
        numbers = _NUMBER.findall(text.replace("$", ""))
        value = _number(numbers[-1]) if numbers else None
    return None if value is None else _canonical(value)


def marked_answer(text: str) -> str | None:
    """The answer a completion *states*: after ``####``, else the last ``\\boxed{}``, else the last
    "answer is" phrase; None when it states none (whatever numbers it wrote)."""
    value = _last_marker(text)
    if value is None and (boxed := _BOXED.findall(text)):
        value = _math_verify_number(f"\\boxed{{{boxed[-1]}}}") or _number(boxed[-1])
    if value is None and (said := _ANSWER_IS.findall(text)):
        value = _number(said[-1])
    return None if value is None else _canonical(value)


def reference_value(answer: str) -> Fraction:
    """A reference answer ("72", "1,234", "#### 72", "3/4") as an exact number; raises if none."""
    value = _last_marker(answer) if "####" in answer else _number(answer)
    if value is None:
        raise ValueError(f"reference answer {answer!r} has no number")
    return value


def grade(completion: str, reference: str) -> Grade:
    """Judge `completion` against the reference answer: one pure, thread-safe function."""
    extracted = extract_answer(completion)
    want = reference_value(reference)
    correct = extracted is not None and Fraction(extracted) == want
    # strict only where the stated answer is also the lenient one: a marker the lenient reading
    # overrode (#### wins over a later "answer is") must not count twice
    marked = marked_answer(completion) if correct else None
    return Grade(extracted=extracted, correct=correct, strict=marked is not None and Fraction(marked) == want)
