"""The optional LLM judge of practice samples (`feedback.judge`).

Optional LLM judge (`feedback.judge`, Orca-Math used GPT-4 as an exact-match judge): in
`fallback` mode it decides only samples the deterministic grader cannot read; in `double_check`
mode it sees every sample, the deterministic verdict stands where an answer was read, and the
share of disagreements is logged (a drifting grader or a sloppy judge shows up there).
"""

from __future__ import annotations

from tutorloop.hardware import ResolvedRuntime
from tutorloop.llm.client import Sampling
from tutorloop.runtime.pool import run_all
from tutorloop.teachers.chat import make_chat
from tutorloop.teachers.instruct import BadReply, JudgeReply, parse_json, prompt


def llm_judge(rows: list[dict], problems: list[dict], cfg, chat=None, runtime: ResolvedRuntime | None = None) -> dict:
    """Consult the LLM judge per `cfg.mode`; updates rows in place, returns judge stats. `runtime`:
    the stage's resolved runtime, which a local (transformers) judge runs on."""

    if cfg.mode == "none":
        return {}
    chat = chat or make_chat(cfg, cfg.cache_dir, runtime, what="feedback.judge")
    by_id = {p["id"]: p for p in problems}
    todo = [r for r in rows if cfg.mode == "double_check" or r["extracted"] is None]
    system = prompt("judge")

    def ask(r: dict) -> bool | None:
        p = by_id[r["problem_id"]]
        user = (f"Problem:\n{p['question']}\n\nReference solution:\n{p['solution']}\n\n"
                f"Student solution:\n{r['completion']}")
        reply = chat([{"role": "system", "content": system}, {"role": "user", "content": user}],
                     Sampling(temperature=0.0, top_p=1.0, max_tokens=64, seed=0, json_mode=True))
        try:
            return parse_json(reply, JudgeReply).correct
        except BadReply:
            return None

    verdicts = run_all(ask, todo, workers=cfg.concurrency, name="judge")
    decided = disagree = unparsed = 0
    for r, v in zip(todo, verdicts):
        r["judge"] = v
        if v is None:
            unparsed += 1
        elif r["extracted"] is None:
            r["correct"] = v  # the deterministic grader had nothing to go on: the judge decides
            decided += 1
        elif v != r.get("correct_lenient", r["correct"]):
            # The judge rules on the answer, not on its format: compare it with the grader's
            # lenient verdict (a right answer without a marker is strict-negative, judge-right).
            disagree += 1
    checked = sum(1 for r, v in zip(todo, verdicts) if v is not None and r["extracted"] is not None)
    return {"judge_calls": len(todo), "judge_decided": decided, "judge_unparsed": unparsed,
            "judge_disagreement_rate": disagree / checked if checked else 0.0}
