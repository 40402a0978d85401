"""Teachers write problems with step-by-step solutions and exact final answers.

* `procedural` (the offline default): `ProceduralTeacher` builds computation graphs
  (`procedural.py`, `graph.py`, `arith.py`); its agents (`agents.py`) rewrite the graphs.
* `openai` / `transformers`: an LLM (`chat.py` picks the backend) driven by the prompt files in
  `prompts/` through the LLM agents (`instruct.py`).
* `generation.py`: the `generate` stage's loop (seeds, agents, filters, journal, splits);
  `followup.py`: variants of failed problems; `judge.py`: the optional LLM judge of samples.

Records carry question, solution (GSM8K style, ending ``#### N``), answer, family and
provenance (teacher, model, seed id, agent path).

May import: tutorloop.errors, secrets, config, hardware (the resolved runtime), runtime (pool), data,
llm, modeling, inference, eval (grading). Never train/, registry/, components/ or flows/.

    python -c "from tutorloop.teachers import ProceduralTeacher as T; print(T().problems(2, 0))"
"""

from __future__ import annotations

from tutorloop.data.text import normalise  # noqa: F401  (re-exported: the teachers' dedup key)
from tutorloop.teachers.arith import fmt
from tutorloop.teachers.graph import Graph
from tutorloop.teachers.procedural import FAMILIES, build


def graph_record(g: Graph, seed_id: str, agent_path: str) -> dict:
    question, solution, answer = g.render()
    return {"question": question, "solution": solution, "answer": fmt(answer), "family": g.family,
            "provenance": {"teacher": "procedural", "model": ProceduralTeacher.model,
                           "seed_id": seed_id, "agent_path": agent_path}}


class ProceduralTeacher:
    """The embedded teacher: seed graphs round-robin over families, seeded and prefix-stable."""

    name = "procedural"
    model = "procedural-v2"

    def __init__(self, families: list[str] | None = None) -> None:
        unknown = sorted(set(families or []) - set(FAMILIES))
        if unknown:
            raise ValueError(f"generate.families: unknown {unknown}; known: {sorted(FAMILIES)}")
        self.families = sorted(families or FAMILIES)

    def seed_id(self, i: int, stream: int) -> str:
        """Seed i of a stream: `family:number`, enough to rebuild the graph with `build`."""
        return f"{self.families[i % len(self.families)]}:{stream * 1_000_003 + i}"

    @staticmethod
    def graph(seed_id: str) -> Graph:
        family, number = seed_id.split(":")
        return build(family, int(number))

    def problems(self, n: int, seed: int) -> list[dict]:
        """n seed problems (no agents), distinct by normalised text."""
        out, seen, i = [], set(), 0
        while len(out) < n:
            sid = self.seed_id(i, seed)
            i += 1
            r = graph_record(self.graph(sid), sid, "seed")
            if normalise(r["question"]) not in seen:
                seen.add(normalise(r["question"]))
                out.append(r)
        return out
