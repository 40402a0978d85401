"""The calculator: safe, exact arithmetic for GSM8K-style `<<expr=value>>` annotations.

Small students get most GSM8K problems wrong inside their own annotations (`<<5*16=72>>`), not in
the plan. With the calculator on, the sampler (tutorloop/inference/engine.py) watches for a completion
that ends in `<<expr=`, computes `expr` here and writes `value>>` itself, so the model reads a
correct intermediate result and carries on from it (TinyGSM / GSM8K's own calculator trick).

`evaluate` never calls Python's eval: it walks the `ast` of the expression and allows only
number literals, + - * / ( ) and unary minus, over exact fractions. Everything else (names,
calls, attributes, `**`, comparisons, huge literals, division by zero) is refused with
`CalcError`, and the sampler then leaves the model to write the value itself.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

MAX_EXPR_CHARS = 120   # GSM8K's longest annotation is ~60 characters; longer is not arithmetic
MAX_DIGITS = 30        # refuse literals and results beyond this (no giant-number DoS)

# The open annotation at the very end of a completion: `<<` then an expression, then `=`.
OPEN_ANNOTATION = re.compile(r"<<([^<>=]{1,%d})=$" % MAX_EXPR_CHARS)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


class CalcError(ValueError):
    """The text is not an arithmetic expression the calculator computes."""


def evaluate(expr: str) -> Fraction:
    """+, -, *, / and parentheses over integer/decimal literals, exactly (thousands commas allowed)."""
    text = _THOUSANDS.sub("", expr.strip().replace("$", ""))
    if not text or len(text) > MAX_EXPR_CHARS:
        raise CalcError(f"not an expression: {expr!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalcError(f"not an expression: {expr!r}") from None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            value = Fraction(str(node.value))   # 1e300 is 6 characters: check the value's digits
            if len(str(node.value)) > MAX_DIGITS or max(len(str(abs(value.numerator))),
                                                        len(str(value.denominator))) > MAX_DIGITS:
                raise CalcError(f"literal too large in {expr!r}")
            return value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                out = a + b
            elif isinstance(node.op, ast.Sub):
                out = a - b
            elif isinstance(node.op, ast.Mult):
                out = a * b
            elif b == 0:
                raise CalcError(f"division by zero in {expr!r}")
            else:
                out = a / b
            if len(str(out.numerator)) > MAX_DIGITS or len(str(out.denominator)) > MAX_DIGITS:
                raise CalcError(f"result too large in {expr!r}")
            return out
        raise CalcError(f"unsupported {type(node).__name__} in {expr!r}")

    return ev(tree)


class NotRepresentable(CalcError):
    """A value with no short decimal form (e.g. 25/6), where an exact one is required."""


def render(value: Fraction, exact: bool = False) -> str:
    """The one rule for writing a value, for the calculator and the teachers (arith.fmt) alike:
    integers plainly, terminating decimals of up to 6 places exactly, other values rounded to 4
    places (GSM8K writes 33.3333) — or, with `exact`, refused (`NotRepresentable`). A value that
    rounds to 0 is refused too: "0" (or "-0") for 0.00001 would feed the model a wrong result."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    if Fraction(text) == value:
        return text
    if exact:
        raise NotRepresentable(f"{value} has no short decimal form")
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    if Fraction(text) == 0:
        raise CalcError(f"{float(value):.3g} rounds to 0 at 4 places")
    return text


def complete(text: str) -> str | None:
    """What the calculator writes after `text` (`value>>`), or None if `text` does not end in a
    computable open annotation `<<expr=`."""
    m = OPEN_ANNOTATION.search(text)
    if m is None:
        return None
    try:
        return render(evaluate(m.group(1))) + ">>"
    except (CalcError, ZeroDivisionError, OverflowError, ValueError):
        return None

