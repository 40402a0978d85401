"""Stage `evaluate@<checkpoint>`: greedy pass@1 on the held-out set (and GSM8K when configured).

Greedy decoding with the same chat prompt as training, graded by `grading.grade` (the function
feedback uses; tutorloop/eval/scoring.py). `evaluate.backend` picks the sampler (tutorloop/inference/sampler.py): `local` = the
generation engine here (tutorloop/inference/engine.py; calculator optional); `openai` = an
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

from collections import defaultdict
from pathlib import Path

from tutorloop.config import ConfigError, Params
from tutorloop.data.evalsets import gsm8k_problems
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.eval.protocol import protocol
from tutorloop.eval.scoring import flat_metrics, score
from tutorloop.hardware import resolve_runtime
from tutorloop.inference.sampler import make_sampler
from tutorloop.runtime.stage import Arg, stage


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
    # resolved once here and handed down; a server backend's numerics are its own (no runtime)
    runtime = resolve_runtime(params.runtime) if cfg.backend == "local" else None
    sampler = make_sampler(cfg, model_dir, runtime, "evaluate")
    preds, metrics = score(sampler, params.evaluate, params.prompt, test, f"evaluate {model_dir.name}", shots)
    write_jsonl(out_dir / "predictions.jsonl", preds)
    by_family: dict[str, list[bool]] = defaultdict(list)
    for x in preds:
        by_family[x["family"]].append(x["correct"])
    metrics["family"] = {f: sum(v) / len(v) for f, v in sorted(by_family.items())}
    if gsm8k:
        g_preds, g_stats = score(sampler, params.evaluate, params.prompt, gsm8k, "evaluate gsm8k", shots)
        write_jsonl(out_dir / "gsm8k_predictions.jsonl", g_preds)
        metrics["gsm8k"] = g_stats
    # the protocol takes the resolved runtime itself (device, precision), not strings read back
    # from the metrics; and the decode attention the held-out pass ran, as its Generation recorded it
    metrics["protocol"] = protocol(params.evaluate, params.prompt, runtime, metrics.get("attention"))
    metrics["precision"] = sampler.precision
    metrics["calculator"] = cfg.calculator
    metrics["backend"] = sampler.backend
    write_json(metrics, metrics_file)
    return metrics


@stage("evaluate", Arg("checkpoint"), Arg("model", Path), Arg("test", Path), Arg("metrics", Path), Arg("out", Path),
       Arg("--shots", Path, "jsonl of worked examples for few-shot"),
       Arg("--gsm8k", Path, "the inputs stage's GSM8K copy (default: read the config's)"), round_arg="checkpoint")
def main(params, args, log) -> dict:
    metrics = run(params, args.model, args.test, args.metrics, args.out, args.shots, args.gsm8k)
    log.artifact(args.out / "predictions.jsonl", "eval")
    log.artifact(args.out / "gsm8k_predictions.jsonl", "eval")
    return flat_metrics(metrics)


if __name__ == "__main__":
    main()
