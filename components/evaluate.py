"""Stage `evaluate@<checkpoint>`: greedy pass@1 on the held-out set (and GSM8K when configured).

Greedy decoding with the same chat prompt as training, graded by `grading.grade` (the function
feedback uses). `evaluate.backend` picks the sampler (components/sampler.py): `local` = the
generation engine here (components/engine.py; calculator optional); `openai` = an
OpenAI-compatible server serving the checkpoint (e.g. vLLM on a GPU), greedy = temperature 0,
through the teacher's retrying client and disk cache (a server backend is part of the protocol).
Writes metrics/<checkpoint>.json (DVC metrics: accuracy with a 95% Wilson interval, strict
accuracy (answer stated with a marker), per-family accuracy, GSM8K accuracy, tokens, tokens/s)
and eval/<checkpoint>/ with one prediction per problem, so two models can be compared problem by
problem. Zero-shot by default; `fewshot: k` shows k worked SFT examples first; `maj_k: k` adds
majority-vote accuracy over k samples (maj@k).

GSM8K format: ``question`` and ``answer`` whose last line is ``#### N``; from a local jsonl
(`evaluate.gsm8k.path`; skipped with a note if the file is absent) or a `datasets` id.

    python -m components.evaluate 0 models/round-0 data/generated/test.jsonl metrics/0.json eval/0
    # with evaluate.backend: openai, first:  vllm serve models/round-0 --served-model-name round-0
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

from components import tracking
from components.config import ConfigError, Params, load_params
from components.data import read_jsonl, write_json, write_jsonl
from components.evalsets import gsm8k_problems
from components.grading import grade
from components.modeling import messages
from components.sampler import make_sampler
from components.stats import wilson


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (ties: the first to appear); None if none parsed."""
    counted = Counter(a for a in answers if a is not None)
    return max(counted, key=lambda a: (counted[a], -answers.index(a))) if counted else None


def score(sampler, params: Params, problems: list[dict], desc: str,
          shots: list[tuple[str, str]] = ()) -> tuple[list[dict], dict]:
    cfg = params.evaluate
    conversations = [messages(p["question"], params.prompt.system, params.prompt.template, shots)
                     for p in problems]
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
            vote = majority([grade(t, p["answer"]).extracted for t in texts])
            x["majority"] = vote
            x["majority_correct"] = vote is not None and grade(f"#### {vote}", p["answer"]).correct
        stats[f"maj_at_{cfg.maj_k}"] = sum(x["majority_correct"] for x in preds) / len(preds)
    return preds, stats


def run(params: Params, model_dir: Path, test_file: Path, metrics_file: Path, out_dir: Path,
        shots_file: Path | None = None, gsm8k_file: Path | None = None) -> dict:
    cfg = params.evaluate
    test = read_jsonl(test_file, required=("id", "question", "answer"))
    if cfg.limit:
        test = test[:cfg.limit]
    shots: list[tuple[str, str]] = []
    if cfg.fewshot:
        if shots_file is None:
            raise ConfigError(f"evaluate.fewshot: {cfg.fewshot} -> needs the SFT set for its examples (--shots)")
        shots = [(r["question"], r["solution"])
                 for r in read_jsonl(shots_file, required=("question", "solution"))[:cfg.fewshot]]
    gsm8k = gsm8k_problems(cfg.gsm8k, gsm8k_file)
    sampler = make_sampler(cfg, model_dir, params.runtime, "evaluate")
    preds, metrics = score(sampler, params, test, f"evaluate {model_dir.name}", shots)
    write_jsonl(out_dir / "predictions.jsonl", preds)
    by_family: dict[str, list[bool]] = defaultdict(list)
    for x in preds:
        by_family[x["family"]].append(x["correct"])
    metrics["family"] = {f: sum(v) / len(v) for f, v in sorted(by_family.items())}
    if gsm8k:
        g_preds, g_stats = score(sampler, params, gsm8k, "evaluate gsm8k", shots)
        write_jsonl(out_dir / "gsm8k_predictions.jsonl", g_preds)
        metrics["gsm8k"] = g_stats
    metrics["protocol"] = protocol(params)
    metrics["calculator"] = cfg.calculator
    metrics["backend"] = sampler.backend
    write_json(metrics, metrics_file)
    return metrics


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The nested metrics as flat MLflow metric names (only [\\w/.- :] allowed: no '@')."""
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    flat.update({f"family/{k}": v for k, v in metrics["family"].items()})
    flat.update({f"gsm8k_{k}": v for k, v in metrics.get("gsm8k", {}).items()})
    return flat


def protocol(params: Params) -> str:
    """A fingerprint of how a model was evaluated: verdicts pair only under the same protocol."""
    import hashlib
    import json

    cfg = params.evaluate
    key = {"prompt": params.prompt.model_dump(), "max_new_tokens": cfg.max_new_tokens, "dtype": cfg.dtype,
           "limit": cfg.limit, "fewshot": cfg.fewshot}
    if cfg.calculator:  # only when on, so calculator-free protocols keep their earlier fingerprint
        key["calculator"] = True
    if cfg.backend != "local":
        # A server decodes with its own kernels and precision (cfg.dtype does not apply there), so
        # its greedy text can differ from the engine's: verdicts pair within one backend only.
        # Only when not local, so every local protocol keeps its fingerprint.
        key["backend"] = cfg.backend
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("model", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--shots", type=Path, default=None, help="jsonl of worked examples for few-shot")
    parser.add_argument("--gsm8k", type=Path, default=None, help="the inputs stage's GSM8K copy (default: read the config's)")
    args = parser.parse_args()
    params = load_params()
    with tracking.stage_run("evaluate", params.evaluate.model_dump(), round_key=args.checkpoint) as log:
        metrics = run(params, args.model, args.test, args.metrics, args.out, args.shots, args.gsm8k)
        log.metrics(flat_metrics(metrics))
        log.artifact(args.out / "predictions.jsonl", "eval")
        log.artifact(args.out / "gsm8k_predictions.jsonl", "eval")


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
