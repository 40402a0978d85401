"""Scoring a checkpoint on a problem set: greedy pass@1 graded by the one grading function
(`grading.grade`, shared with feedback), strict accuracy (answers stated with a marker), a 95%
Wilson interval, and, from k samples per problem, majority vote (maj@k) and pass@k.

`sampler` is any of tutorloop.inference.sampler's backends (the local engine or a server).
"""

from __future__ import annotations

from collections import Counter

from tutorloop.config import Evaluate, Prompt
from tutorloop.eval.grading import grade
from tutorloop.eval.stats import mean_pass_at_k, wilson
from tutorloop.modeling import messages


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (ties: the first to appear); None if none parsed."""
    counted = Counter(a for a in answers if a is not None)
    return max(counted, key=lambda a: (counted[a], -answers.index(a))) if counted else None


def score(sampler, cfg: Evaluate, prompt: Prompt, problems: list[dict], desc: str,
          shots: list[tuple[str, str]] = ()) -> tuple[list[dict], dict]:
    """Greedy pass@1 of `problems` (and maj@k / pass@k when `cfg.maj_k`): per-problem predictions
    and the stats evaluate logs; one grading function (eval/grading.py) decides every verdict."""
    conversations = [messages(p["question"], prompt.system, prompt.template, shots) for p in problems]
    gen = sampler(conversations, max_new_tokens=cfg.max_new_tokens, desc=desc)
    preds = []
    for p, texts in zip(problems, gen.texts):
        g = grade(texts[0], p["answer"])
        preds.append({"id": p["id"], "family": p.get("family", ""), "reference": p["answer"],
                      "extracted": g.extracted, "correct": g.correct, "strict_correct": g.strict,
                      "completion": texts[0]})
    correct = sum(x["correct"] for x in preds)
    low, high = wilson(correct, len(preds))
    # strict: only answers stated with a final-answer marker count (grading's docstring says why)
    stats = {"accuracy": correct / len(preds), "strict_accuracy": sum(x["strict_correct"] for x in preds) / len(preds),
             "correct": correct, "n": len(preds), "ci95_low": low,
             "ci95_high": high, "tokens_per_second": gen.tokens_per_second, "seconds": gen.seconds,
             "calculator_calls": gen.calculator_calls, "new_tokens": gen.new_tokens, **sampler.metrics(gen),
             "unparsed_rate": sum(x["extracted"] is None for x in preds) / len(preds)}
    if cfg.maj_k:
        sampled = sampler(conversations, k=cfg.maj_k, do_sample=True, temperature=cfg.maj_temperature, top_p=1.0,
                          max_new_tokens=cfg.max_new_tokens, desc=f"{desc} maj@{cfg.maj_k}")
        for x, p, texts in zip(preds, problems, sampled.texts):
            grades = [grade(t, p["answer"]) for t in texts]
            vote = majority([g.extracted for g in grades])
            x["majority"] = vote
            x["majority_correct"] = vote is not None and grade(f"#### {vote}", p["answer"]).correct
            x["samples_correct"] = sum(g.correct for g in grades)
        stats[f"maj_at_{cfg.maj_k}"] = sum(x["majority_correct"] for x in preds) / len(preds)
        # the ceiling of what training on the student's own samples can reach (issue: rounds that pay)
        counts = [(cfg.maj_k, x["samples_correct"]) for x in preds]
        stats.update({f"pass_at_{k}": v for k, v in mean_pass_at_k(counts, cfg.pass_k).items()})
    return preds, stats


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The nested metrics as flat MLflow metric names (only [\\w/.- :] allowed: no '@')."""
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    flat.update({f"family/{k}": v for k, v in metrics["family"].items()})
    flat.update({f"gsm8k_{k}": v for k, v in metrics.get("gsm8k", {}).items()})
    return flat
