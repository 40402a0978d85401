"""The AgentInstruct agents on the LLM path: Ask-Me-Anything, Suggester, Editor, Solver, Verifier.

Each agent is a prompt file in `prompts/` (the system message; reviewed like code, diffed in
git, and a dependency of the `generate` stage in dvc.yaml) plus a pure parser that validates the
reply (pydantic). `LLMAgents.expand(seed)` runs one seed through the agents with any `chat`
callable (`tutorloop.llm.cache.CachedChat`) and returns the kept records and the per-filter drop counts:

    seed --AMA--> new problems --Solver(x2)--> records                   agent path ama/i
    seed --Suggester--> ideas --Editor--> harder problem --Solver(x2)--> suggest-edit/1, /2

A reply that is not the JSON asked for, a problem that is not self-contained, a solution without
a parseable final answer, and two independent solves that disagree are dropped and counted, never
repaired by guessing.

    cat tutorloop/teachers/prompts/*.md      # the prompts, one file per agent role
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ValidationError

from tutorloop.eval.grading import extract_answer
from tutorloop.llm.client import Sampling

PROMPTS = Path(__file__).with_name("prompts")
ROLES = ("ama", "suggester", "editor", "solver", "judge")
CALLS = "agent_calls/"  # a key of `expand`'s counter that counts calls, not drops


def prompt(role: str) -> str:
    return (PROMPTS / f"{role}.md").read_text().strip()


_PLACEHOLDER = re.compile(r"[\s.\u2026]*")


def _real(text: str) -> str:
    """A small model often echoes the prompt's JSON template, `{"suggestions": ["...", "..."]}`
    (SmolLM2-135M did so for a third of its Suggester replies through llama.cpp): "..." is not a
    suggestion, a problem or a statement, so the reply must not pass as one."""
    if _PLACEHOLDER.fullmatch(text):
        raise ValueError("a placeholder, not content")
    return text


def _real_items(items: list[str]) -> list[str]:
    kept = [x for x in items if not _PLACEHOLDER.fullmatch(x)]  # placeholder items dropped
    if not kept:
        raise ValueError("no item but placeholders")
    return kept


Text = Annotated[str, AfterValidator(_real)]
Items = Annotated[list[str], AfterValidator(_real_items)]


class AmaReply(BaseModel):
    statement: Text
    problems: Items


class SuggestReply(BaseModel):
    suggestions: Items


class EditReply(BaseModel):
    problem: Text


class JudgeReply(BaseModel):
    correct: bool


class BadReply(ValueError):
    """The agent's reply is not the structured output its prompt asks for."""


def parse_json(text: str, model: type[BaseModel]) -> BaseModel:
    """The first JSON object in `text` (models like to wrap it in prose or code fences), validated."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
            return model.model_validate(obj)
        except (json.JSONDecodeError, ValidationError):
            start = text.find("{", start + 1)
    raise BadReply(f"no valid {model.__name__} JSON in reply: {text[:80]!r}")


_DANGLING = re.compile(r"\b(the (above|original|previous|given) (problem|statement|question)|as (stated|mentioned) "
                       r"(above|before)|see above|from the statement)\b", re.I)


def self_contained(problem: str) -> bool:
    """A problem a student can read alone: a question with numbers, no reference to another text."""
    p = problem.strip()
    return (20 <= len(p) <= 1500 and "?" in p and bool(re.search(r"\d", p)) and not _DANGLING.search(p))


_MARKER = re.compile(r"####\s*\S")


def clean_solution(text: str) -> tuple[str, str] | None:
    """(solution ending '#### N', N), or None without the '#### N' line the Solver prompt asks
    for: a truncated reply would otherwise have an intermediate number read as its answer."""
    marker = _MARKER.search(text)
    if not marker:
        return None
    # The solution ends at its first marker line and what follows is chatter (cut below), so the
    # answer is that marker's: the one the kept text states.
    line_end = text.find("\n", marker.start())
    answer = extract_answer(text[:line_end] if line_end >= 0 else text)
    if answer is None:
        return None
    if "/" in answer:  # 25/2 -> 12.5; a non-terminating fraction is not a GSM8K-style answer
        from fractions import Fraction

        from tutorloop.teachers.arith import NotRepresentable, fmt

        try:
            answer = fmt(Fraction(answer))
        except NotRepresentable:
            return None
    body = re.sub(r"\n?####\s*.*$", "", text.strip(), flags=re.S).rstrip()
    return f"{body}\n#### {answer}", answer


class LLMAgents:
    """Runs one seed through the LLM agents (thread-safe; the chat does the caching)."""

    def __init__(self, chat, teacher_cfg, agents_cfg, max_answer_chars: int) -> None:
        self.chat, self.t, self.a, self.max_chars = chat, teacher_cfg, agents_cfg, max_answer_chars
        self.system = {r: prompt(r) for r in ROLES}

    def _sampling(self, json_mode: bool = False) -> Sampling:
        return Sampling(self.t.temperature, self.t.top_p, self.t.max_tokens, self.t.seed, json_mode and self.t.json_mode)

    def _ask(self, role: str, user: str, json_mode: bool, counts: Counter, sample: int = 0) -> str:
        """One call to agent `role`, counted as `agent_calls/<role>` (the stage's stats show which
        agents ran; with a weak teacher the drop counts alone cannot tell "not asked" from "failed")."""
        counts[f"{CALLS}{role}"] += 1
        msgs = [{"role": "system", "content": self.system[role]}, {"role": "user", "content": user}]
        return self.chat(msgs, self._sampling(json_mode), sample=sample)

    def solve(self, problem: str, drops: Counter) -> tuple[str, str] | None:
        first = clean_solution(self._ask("solver", problem, False, drops))
        if first is None:
            drops["unparseable_answer"] += 1
            return None
        if len(first[0]) > self.max_chars:
            drops["too_long"] += 1
            return None
        if self.t.verify:
            second = clean_solution(self._ask("solver", problem, False, drops, sample=1))
            if second is None or second[1] != first[1]:
                drops["solves_disagree"] += 1
                return None
        return first

    def _record(self, problem: str, solved, seed: dict, path: str, extra: dict | None = None) -> dict:
        return {"question": problem.strip(), "solution": solved[0], "answer": solved[1],
                "family": seed.get("family", "seed"),
                "provenance": {"teacher": self.t.kind, "model": self.chat.model, "seed_id": seed["seed_id"],
                               "agent_path": path, "temperature": self.t.temperature, "top_p": self.t.top_p,
                               "max_tokens": self.t.max_tokens, "verify": self.t.verify, **(extra or {})}}

    def expand(self, seed: dict, agents: bool = True) -> tuple[list[dict], Counter]:
        """Records from one seed {seed_id, question, solution?}: the seed itself, AMA variants and
        the suggest-edit chain; and a counter of drops by reason and of `agent_calls/<role>`."""
        drops: Counter = Counter()
        out = []
        given = clean_solution(seed["solution"]) if seed.get("solution") else None
        solved = given if given and len(given[0]) <= self.max_chars else self.solve(seed["question"], drops)
        if solved:
            out.append(self._record(seed["question"], solved, seed, "seed"))
        if not agents:
            return out, drops
        if self.a.ama:
            try:
                reply = parse_json(self._ask("ama", seed["question"], True, drops), AmaReply)
                for i, p in enumerate(reply.problems[: self.a.ama]):
                    if not self_contained(p):
                        drops["not_self_contained"] += 1
                    elif (s := self.solve(p, drops)):
                        out.append(self._record(p, s, seed, f"ama/{i + 1}"))
            except BadReply:
                drops["bad_reply/ama"] += 1
        current = seed["question"]
        for r in range(1, self.a.suggest_edit_rounds + 1):
            try:
                ideas = parse_json(self._ask("suggester", current, True, drops), SuggestReply).suggestions
            except BadReply:
                drops["bad_reply/suggester"] += 1
                break
            user = f"Problem:\n{current}\n\nSuggestions:\n" + "\n".join(f"- {s}" for s in ideas)
            try:
                new = parse_json(self._ask("editor", user, True, drops), EditReply).problem
            except BadReply:
                drops["bad_reply/editor"] += 1
                break
            if not self_contained(new):
                drops["not_self_contained"] += 1
                break
            s = self.solve(new, drops)
            if s is None:
                break
            out.append(self._record(new, s, seed, f"suggest-edit/{r}", {"suggestions": ideas}))
            current = new
        return out, drops
