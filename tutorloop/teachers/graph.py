"""Problems as small computation graphs: the representation the offline agents work on.

A `Graph` holds *quantities*: givens (a number stated by one sentence of the story), constants
(known but never stated, e.g. 100 in a percentage) and derived quantities (an arithmetic relation
over others, e.g. ``{boxes}*{per_box}``). A problem is a graph plus a *target*: the story states
every given, then asks for the target. `solve()` writes the GSM8K-style solution by propagation —
it repeatedly finds a relation with exactly one unknown quantity and computes it, forwards with
the relation's own sentence, or backwards by solving the relation for that quantity (sympy,
exact rationals). That one solver is what lets the agents change the *question* freely:

* Ask-Me-Anything states the answer and asks for a given instead (`ask_variants`);
* the Editor appends a step, a percentage, a unit conversion, a distractor, or a second problem
  (`tutorloop/teachers/agents.py`),

and every new problem gets a solution that is right by construction, re-derived step by step.
Rejected alternative: per-family hand-written inverse solutions — 20 families x every quantity
would be hundreds of templates, each a chance to write a wrong one.

    python -c "from tutorloop.teachers.procedural import build; from tutorloop.teachers.graph import ask_variants; print(len(ask_variants(build('unit_rate', 0))))"
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Callable

from tutorloop.teachers.arith import NotRepresentable, evaluate, fmt


class Reject(Exception):
    """Not a grade-school problem (an answer or step that is not a positive, short number)."""


@dataclass
class Quantity:
    """One number of a problem and the English around it."""

    key: str
    value: Fraction
    label: str                      # noun phrase, e.g. "the number of pencils in each box"
    unit: str = "count"             # count | money | minutes | hours | miles | feet | years | points | ...
    noun: str = ""                  # for counts: what is counted ("pencils")
    fact: str = ""                  # sentence stating it, "{v}" = the value: "Each box has {v} pencils."
    ask: str = ""                   # question asking for it: "How many pencils are in each box?"
    expr: str = ""                  # derived: relation over other keys, "{boxes}*{per_box}"
    step: str = ""                  # derived: forward step, "{calc}" = "5*12 = <<5*12=60>>60"
    fn: Callable | None = None      # derived without arithmetic (floor): value from the args, forward only
    kind: str = "given"             # given | const | derived
    integral: bool = True           # must be a whole number where it appears

    @property
    def args(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.expr)


@dataclass
class Graph:
    """A problem: ordered story parts, quantities, a target, and what is stated."""

    family: str
    subject: str = ""               # the main person, for editor sentences
    parts: list[tuple[str, str]] = field(default_factory=list)  # ("text", s) | ("fact", key)
    q: dict[str, Quantity] = field(default_factory=dict)
    target: str = ""
    known: set[str] = field(default_factory=set)  # stated in the story (givens, or a stated answer)

    # --- building ---------------------------------------------------------------------------
    def text(self, sentence: str) -> None:
        self.parts.append(("text", sentence))

    def given(self, key: str, value, label: str, fact: str, ask: str, **kw) -> Fraction:
        self._add(Quantity(key, Fraction(value), label, fact=fact, ask=ask, kind="given", **kw))
        self.parts.append(("fact", key))
        self.known.add(key)
        return Fraction(value)

    def const(self, key: str, value) -> Fraction:
        self._add(Quantity(key, Fraction(value), key, kind="const"))
        return Fraction(value)

    def derive(self, key: str, expr: str, label: str, step: str, ask: str = "", fact: str = "",
               fn: Callable | None = None, **kw) -> Fraction:
        q = Quantity(key, Fraction(0), label, fact=fact, ask=ask, expr=expr, step=step, fn=fn,
                     kind="derived", **kw)
        vals = {a: self.q[a].value for a in q.args}
        # fn takes its arguments by position, so renaming keys (chaining problems) keeps it working
        q.value = Fraction(fn(*vals.values())) if fn else evaluate(expr.format(**{a: fmt(v) for a, v in vals.items()}))
        if q.value <= 0 or (q.integral and q.value.denominator != 1):
            raise Reject
        self._add(q)
        if fact:
            self.parts.append(("fact", key))   # rendered only when known (a stated answer)
        return q.value

    def _add(self, q: Quantity) -> None:
        if q.key in self.q:
            raise ValueError(f"duplicate quantity {q.key}")
        self.q[q.key] = q

    def fresh_key(self, stem: str) -> str:
        i = 1
        while any(k == f"{stem}{i}" or k.startswith(f"{stem}{i}_") for k in self.q):
            i += 1
        return f"{stem}{i}"

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    # --- rendering --------------------------------------------------------------------------
    def question(self) -> str:
        out = []
        for kind, body in self.parts:
            if kind == "text":
                out.append(body)
            elif body in self.known and body != self.target:
                q = self.q[body]
                out.append(q.fact.replace("{v}", fmt(q.value)))
        out.append(self.q[self.target].ask)
        return " ".join(out)

    def render(self) -> tuple[str, str, Fraction]:
        """(question, GSM8K-style solution, answer); raises Reject if not grade-school."""
        if not self.q[self.target].ask:
            raise Reject
        lines, answer = solve(self)
        return self.question(), "\n".join(lines + [f"#### {fmt(answer)}"]), answer


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


@lru_cache(maxsize=4096)
def _inverse(expr: str, node: str, unknown: str) -> str | None:
    """`expr` (over {keys}) = node, solved for `unknown`, as an expression over {keys}; None if
    it is not uniquely solvable (the unknown appears non-linearly, or not at all)."""
    import sympy

    names = set(re.findall(r"\{(\w+)\}", expr)) | {node}
    syms = {n: sympy.Symbol(n, positive=True) for n in names}
    lhs = sympy.sympify(re.sub(r"\{(\w+)\}", r"\1", expr), locals=syms, rational=True)
    sol = sympy.solve(sympy.Eq(lhs, syms[node]), syms[unknown], rational=True)
    if len(sol) != 1:
        return None
    # Positive terms first: "320-92-97" reads like a solution, sympy's "-92-97+320" does not.
    terms = sympy.Add.make_args(sol[0])
    pos = [str(t) for t in terms if not t.could_extract_minus_sign()]
    neg = [str(-t) for t in terms if t.could_extract_minus_sign()]
    if not pos:
        return None
    text = "+".join(pos) + "".join(f"-{t}" for t in neg)
    if "**" in text or "sqrt" in text:
        return None
    return re.sub(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b",
                  r"{\1}", text.replace(" ", ""))


def solve(g: Graph) -> tuple[list[str], Fraction]:
    """Propagate from the stated quantities to the target; return the needed steps and answer.

    Each step's value is computed from its expression (never copied from the graph) and checked
    against the graph's value, so a wrong inversion cannot produce a wrong solution silently.
    """
    values = {k: q.value for k, q in g.q.items() if k in g.known or q.kind == "const"}
    steps: list[tuple[str, set[str], str]] = []   # (computed key, used keys, line)
    derived = [q for q in g.q.values() if q.kind == "derived"]
    while g.target not in values:
        progress = False
        for q in derived:
            unknown = [k for k in [q.key, *q.args] if k not in values]
            if len(unknown) != 1:
                continue
            u = unknown[0]
            if u == q.key:
                used = set(q.args)
                if q.fn:
                    value = Fraction(q.fn(*[values[a] for a in q.args]))
                    line = q.step.format(**{a: fmt(values[a]) for a in q.args}, value=fmt(value))
                else:
                    expr = q.expr.format(**{a: fmt(values[a]) for a in q.args})
                    value, calc = _calc(expr)
                    line = q.step.replace("{calc}", calc)
            else:
                if q.fn:
                    continue
                inv = _inverse(q.expr, q.key, u)
                if inv is None:
                    continue
                used = {q.key, *q.args} - {u}
                value, calc = _calc(inv.format(**{k: fmt(values[k]) for k in used}))
                line = f"So {g.q[u].label} is {calc}."
            if value != g.q[u].value:
                raise AssertionError(f"{g.family}: step for {u} gives {value}, graph says {g.q[u].value}")
            if value <= 0 or (g.q[u].integral and value.denominator != 1):
                raise Reject
            values[u] = value
            steps.append((u, used, _cap(line)))
            progress = True
            if g.target in values:
                break
        if not progress:
            raise Reject  # the stated quantities do not determine the target
    needed, kept = {g.target}, []
    for u, used, line in reversed(steps):
        if u in needed:
            kept.append(line)
            needed |= used
    return kept[::-1], values[g.target]


def _calc(expr: str) -> tuple[Fraction, str]:
    value = evaluate(expr)
    try:
        shown = fmt(value)
    except NotRepresentable as e:
        raise Reject from e
    return value, f"{expr} = <<{expr}={shown}>>{shown}"


def ask_variants(g: Graph) -> list[Graph]:
    """Ask-Me-Anything on the graph: state the answer, then ask for each given in turn; and ask
    for each intermediate quantity that has a question (an easier, earlier-stopping problem)."""
    out = []
    if g.q[g.target].fact:
        # insertion order, never set order: str hashing differs per process, and the variants'
        # order decides which ones a seeded shuffle keeps (provenance must rebuild them)
        for key in [k for k, q in g.q.items() if k in g.known and q.kind == "given" and q.ask]:
            v = g.copy()
            v.known = (g.known - {key}) | {g.target}
            v.target = key
            out.append(v)
    for q in g.q.values():
        if q.kind == "derived" and q.ask and q.key != g.target and q.key not in g.known:
            v = g.copy()
            v.target = q.key
            out.append(v)
    return out


def plural(n, one: str, many: str) -> str:
    return one if n == 1 else many


def pick(rng: random.Random, *options: str) -> str:
    return rng.choice(options)
