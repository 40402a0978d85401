"""Stage `followup@r`: close the loop — round r's failures become practice for the next round.

A problem the student got wrong in all K samples of round r is the most informative thing the
round found (beyond the paper, which only builds preference pairs from it). With
`followup.enabled`, each such problem goes back to the teacher's agents: Ask-Me-Anything variants
(asking for an intermediate quantity is an *easier* problem on the same story; asking for a given
is a different one) and one Suggester -> Editor rewrite (*harder*). The new problems, with teacher
solutions, are deduplicated, checked against the evaluation sets (the same n-gram gate as
`decontaminate`), capped, and appended to the practice set that round r hands to the next round.
Disabled, the practice set passes through unchanged; the share of all-wrong problems is logged
either way.

Practice sets chain through files: decontaminate writes data/practice-sets/after-0.jsonl,
followup@r writes after-r.jsonl, and practice@r reads after-{prev}.jsonl.

    python -m components.followup 1 data/practice-sets/after-0.jsonl data/round-1 data/practice-sets/after-1.jsonl
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path

from components import tracking
from components.config import Params, load_params
from components.data import read_jsonl, write_json, write_jsonl


def all_wrong(feedback: list[dict]) -> list[str]:
    """Problem ids whose every sample was judged wrong, in first-seen order."""
    verdicts: dict[str, list[bool]] = defaultdict(list)
    for r in feedback:
        verdicts[r["problem_id"]].append(bool(r["correct"]))
    return [pid for pid, v in verdicts.items() if v and not any(v)]


def procedural_variants(problem: dict, params: Params, k: int, rng: random.Random) -> list[tuple[str, object]]:
    """Easier/other (AMA) and harder (one suggest-edit) variants of a procedural problem, rebuilt
    exactly from its provenance (seed id + agent path)."""
    from components.teachers import ProceduralTeacher
    from components.teachers.agents import ask_me_anything, edit, expand, suggest
    from components.teachers.graph import Reject

    prov, a = problem["provenance"], params.generate.agents
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


def make_variants(problems: list[dict], params: Params, round_key: str, chat=None) -> tuple[list[dict], int]:
    """New problems from failed ones, and how many failed problems yielded none."""
    from components.teachers import graph_record

    cfg = params.followup
    rng = random.Random(f"followup/{round_key}")
    records = []
    llm = None
    no_variants = 0
    for p in problems:
        prov = p.get("provenance", {})
        mine: list[dict] = []
        if prov.get("teacher") == "procedural":
            for path, g in procedural_variants(p, params, cfg.variants, rng):
                mine.append(graph_record(g, prov["seed_id"], f"followup/{round_key}/{path}"))
        else:  # LLM-written problem: the same agents, through the teacher's cached backend
            if llm is None:
                from components.teachers.instruct import LLMAgents
                from components.teachers.llm import make_chat

                g = params.generate
                llm = LLMAgents(chat or make_chat(g.teacher, g.cache_dir, params.runtime.device), g.teacher,
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


def run(params: Params, round_key: str, practice_file: Path, round_dir: Path, out: Path,
        eval_file: Path | None = None, chat=None, gsm8k_file: Path | None = None) -> dict:
    import hashlib

    from components.contamination import EvalIndex
    from components.evalsets import gsm8k_problems
    from components.dedup import Dedup
    from components.teachers import normalise

    practice = read_jsonl(practice_file, required=("id", "question", "solution", "answer"))
    feedback = read_jsonl(round_dir / "feedback.jsonl", required=("problem_id", "correct"))
    failed_ids = all_wrong(feedback)
    by_id = {p["id"]: p for p in practice}
    failed = [by_id[i] for i in failed_ids if i in by_id]
    stats = {"practised": len({r["problem_id"] for r in feedback}), "all_wrong": len(failed),
             "all_wrong_share": len(failed) / max(1, len({r["problem_id"] for r in feedback})),
             "enabled": float(params.followup.enabled), "new_problems": 0}
    rows = list(practice)
    if params.followup.enabled and failed:
        evals = read_jsonl(eval_file, required=("question",)) if eval_file else []
        evals += gsm8k_problems(params.evaluate.gsm8k, gsm8k_file) or []
        index = EvalIndex(evals, params.decontaminate.ngram)
        dedup = Dedup(params.generate.near_dup, same_answer=True)
        for p in practice:
            dedup.verdict(p["question"], p["answer"])
        dropped = defaultdict(int)
        made, no_variants = make_variants(failed, params, round_key, chat)
        stats["failed_without_variants"] = no_variants
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
        stats["new_problems"] = len(rows) - len(practice)
        stats.update({f"dropped/{k}": v for k, v in dropped.items()})
    stats["practice_next"] = len(rows)
    write_jsonl(out, rows)
    write_json(stats, round_dir / "followup_metrics.json")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round")
    parser.add_argument("practice", type=Path, help="the practice set this round used")
    parser.add_argument("round_dir", type=Path, help="holds this round's feedback.jsonl")
    parser.add_argument("out", type=Path, help="the practice set for the next round")
    parser.add_argument("--eval", type=Path, default=None, help="held-out set new problems must not overlap")
    parser.add_argument("--gsm8k", type=Path, default=None, help="the inputs stage's GSM8K copy (default: read the config's)")
    args = parser.parse_args()
    params = load_params()
    with tracking.stage_run("followup", params.followup.model_dump(), round_key=args.round) as log:
        log.metrics(run(params, args.round, args.practice, args.round_dir, args.out, args.eval,
                        gsm8k_file=args.gsm8k))


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
