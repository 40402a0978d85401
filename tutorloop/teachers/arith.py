"""Exact arithmetic for GSM8K-style solutions.

`evaluate("48/2+3")` computes an expression with `fractions.Fraction` (no float drift), and
`Solution` renders calculator-annotated steps the way GSM8K writes them:
``She sold 48/2 = <<48/2=24>>24 clips in May.`` ... ``#### 72``.

The same `evaluate` re-derives every ``<<expr=value>>`` annotation in tests, so a solution that
says something its arithmetic does not support is caught.

    python -c "from tutorloop.teachers.arith import evaluate; print(evaluate('3*(4+1)/5'))"
"""

from __future__ import annotations

import re
from fractions import Fraction

# One safe evaluator for the teacher and the student's calculator (tutorloop/inference/calculator.py).
from tutorloop.inference.calculator import (  # noqa: F401  (re-exported: tests and teachers use them)
    NotRepresentable,
    evaluate,
    render,
)

_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


def fmt(value: Fraction) -> str:
    """Render a value as GSM8K does: integers plainly, terminating decimals without trailing 0s;
    `NotRepresentable` otherwise (the calculator's own rule: one rule, one place)."""
    return render(value, exact=True)


def annotations(solution: str) -> list[tuple[str, str]]:
    """All (expression, stated value) pairs of a solution's <<expr=value>> annotations."""
    return _ANNOTATION.findall(solution)


class Solution:
    """Collects the steps of a step-by-step solution while computing each value exactly."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, template: str, expr: str) -> Fraction:
        """Append `template` with `{calc}` replaced by ``expr = <<expr=value>>value``."""
        value = evaluate(expr)
        shown = fmt(value)
        self.lines.append(template.format(calc=f"{expr} = <<{expr}={shown}>>{shown}"))
        return value

    def say(self, line: str) -> None:
        """A step with no arithmetic (a restatement or a conclusion)."""
        self.lines.append(line)

    def render(self, answer: Fraction) -> str:
        return "\n".join(self.lines + [f"#### {fmt(answer)}"])
