"""Closing the loop: all-wrong problems come back as easier and harder variants, rebuilt exactly
from provenance, deduplicated and decontaminated, appended to the next round's practice set."""

import json

from conftest import tiny_params

from components import followup
from tutorloop.config import validate
from tutorloop.data.jsonl import read_jsonl, write_jsonl
from tutorloop.teachers import ProceduralTeacher, graph_record
from tutorloop.teachers import followup as variants
from tutorloop.teachers.agents import expand


def practice_set(n=6):
    t = ProceduralTeacher()
    rows = []
    for i in range(n):
        sid = t.seed_id(i, 42)
        path, g, _ = expand(sid, t.graph(sid), 2, 2)[-1]  # an edited problem: provenance must rebuild it
        r = graph_record(g, sid, path)
        r["id"] = f"p{i}"
        rows.append(r)
    return rows


def test_all_wrong_needs_every_sample_wrong():
    fb = [{"problem_id": "a", "correct": False}, {"problem_id": "a", "correct": False},
          {"problem_id": "b", "correct": False}, {"problem_id": "b", "correct": True}]
    assert variants.all_wrong(fb) == ["a"]


def test_variants_are_rebuilt_from_provenance(tiny_model_dir):
    import random

    params = validate(tiny_params(tiny_model_dir))
    p = practice_set(1)[0]
    out = variants.procedural_variants(p, params.generate.agents, 3, random.Random(0))
    assert 1 <= len(out) <= 3 and out[0][0].startswith("suggest-edit")  # at least one harder problem
    for path, g in out:
        q, s, a = g.render()
        assert q != p["question"] and s.endswith(f"#### {a}")


def test_followup_appends_variants_of_failures_only(tiny_model_dir, tmp_path):
    raw = tiny_params(tiny_model_dir)
    rows = practice_set()
    write_jsonl(tmp_path / "practice.jsonl", rows)
    rnd = tmp_path / "round-1"
    fb = [{"problem_id": r["id"], "correct": r["id"] != "p0" and k == 0} for r in rows for k in range(2)]
    write_jsonl(rnd / "feedback.jsonl", fb)
    write_jsonl(rnd / "problems.jsonl", rows)   # what practice@1 practised
    test = [{"id": "t0", "question": rows[3]["question"]}]
    write_jsonl(tmp_path / "test.jsonl", test)

    off = followup.run(validate(raw), "1", tmp_path / "practice.jsonl", rnd, tmp_path / "next.jsonl")
    assert off["all_wrong"] == 1 and off["all_wrong_share"] == 1 / 6 and off["new_problems"] == 0
    assert read_jsonl(tmp_path / "next.jsonl") == rows
    # the history beside the next practice set counts this round's verdicts (select: signal reads it)
    history = json.loads((tmp_path / "next.history.json").read_text())
    assert history["problems"]["p0"] == [0, 2] and history["problems"]["p1"] == [1, 2]
    assert sum(n for _, n in history["groups"].values()) == 12 and sum(r for r, _ in history["groups"].values()) == 5

    raw["followup"] = {"enabled": True, "variants": 3, "max_new": 50}
    on = followup.run(validate(raw), "1", tmp_path / "practice.jsonl", rnd, tmp_path / "next.jsonl",
                      tmp_path / "test.jsonl")
    nxt = read_jsonl(tmp_path / "next.jsonl")
    assert nxt[:6] == rows and len(nxt) == 6 + on["new_problems"] and on["new_problems"] >= 1
    new = nxt[6:]
    assert all(r["provenance"]["parent"] == "p0" and r["provenance"]["agent_path"].startswith("followup/1/")
               for r in new)
    assert len({r["question"] for r in nxt}) == len(nxt)
    raw["followup"]["max_new"] = 1
    capped = followup.run(validate(raw), "1", tmp_path / "practice.jsonl", rnd, tmp_path / "next.jsonl")
    assert capped["new_problems"] == 1


def test_followup_drops_variants_that_overlap_an_evaluation_problem(tiny_model_dir, tmp_path):
    """The contamination gate: a variant whose question is (nearly) an evaluation problem never
    reaches the next practice set, and is counted."""
    raw = tiny_params(tiny_model_dir)
    raw["followup"] = {"enabled": True, "variants": 3, "max_new": 50}
    raw["evaluate"]["gsm8k"]["path"] = ""  # the held-out file is the only evaluation set here
    rows = practice_set()
    write_jsonl(tmp_path / "practice.jsonl", rows)
    rnd = tmp_path / "round-1"
    write_jsonl(rnd / "feedback.jsonl", [{"problem_id": r["id"], "correct": r["id"] != "p0"} for r in rows])
    write_jsonl(rnd / "problems.jsonl", rows)
    write_jsonl(tmp_path / "unrelated.jsonl", [{"id": "t0", "question": "What is the capital of France?"}])
    clean = followup.run(validate(raw), "1", tmp_path / "practice.jsonl", rnd, tmp_path / "next.jsonl",
                         tmp_path / "unrelated.jsonl")
    made = read_jsonl(tmp_path / "next.jsonl")[6:]
    assert clean["new_problems"] == len(made) >= 1 and "dropped/contaminated" not in clean
    # the same run, with one of those variants (lightly edited) in the held-out set
    leaked = made[0]["question"].replace("How many", "how many") + " Explain."
    write_jsonl(tmp_path / "test.jsonl", [{"id": "t0", "question": leaked}])
    gated = followup.run(validate(raw), "1", tmp_path / "practice.jsonl", rnd, tmp_path / "next.jsonl",
                         tmp_path / "test.jsonl")
    kept = read_jsonl(tmp_path / "next.jsonl")[6:]
    assert gated["dropped/contaminated"] >= 1 and gated["new_problems"] == len(kept) < len(made)
    assert made[0]["question"] not in {r["question"] for r in kept}
