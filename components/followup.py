"""Stage `followup@r`: close the loop — round r's failures become practice for the next round.

A problem the student got wrong in all K samples of round r is the most informative thing the
round found (beyond the paper, which only builds preference pairs from it). With
`followup.enabled`, such problems go back to the teacher's agents (easier Ask-Me-Anything
variants, a harder Suggester -> Editor rewrite: tutorloop/teachers/followup.py) and the variants
that pass dedup, the contamination gate and the cap are appended to the practice set that round
r hands to the next round. Disabled, the practice set passes through unchanged; the share of
all-wrong problems is logged either way.

Practice sets chain through files: decontaminate writes data/practice-sets/after-0.jsonl,
followup@r writes after-r.jsonl, and practice@r reads after-{prev}.jsonl.

    python -m components.followup 1 data/practice-sets/after-0.jsonl data/round-1 data/practice-sets/after-1.jsonl
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import Params
from tutorloop.data.evalsets import gsm8k_problems
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.eval.signal import add_round, history_path, read_history
from tutorloop.hardware import ResolvedRuntime, resolve_runtime
from tutorloop.runtime.stage import Arg, stage
from tutorloop.teachers.followup import all_wrong, extend_practice


def run(params: Params, round_key: str, practice_file: Path, round_dir: Path, out: Path,
        eval_file: Path | None = None, chat=None, gsm8k_file: Path | None = None,
        runtime: ResolvedRuntime | None = None) -> dict:
    practice = read_jsonl(practice_file, required=("id", "question", "solution", "answer"))
    feedback = read_jsonl(round_dir / "feedback.jsonl", required=("problem_id", "correct"))
    by_id = {p["id"]: p for p in practice}
    failed = [by_id[i] for i in all_wrong(feedback) if i in by_id]
    practised = len({r["problem_id"] for r in feedback})
    stats = {"practised": practised, "all_wrong": len(failed), "all_wrong_share": len(failed) / max(1, practised),
             "enabled": float(params.followup.enabled), "new_problems": 0}
    rows = practice
    if params.followup.enabled and failed:
        evals = read_jsonl(eval_file, required=("question",)) if eval_file else []
        evals += gsm8k_problems(params.evaluate.gsm8k, gsm8k_file) or []
        rows, more = extend_practice(params, round_key, practice, failed, evals, chat, runtime)
        stats.update(more)
    stats["practice_next"] = len(rows)
    write_jsonl(out, rows)
    # what the rounds so far have seen, for `select: signal` in the next round's practice
    seen = read_jsonl(round_dir / "problems.jsonl", required=("id",))
    write_json(add_round(read_history(history_path(practice_file)), seen, feedback), history_path(out))
    write_json(stats, round_dir / "followup_metrics.json")
    return stats


@stage("followup", Arg("round"), Arg("practice", Path, "the practice set this round used"),
       Arg("round_dir", Path, "holds this round's feedback.jsonl"), Arg("out", Path, "the practice set for the next round"),
       Arg("--eval", Path, "held-out set new problems must not overlap"),
       Arg("--gsm8k", Path, "the inputs stage's GSM8K copy (default: read the config's)"), round_arg="round")
def main(params, args, log) -> dict:
    # resolved once here and handed down, only where variants may come from a local (transformers) teacher
    local = params.followup.enabled and params.generate.teacher.kind == "transformers"
    return run(params, args.round, args.practice, args.round_dir, args.out, args.eval, gsm8k_file=args.gsm8k,
               runtime=resolve_runtime(params.runtime) if local else None)


if __name__ == "__main__":
    main()
