"""Agents, each on its own: Ask-Me-Anything, Suggester, Editor (graph path) and the LLM-path
parsers and filters. Every produced answer is re-derived with exact arithmetic."""

import random
from collections import Counter
from pathlib import Path

import pytest

from tests.test_procedural import check
from tutorloop.teachers.agents import (
    EDIT_KINDS,
    Suggestion,
    ask_me_anything,
    edit,
    expand,
    suggest,
)
from tutorloop.teachers.graph import Reject
from tutorloop.teachers.instruct import (
    ROLES,
    AmaReply,
    BadReply,
    EditReply,
    LLMAgents,
    clean_solution,
    parse_json,
    prompt,
    self_contained,
)
from tutorloop.teachers.procedural import FAMILIES, build


def test_ama_asks_for_other_quantities_and_states_the_answer():
    g = build("discount", 3)
    variants = ask_me_anything(g, 10, random.Random(0))
    assert len(variants) >= 3
    targets = {v.target for v in variants}
    assert g.target not in targets and {"price", "pct", "qty"} & targets
    for v in variants:
        q, s, a = v.render()
        check(q, s, a)
        assert a == g.q[v.target].value


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_each_edit_kind_makes_a_correct_harder_problem(kind):
    made = 0
    for family in sorted(FAMILIES):
        for seed in range(6):
            g = build(family, seed)
            sugg = suggest(g, random.Random(seed), kinds=(kind,), count=1)
            if not sugg:
                continue
            assert all(s.kind == kind and s.text for s in sugg)
            try:
                e = edit(g, sugg)
            except Reject:
                continue
            q, s, a = e.render()
            check(q, s, a)
            q0, s0, _ = g.render()
            assert q != q0
            if kind == "distractor":  # same answer, one more (irrelevant) sentence
                assert a == g.q[g.target].value and sugg[0].params["sentence"] in q
            else:  # one more step than the original
                assert len(s.splitlines()) > len(s0.splitlines())
            made += 1
    assert made >= 10, f"{kind}: only {made} edits applied"


def test_editor_applies_concrete_suggestions():
    g = build("discount", 3)
    total = g.q[g.target].value
    e = edit(g, [Suggestion("step", "add a fee", {"op": "fee", "k": 7})])
    assert e.render()[2] == total + 7 and "$7 delivery fee" in e.render()[0]
    e2 = edit(e, [Suggestion("convert", "in cents", {})])
    assert e2.render()[2] == (total + 7) * 100 and "cents" in e2.render()[0]
    # a converted answer only takes distractors next (no "that in cents is shared by ..." text)
    assert {s.kind for _ in range(20) for s in suggest(e2, random.Random(_))} <= {"distractor"}


def test_expand_is_deterministic_and_records_agent_paths():
    sid = "shopping:5"
    a = [(p, v.render()[0], s) for p, v, s in expand(sid, build("shopping", 5), 2, 2)]
    b = [(p, v.render()[0], s) for p, v, s in expand(sid, build("shopping", 5), 2, 2)]
    assert a == b
    paths = [p for p, _, _ in a]
    assert paths[0] == "seed" and "ama/1" in paths and "suggest-edit/1" in paths and "suggest-edit/2" in paths
    assert all(s for p, _, s in a if p.startswith("suggest-edit"))


# --- LLM path: prompts, parsers, filters ----------------------------------------------------

def test_prompt_files_exist_for_every_role():
    for role in ROLES:
        assert len(prompt(role)) > 50


def test_parse_json_takes_the_first_valid_object_and_rejects_the_rest():
    reply = 'Sure! ```json\n{"statement": "A has 3.", "problems": ["How many does A have if ...?"]}\n```'
    assert parse_json(reply, AmaReply).problems == ["How many does A have if ...?"]
    assert parse_json('{"x": 1} then {"problem": "P?"}', EditReply).problem == "P?"
    for bad in ("no json here", '{"problems": []}', '{"statement": "s", "problems": "not a list"}'):
        with pytest.raises(BadReply):
            parse_json(bad, AmaReply)


def test_self_contained_filter():
    assert self_contained("Tom has 3 apples and buys 4 more. How many apples does he have?")
    assert not self_contained("In the original problem, how many apples are there if 3 are eaten?")
    assert not self_contained("Tom has 3 apples and buys 4 more.")  # no question
    assert not self_contained("How many apples does Tom have?")  # no numbers


def test_clean_solution_normalises_the_final_line():
    assert clean_solution("3+4 = 7 apples.\n#### 7 apples") == ("3+4 = 7 apples.\n#### 7", "7")
    assert clean_solution("2*3=6\n####6") == ("2*3=6\n#### 6", "6")
    assert clean_solution("I cannot solve this") is None
    assert clean_solution("3+4 = 7, then 7*2 = 14 and") is None  # truncated: no final-answer line
    assert clean_solution("25/2 = 12.50 dollars\n#### 25/2") == ("25/2 = 12.50 dollars\n#### 12.5", "12.5")
    assert clean_solution("the share is 1/3") is None  # no short decimal form


class _Scripted:
    """A deterministic stand-in *model* for the LLM-agent control flow (the HTTP path is tested
    against a real server in test_teacher_http.py): it answers by role, as a teacher would."""

    kind, model = "scripted", "scripted-1"

    def __init__(self, disagree: bool = False):
        self.calls = Counter()
        self.disagree = disagree

    def __call__(self, messages, sampling, sample=0):
        role = next(r for r in ROLES if messages[0]["content"] == prompt(r))
        self.calls[role] += 1
        user = messages[1]["content"]
        if role == "ama":
            return '{"statement": "Ann has 3 pens and 4 pencils, 7 in all.", "problems": ' \
                   '["Ann has 7 pens and pencils; 3 are pens. How many pencils?", "the above problem?"]}'
        if role == "suggester":
            return '{"suggestions": ["add a step"]}'
        if role == "editor":
            return '{"problem": "Ann has 3 pens and 4 pencils, then buys 2 more pens. How many in all?"}'
        answer = 9 if "buys 2" in user else 4 if "How many pencils" in user else 7
        if self.disagree and sample == 1:
            answer += 1
        return f"Work it out: {answer}.\n#### {answer}"


def test_llm_agents_flow_records_provenance_and_filters():
    from tutorloop.config import Agents, Teacher

    chat = _Scripted()
    agents = LLMAgents(chat, Teacher(kind="openai", model="m"), Agents(ama=2, suggest_edit_rounds=1), 1800)
    seed = {"seed_id": "s:1", "question": "Ann has 3 pens and 4 pencils. How many in all?", "solution": "3+4=7\n#### 7"}
    records, drops = agents.expand(seed)
    assert [r["provenance"]["agent_path"] for r in records] == ["seed", "ama/1", "suggest-edit/1"]
    assert [r["answer"] for r in records] == ["7", "4", "9"]
    assert drops["not_self_contained"] == 1
    assert records[2]["provenance"]["suggestions"] == ["add a step"]
    assert chat.calls["solver"] == 4  # seed had a solution; 2 new problems x 2 independent solves
    records, drops = LLMAgents(_Scripted(disagree=True), Teacher(kind="openai", model="m"),
                               Agents(ama=2, suggest_edit_rounds=1), 1800).expand(seed)
    assert [r["provenance"]["agent_path"] for r in records] == ["seed"] and drops["solves_disagree"] == 2


def test_two_thousand_problems_rederive_spread_and_do_not_repeat(tmp_path):
    """The issue's bar: 2,000 embedded-teacher problems over >= 20 families, < 1% exact or near
    duplicates by a stricter measure than the stage's own, every answer re-derived (speed is
    measured in benchmarks/data_quality.py, not asserted here)."""
    import sys

    from tutorloop.config import load_params
    from tutorloop.data.jsonl import read_jsonl
    from tutorloop.teachers.generation import generate_dataset as run

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from data_quality import audit

    cfg = load_params(Path(__file__).resolve().parents[1] / "params.yaml").generate.model_copy(update={"n_sft": 2000})
    run(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    a = audit(read_jsonl(tmp_path / "out" / "sft.jsonl"))
    assert a["n"] == 2000 and not a["wrong"]
    assert len(a["families"]) >= 20 and a["dup_rate"] < 0.01
    assert set(a["agents"]) == {"seed", "ama", "suggest-edit"}


def test_agents_are_reproducible_across_processes():
    """Provenance rebuilds a problem in another process: nothing may depend on str hashing."""
    import subprocess
    import sys

    code = ("from tutorloop.teachers.agents import expand; from tutorloop.teachers.procedural import build, FAMILIES\n"
            "for f in sorted(FAMILIES):\n"
            "    for p, g, s in expand(f + ':3', build(f, 3), 3, 2): print(p, g.render()[0])")
    root = Path(__file__).resolve().parents[1]
    outs = [subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"}).stdout for seed in (1, 2)]
    assert outs[0] == outs[1] and outs[0].count("\n") > 100
