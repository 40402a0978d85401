"""What a real model's replies broke, as canned replies: each case below is a reply SmolLM2-135M
gave through llama.cpp's server (tests/integration/test_llamacpp_teacher.py), or a server
behaviour that integration test ran into, pinned here so the default suite keeps it fixed."""

from __future__ import annotations

from collections import Counter

import pytest

from tutorloop.teachers.instruct import (
    ROLES,
    AmaReply,
    BadReply,
    EditReply,
    JudgeReply,
    LLMAgents,
    SuggestReply,
    clean_solution,
    parse_json,
    prompt,
)


def test_a_template_echo_is_a_bad_reply_not_content():
    """A third of the Suggester's replies were the prompt's JSON template echoed back: "..." passed
    as a suggestion and the Editor was asked to apply it."""
    for reply, model in [('{"suggestions":["...", "..."]}\n', SuggestReply),
                         ('{\n"suggestions": ["...", "..."]}', SuggestReply),
                         ('{"problem": "..."}', EditReply),
                         ('{\n "statement": "...", "problems": ["...", "..."]}', AmaReply),
                         ('{"statement": "…", "problems": ["Ann has 3 pens. How many?"]}', AmaReply),
                         ('{"problem": "  "}', EditReply)]:
        with pytest.raises(BadReply):
            parse_json(reply, model)
    # a real item beside a placeholder survives; the placeholder does not
    reply = '{\n  "statement": "Brennan deleted 70% of 800 files.",\n   "problems": ["...", "How many are left of 800 files?"]\n}\n'
    assert parse_json(reply, AmaReply).problems == ["How many are left of 800 files?"]


def test_json_mode_reply_shapes_from_llama_cpp():
    """llama.cpp's json_object grammar makes replies JSON, not the JSON asked for. Valid objects
    followed by a run of whitespace up to max_tokens, objects cut off at max_tokens, nested objects
    where a string was asked for, numbers in a list of strings: parsed where they are the asked-for
    shape, a counted bad reply otherwise, never an exception out of the agent."""
    ok = '{"problem": "Joanne collects 15 coins an hour for 3 hours. How many coins?"}\n\t\t        \t   \t  \t\t\t'
    assert parse_json(ok, EditReply).problem.startswith("Joanne")
    assert parse_json('{"correct": true}\n', JudgeReply).correct is True
    for reply, model in [
            ('{\n "problem": {\n    "type": "Math Problem",\n    "name": "Judy\'s Money Problem"\n },\n  "description": "x"}',
             EditReply),
            ('{\n  "statement": "She bought 5 pairs of shorts.",\n  "problems": [\n    {\n      "id": "1",\n      "name": "Ann"',
             AmaReply),  # cut off at max_tokens
            ('{\n  "suggestions": ["1.65", 2, "34.89%"\n,"A: {0}"]\n}', SuggestReply),
            ('{\n "difficulty": 1.5,\n "round_up": 2\n}', SuggestReply),
            ('{"statement": "The box weighs 2.5 pounds."}', AmaReply)]:
        with pytest.raises(BadReply):
            parse_json(reply, model)


def test_solver_replies_from_a_weak_model():
    """The Solver's final line, as SmolLM2 wrote it: a marker then chatter, two markers, a marker
    on words; no marker at all (only "The answer is") stays unparseable: the prompt asks for ####."""
    assert clean_solution("48/2 = 24\n#### 50\nThe answer is: 50") == ("48/2 = 24\n#### 50", "50")
    assert clean_solution("so 36 fewer.\n#### 36\nThe answer is 36. The final number is 24.\n#### 2")[1] == "36"
    assert clean_solution("20 minutes * 8 pages = 160 pages.\nThe answer is: 7") is None
    assert clean_solution("Total clips sold by Natalia = 7.49 x 42.5 = 306.1 (Mixed) + 83.31") is None


class _Canned:
    """Answers each agent with the reply SmolLM2 gave it (a template echo from the Suggester)."""

    kind, model = "canned", "smollm2"

    def __call__(self, messages, sampling, sample=0):
        role = next(r for r in ROLES if messages[0]["content"] == prompt(r))
        return {"ama": '{"statement": "Ann has 7.", "problems": ["20 seconds", "3 seconds"]}',
                "suggester": '{"suggestions":["...", "..."]}\n',
                "solver": f"3+4=7\n#### {7 + sample}"}[role]


def test_calls_are_counted_per_agent_and_a_template_echo_stops_the_chain():
    from tutorloop.config import Agents, Teacher

    agents = LLMAgents(_Canned(), Teacher(kind="openai", model="m"), Agents(ama=2, suggest_edit_rounds=2), 1800)
    records, counts = agents.expand({"seed_id": "s:1", "question": "Ann has 3 pens and 4 pencils. How many?"})
    assert records == []  # the two solves disagree (7, 8)
    assert counts == Counter({"agent_calls/ama": 1, "agent_calls/suggester": 1, "agent_calls/solver": 2,
                              "not_self_contained": 2, "bad_reply/suggester": 1, "solves_disagree": 1})


class _FakeExpander:
    """Stands in for the LLM agents: one record per seed, one call and one bad reply counted."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency, self.expanded = concurrency, []

    def __call__(self, seed, agents):
        self.expanded.append(seed["seed_id"])
        rec = {"question": seed["question"], "solution": seed["solution"], "answer": seed["solution"].split()[-1],
               "family": seed["family"], "provenance": {"teacher": "openai", "agent_path": "seed"}}
        return [rec], Counter({"agent_calls/ama": 1, "bad_reply/ama": 1})


def test_generate_expands_no_more_seeds_than_it_needs_and_counts_calls(params_factory, tmp_path, monkeypatch):
    """With a slow real teacher, seeds expanded past a split's end are paid for and thrown away:
    a fixed batch of 8 seeds made a third of the integration test's calls. And `agent_calls/<role>`
    lands in stats.json as such, not as a drop."""
    import json

    from tutorloop.teachers import generation as generate

    params = params_factory()
    cfg = params.generate.model_copy(update={
        "n_test": 2, "n_practice": 3, "n_sft": 5,
        "teacher": params.generate.teacher.model_copy(update={"kind": "openai", "model": "m", "concurrency": 2})})
    fake = _FakeExpander(cfg.teacher.concurrency)
    monkeypatch.setattr(generate, "make_expander", lambda *a: fake)
    counts = generate.generate_dataset(cfg, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert len(fake.expanded) == 2 + 3 + 5 and len(set(fake.expanded)) == 10  # was 8 + 8 + 8
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["agent_calls/ama"] == 10 and stats["drop/bad_reply/ama"] == 10
    assert not any(k.startswith("drop/agent_calls") for k in stats) and counts["n_sft"] == 5


def test_a_server_that_rejects_response_format_gets_plain_requests(tiny_model_dir, monkeypatch):
    """Some OpenAI-compatible servers answer response_format={"type": "json_object"} with 400
    (llama.cpp's accepts it, as a grammar): the prompts ask for JSON anyway and parse_json finds it
    in prose, so the client asks again without it, once, and stops sending it."""
    from chat_server import ChatServer

    from tutorloop.llm.client import OpenAIChat, Sampling, TeacherError

    monkeypatch.setenv("TUTORLOOP_TEST_TEACHER_KEY", "x")
    msg = [{"role": "user", "content": "2+2?"}]
    with ChatServer(tiny_model_dir, reject_response_format=True) as s:
        s.script = lambda req: 'Sure: {"correct": true}'
        chat = OpenAIChat("tiny", s.url, "TUTORLOOP_TEST_TEACHER_KEY", timeout=10, max_retries=0)
        assert parse_json(chat(msg, Sampling(json_mode=True)), JudgeReply).correct is True
        assert s.requests == 2 and s.completions == 1  # rejected, then plain
        chat(msg, Sampling(json_mode=True))
        assert s.requests == 3  # no longer sent
        # a 400 that is not about response_format still stops the stage, with the server's message
        bad = OpenAIChat("no-such-model", s.url, "TUTORLOOP_TEST_TEACHER_KEY", timeout=10, max_retries=0)
        with pytest.raises(TeacherError, match="400.*unknown model"):
            bad(msg, Sampling(json_mode=True))
