"""Stage `practice@r`: the round r-1 student samples K solutions per practice problem.

Orca-Math's settings by default (K=4, temperature 0.7, top_p 0.95), seeded, so a round re-run
gives the same samples. `practice.backend` picks the sampler (tutorloop/inference/sampler.py): `local` =
the generation engine here (tutorloop/inference/engine.py: one prompt pass per problem, continuous
batching, optional calculator); `openai` = an OpenAI-compatible server serving models/round-(r-1)
(e.g. vLLM on a GPU), through the teacher's retrying client and its disk cache. Output:
one row per sample ``{problem_id, sample, completion}`` in data/round-r/samples.jsonl, and the
run's counts (samples, tokens, tok/s; requests and cache hits for a server) in
practice_metrics.json.

    python -m components.practice 1 models/round-0 data/generated/practice.jsonl data/round-1
    # with practice.backend: openai, first:  vllm serve models/round-0 --served-model-name round-0
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import ConfigError, Params
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.inference.sampler import make_sampler
from tutorloop.modeling import messages
from tutorloop.runtime.stage import Arg, stage


def run(params: Params, round_key: str, model_dir: Path, problems_file: Path, out: Path) -> dict:
    cfg, rcfg = params.practice, params.rounds[round_key].practice
    problems = read_jsonl(problems_file, required=("id", "question", "answer"))
    # A round's slice: rounds.r.practice.offset with practice.limit gives each round fresh
    # problems (new teacher solutions as positives) instead of the same set every round.
    problems = problems[rcfg.offset:rcfg.offset + cfg.limit if cfg.limit else None]
    if not problems:
        raise ConfigError(f"rounds.{round_key}.practice.offset: {rcfg.offset} -> no practice problems left "
                          f"(the set has {len(read_jsonl(problems_file))})")
    sampler = make_sampler(cfg, model_dir, params.runtime, "practice")
    conversations = [messages(p["question"], params.prompt.system, params.prompt.template) for p in problems]
    gen = sampler(conversations, k=rcfg.samples, do_sample=True, temperature=rcfg.temperature,
                  top_p=rcfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=rcfg.seed,
                  desc=f"practice@{round_key}")
    rows = [{"problem_id": p["id"], "sample": k, "completion": text}
            for p, texts in zip(problems, gen.texts) for k, text in enumerate(texts)]
    write_jsonl(out / "samples.jsonl", rows)
    metrics = {"problems": len(problems), "samples": len(rows), "new_tokens": gen.new_tokens,
               "tokens_per_second": gen.tokens_per_second, "seconds": gen.seconds,
               "calculator": cfg.calculator, "calculator_calls": gen.calculator_calls,
               "backend": sampler.backend, **sampler.metrics(gen)}
    write_json(metrics, out / "practice_metrics.json")  # a DVC metric beside MLflow's copy
    return metrics


@stage("practice", Arg("round"), Arg("model", Path), Arg("problems", Path), Arg("out", Path), round_arg="round",
       logged=lambda params, args: {"practice": params.practice.model_dump(),
                                    "round": params.rounds[args.round].practice.model_dump()})
def main(params, args, log) -> dict:
    return run(params, args.round, args.model, args.problems, args.out)


if __name__ == "__main__":
    main()
