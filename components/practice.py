"""Stage `practice@r`: the round r-1 student samples K solutions per practice problem.

Orca-Math's settings by default (K=4, temperature 0.7, top_p 0.95), through the generation engine
(components/engine.py: one prompt pass per problem, continuous batching, optional calculator) and
seeded, so a round re-run gives the same samples. Output:
one row per sample ``{problem_id, sample, completion}`` in data/round-r/samples.jsonl.

    python -m components.practice 1 models/round-0 data/generated/practice.jsonl data/round-1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from components import tracking
from components.config import ConfigError, Params, load_params
from components.data import read_jsonl, write_json, write_jsonl
from components.engine import generate
from components.modeling import chat_prompts, load, pick_device, setup_runtime


def run(params: Params, round_key: str, model_dir: Path, problems_file: Path, out: Path) -> dict:
    cfg, rcfg = params.practice, params.rounds[round_key].practice
    problems = read_jsonl(problems_file, required=("id", "question", "answer"))
    # A round's slice: rounds.r.practice.offset with practice.limit gives each round fresh
    # problems (new teacher solutions as positives) instead of the same set every round.
    problems = problems[rcfg.offset:rcfg.offset + cfg.limit if cfg.limit else None]
    if not problems:
        raise ConfigError(f"rounds.{round_key}.practice.offset: {rcfg.offset} -> no practice problems left "
                          f"(the set has {len(read_jsonl(problems_file))})")
    setup_runtime(params.runtime.threads)
    model, tok = load(model_dir, dtype=cfg.dtype, device=pick_device(params.runtime.device))
    prompts = chat_prompts(tok, [p["question"] for p in problems], params.prompt.system,
                           params.prompt.template)
    gen = generate(model, tok, prompts, num_return_sequences=rcfg.samples, do_sample=True,
                   temperature=rcfg.temperature, top_p=rcfg.top_p, max_new_tokens=cfg.max_new_tokens,
                   batch_size=cfg.batch_size, seed=rcfg.seed, calculator=cfg.calculator,
                   desc=f"practice@{round_key}")
    rows = [{"problem_id": p["id"], "sample": k, "completion": text}
            for p, texts in zip(problems, gen.texts) for k, text in enumerate(texts)]
    write_jsonl(out / "samples.jsonl", rows)
    metrics = {"problems": len(problems), "samples": len(rows), "new_tokens": gen.new_tokens,
               "tokens_per_second": gen.tokens_per_second, "seconds": gen.seconds,
               "calculator": cfg.calculator, "calculator_calls": gen.calculator_calls}
    write_json(metrics, out / "practice_metrics.json")  # a DVC metric beside MLflow's copy
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("round")
    parser.add_argument("model", type=Path)
    parser.add_argument("problems", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    params = load_params()
    logged = {"practice": params.practice.model_dump(),
              "round": params.rounds[args.round].practice.model_dump()}
    with tracking.stage_run("practice", logged, round_key=args.round) as log:
        log.metrics(run(params, args.round, args.model, args.problems, args.out))


if __name__ == "__main__":
    from components.entry import run_main

    run_main(main)  # bad input: one line, exit 2; SIGTERM/SIGINT: MLflow run KILLED (see entry.py)
