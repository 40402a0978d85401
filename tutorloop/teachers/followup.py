"""Closing the loop (`followup`): problems the student got wrong in all K samples go back
through the teacher's agents, and the variants that pass the gates join the next practice set.

Each failed problem gets Ask-Me-Anything variants (asking for an intermediate quantity is an
*easier* problem on the same story; asking for a given is a different one) and one Suggester ->
Editor rewrite (*harder*): procedural problems are rebuilt exactly from their provenance, LLM-written
ones go through the LLM agents and the teacher's cached backend. New problems are deduplicated,
checked against the evaluation sets (the same n-gram gate as `decontaminate`) and capped.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

from tutorloop.config import Agents, Params
from tutorloop.data.contamination import EvalIndex
from tutorloop.data.dedup import Dedup
from tutorloop.data.text import normalise
from tutorloop.hardware import ResolvedRuntime


def all_wrong(feedback: list[dict]) -> list[str]:
    """Problem ids whose every sample was judged wrong, in first-seen order."""
    verdicts: dict[str, list[bool]] = defaultdict(list)
    for r in feedback:
        verdicts[r["problem_id"]].append(bool(r["correct"]))
    return [pid for pid, v in verdicts.items() if v and not any(v)]


def procedural_variants(problem: dict, a: Agents, k: int, rng: random.Random) -> list[tuple[str, object]]:
    """Easier/other (AMA) and harder (one suggest-edit) variants of a procedural problem, rebuilt
    exactly from its provenance (seed id + agent path)."""
    from tutorloop.teachers import ProceduralTeacher
    from tutorloop.teachers.agents import ask_me_anything, edit, expand, suggest
    from tutorloop.teachers.graph import Reject

    prov = problem["provenance"]
    g = None
    for path, graph, _ in expand(prov["seed_id"], ProceduralTeacher.graph(prov["seed_id"]), a.ama,
                                 a.suggest_edit_rounds, a.edits):
        if path == prov["agent_path"]:
            g = graph
    # a problem made by an earlier followup, or by other agent settings, does not rebuild: only
    # an exact rebuild may be varied (a different story would not teach what the student missed)
    if g is None or g.render()[0] != problem["question"]:
        return []
    out: list[tuple[str, object]] = [(f"ama/{i + 1}", v) for i, v in enumerate(ask_me_anything(g, k, rng))]
    for _ in range(4):
        try:
            out.append(("suggest-edit/1", edit(g, suggest(g, rng, a.edits))))
            break
        except Reject:
            continue
    rng.shuffle(out)
    # keep at least one harder problem when there is one: easier-only would teach the easy part
    out.sort(key=lambda x: not x[0].startswith("suggest-edit"))
    return out[:k]


def make_variants(problems: list[dict], params: Params, round_key: str, chat=None,
                  runtime: ResolvedRuntime | None = None) -> tuple[list[dict], int]:
    """New problems from failed ones, and how many failed problems yielded none (`runtime`: the
    stage's resolved runtime, which a local teacher runs on)."""
    from tutorloop.teachers import graph_record

    cfg = params.followup
    rng = random.Random(f"followup/{round_key}")
    records = []
    llm = None
    no_variants = 0
    for p in problems:
        prov = p.get("provenance", {})
        mine: list[dict] = []
        if prov.get("teacher") == "procedural":
            for path, g in procedural_variants(p, params.generate.agents, cfg.variants, rng):
                mine.append(graph_record(g, prov["seed_id"], f"followup/{round_key}/{path}"))
        else:  # LLM-written problem: the same agents, through the teacher's cached backend
            if llm is None:
                from tutorloop.teachers.chat import make_chat
                from tutorloop.teachers.instruct import LLMAgents

                g = params.generate
                llm = LLMAgents(chat or make_chat(g.teacher, g.cache_dir, runtime), g.teacher,
                                g.agents, g.max_answer_chars)
            made, _ = llm.expand({"seed_id": prov.get("seed_id", p["id"]), "question": p["question"],
                                  "solution": p["solution"], "family": p.get("family", "seed")})
            for r in [r for r in made if r["provenance"]["agent_path"] != "seed"][:cfg.variants]:
                r["provenance"]["agent_path"] = f"followup/{round_key}/{r['provenance']['agent_path']}"
                mine.append(r)
        for r in mine:
            r["provenance"]["parent"] = p["id"]
        records += mine
        no_variants += not mine
    return records, no_variants


def extend_practice(params: Params, round_key: str, practice: list[dict], failed: list[dict],
                    evals: list[dict], chat=None, runtime: ResolvedRuntime | None = None) -> tuple[list[dict], dict]:
    """(the next round's practice set, stats): `practice` plus the variants of `failed` that pass
    the cap, the length limit, the contamination gate against `evals` and dedup."""
    index = EvalIndex(evals, params.decontaminate.ngram)
    dedup = Dedup(params.generate.near_dup, same_answer=True)
    for p in practice:
        dedup.verdict(p["question"], p["answer"])
    rows, dropped = list(practice), defaultdict(int)
    made, no_variants = make_variants(failed, params, round_key, chat, runtime)
    for r in made:
        if len(rows) - len(practice) >= params.followup.max_new:
            dropped["cap"] += 1
        elif len(r["solution"]) > params.generate.max_answer_chars:
            dropped["too_long"] += 1
        elif index.overlap(r["question"]) >= params.decontaminate.min_overlap:
            dropped["contaminated"] += 1
        elif (why := dedup.verdict(r["question"], r["answer"])):
            dropped[why] += 1
        else:
            r["id"] = f"followup{round_key}-{hashlib.sha1(normalise(r['question']).encode()).hexdigest()[:12]}"
            rows.append(r)
    stats = {"failed_without_variants": no_variants, "new_problems": len(rows) - len(practice),
             **{f"dropped/{k}": v for k, v in dropped.items()}}
    return rows, stats
