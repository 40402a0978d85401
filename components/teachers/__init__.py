"""Teachers write problems with step-by-step solutions and exact final answers.

A teacher is anything with `name` and `problems(n, seed) -> list[dict]`; records carry
question, solution (GSM8K style, ending ``#### N``), answer, family and provenance. The embedded
procedural teacher is the offline default; LLM-backed teachers plug in behind the same interface.
"""

from __future__ import annotations

import random
import re
from typing import Protocol

from components.teachers.arith import fmt
from components.teachers.procedural import FAMILIES, make_problem


class Teacher(Protocol):
    name: str

    def problems(self, n: int, seed: int) -> list[dict]: ...


def normalise(text: str) -> str:
    """Text key for duplicate detection: case, punctuation and spacing folded."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


class ProceduralTeacher:
    """The embedded teacher: round-robin over families, unique questions, seeded."""

    name = "procedural"

    def __init__(self, families: list[str] | None = None) -> None:
        unknown = sorted(set(families or []) - set(FAMILIES))
        if unknown:
            raise ValueError(f"generate.families: unknown {unknown}; known: {sorted(FAMILIES)}")
        self.families = sorted(families or FAMILIES)

    def problems(self, n: int, seed: int) -> list[dict]:
        rng = random.Random(seed)
        seen: set[str] = set()
        out: list[dict] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise RuntimeError(f"could only make {len(out)} distinct problems of {n} asked")
            family = self.families[len(out) % len(self.families)]
            p = make_problem(family, rng)
            key = normalise(p.question)
            if key in seen:
                continue
            seen.add(key)
            out.append({
                "question": p.question, "solution": p.solution, "answer": fmt(p.answer),
                "family": p.family,
                "provenance": {"teacher": self.name, "model": "procedural-v1", "agent_path": "seed",
                               "seed": seed},
            })
        return out


def make_teacher(kind: str, families: list[str] | None = None) -> Teacher:
    if kind == "procedural":
        return ProceduralTeacher(families)
    raise ValueError(f"generate.teacher: unknown teacher {kind!r}")
