"""Stage `feedback@r`: judge every practice sample and build preference pairs (Orca-Math rules).

Judge: `tutorloop.eval.feedback.judge` marks each sample against the teacher's answer with the
grader `evaluate` uses (strict labels by default); the optional LLM judge
(`tutorloop.teachers.judge`) decides what the grader cannot read or double-checks everything.
Pairs and the KTO table follow Orca-Math's rules (`tutorloop.data.preferences`): the student's
correct samples and the teacher's solution are positives, wrong samples negatives, a problem with
no negative borrows one from each of `borrowed_negatives` others; the round is capped at
`max_pairs`, student-chosen pairs first.

Outputs: feedback.jsonl (every sample, its extracted answer and verdict(s), with the teacher's
solution), pairs.jsonl, unpaired.jsonl, rft.jsonl (the student's distinct correct solutions and
the teacher's: RFT rounds and controls), and the round's feedback metrics (pass rates, the share
of mixed groups and distinct correct solutions per problem: tutorloop/eval/signal.py).

    python -m components.feedback 1 data/round-1/problems.jsonl data/round-1   # the problems practice@1 practised
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import Feedback
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.data.preferences import build_pairs, build_rft, build_unpaired
from tutorloop.eval.feedback import judge
from tutorloop.eval.signal import signal_stats
from tutorloop.eval.stats import mean_pass_at_k
from tutorloop.hardware import ResolvedRuntime, resolve_runtime
from tutorloop.runtime.stage import Arg, stage
from tutorloop.teachers.judge import llm_judge


def run(cfg: Feedback, problems_file: Path, round_dir: Path, chat=None, runtime: ResolvedRuntime | None = None) -> dict:
    problems = read_jsonl(problems_file, required=("id", "question", "solution", "answer"))
    samples = read_jsonl(round_dir / "samples.jsonl", required=("problem_id", "sample", "completion"))
    ids = {s["problem_id"] for s in samples}
    problems = [p for p in problems if p["id"] in ids]  # practice.limit may have used a prefix
    feedback = judge(problems, samples, strict=cfg.labels == "strict")
    judge_stats = llm_judge(feedback, problems, cfg.judge, chat, runtime)
    pairs, stats = build_pairs(problems, feedback, cfg)
    if not pairs:
        raise RuntimeError("no preference pairs could be built (no negatives anywhere?)")
    unpaired = build_unpaired(problems, feedback, pairs, max_rows=2 * cfg.max_pairs, seed=cfg.seed)
    stats.update(judge_stats)
    stats["practice_pass_rate_lenient"] = sum(r["correct_lenient"] for r in feedback) / max(1, len(feedback))
    stats["problems_all_wrong_share"] = stats["problems_all_wrong"] / max(1, stats["problems"])
    # pass@k of the practice set: how many problems the student's own samples could teach from
    per_problem: dict[str, list[bool]] = {}
    for r in feedback:
        per_problem.setdefault(r["problem_id"], []).append(r["correct"])
    counts = [(len(v), sum(v)) for v in per_problem.values()]
    stats.update({f"practice_pass_at_{k}": v for k, v in mean_pass_at_k(counts, (1, 4, 16)).items()})
    stats.update(signal_stats(feedback))   # the share of groups that teach both ways
    stats["unpaired_desirable"] = sum(r["label"] for r in unpaired)
    stats["unpaired_undesirable"] = len(unpaired) - stats["unpaired_desirable"]
    write_jsonl(round_dir / "feedback.jsonl", feedback)
    write_jsonl(round_dir / "pairs.jsonl", pairs)
    write_jsonl(round_dir / "unpaired.jsonl", unpaired)
    rft_rows, rft_stats = build_rft(problems, feedback)
    stats.update(rft_stats)
    write_jsonl(round_dir / "rft.jsonl", rft_rows)
    write_json(stats, round_dir / "feedback_metrics.json")
    return stats


@stage("feedback", Arg("round"), Arg("problems", Path), Arg("round_dir", Path), round_arg="round")
def main(params, args, log) -> dict:
    # resolved once here and handed down, only where a local (transformers) judge runs on it
    judge = params.feedback.judge
    local = judge.mode != "none" and judge.kind == "transformers"
    metrics = run(params.feedback, args.problems, args.round_dir,
                  runtime=resolve_runtime(params.runtime) if local else None)
    for name in ("feedback.jsonl", "pairs.jsonl", "unpaired.jsonl", "rft.jsonl"):
        log.artifact(args.round_dir / name, "feedback")
    return metrics


if __name__ == "__main__":
    main()
