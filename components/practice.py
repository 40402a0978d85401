"""Stage `practice@r`: the round r-1 student samples K solutions per practice problem.

Orca-Math's settings by default (K=4, temperature 0.7, top_p 0.95), seeded, so a round re-run
gives the same samples. `practice.backend` picks the sampler (tutorloop/inference/sampler.py): `local` =
the generation engine here (tutorloop/inference/engine.py: one prompt pass per problem, continuous
batching, optional calculator); `openai` = an OpenAI-compatible server serving models/round-(r-1)
(e.g. vLLM on a GPU), through the teacher's retrying client and its disk cache. Output:
one row per sample ``{problem_id, sample, completion}`` in data/round-r/samples.jsonl, the
problems practised in problems.jsonl (what feedback@r judges against), and the run's counts
(samples, tokens, tok/s; requests and cache hits for a server) in practice_metrics.json.

Where the problems come from (`rounds.r.practice.source`): `fresh` = the round's slice of the
practice set; `sft` = the same slice of the SFT problems (Orca-Math practised on its training
set: the student has seen the teacher's solutions, so more of its samples are right); `frontier`
= the fresh slice, then only the problems the student got right in some but not all of its K
samples (graded as feedback grades): where its own samples carry signal both ways.
`rounds.r.practice.select: signal` draws `practice.limit` problems of the source (from the offset
on) with weight p(1 - p) on the pass rates the earlier rounds predict (per problem, and per
family / ASDiv type / grade: tutorloop/eval/signal.py), read from the history beside the
practice set (data/practice-sets/after-<prev>.history.json); `all` takes the slice.

    python -m components.practice 1 models/round-0 data/practice-sets/after-0.jsonl data/round-1 --sft data/clean/sft.jsonl
    # with practice.backend: openai, first:  vllm serve models/round-0 --served-model-name round-0
"""

from __future__ import annotations

from pathlib import Path

from tutorloop.config import ConfigError, Params
from tutorloop.data.jsonl import read_jsonl, write_json, write_jsonl
from tutorloop.eval.feedback import judge
from tutorloop.eval.signal import frontier, history_path, read_history, round_problems
from tutorloop.hardware import resolve_runtime
from tutorloop.inference.sampler import make_sampler
from tutorloop.modeling import messages
from tutorloop.runtime.stage import Arg, stage


def run(params: Params, round_key: str, model_dir: Path, problems_file: Path, out: Path,
        sft_file: Path | None = None) -> dict:
    cfg, rcfg = params.practice, params.rounds[round_key].practice
    if rcfg.source == "sft" and sft_file is None:
        raise ConfigError(f"rounds.{round_key}.practice.source: sft -> the stage needs --sft (the SFT problems)")
    source = sft_file if rcfg.source == "sft" else problems_file
    # Which problems: the round's slice (rounds.r.practice.offset with practice.limit: fresh
    # problems each round), or `select: signal`, drawn where the rounds so far predict mixed groups
    history = read_history(history_path(problems_file))
    problems, chosen = round_problems(read_jsonl(source, required=("id", "question", "answer")), rcfg.offset,
                                      cfg.limit, rcfg.select, history, rcfg.seed, rcfg.samples)
    if not problems:
        raise ConfigError(f"rounds.{round_key}.practice.offset: {rcfg.offset} -> no practice problems left "
                          f"(the set has {len(read_jsonl(source))})")
    # resolved once here and handed down; a server backend's numerics are its own (no runtime)
    runtime = resolve_runtime(params.runtime) if cfg.backend == "local" else None
    sampler = make_sampler(cfg, model_dir, runtime, "practice")
    conversations = [messages(p["question"], params.prompt.system, params.prompt.template) for p in problems]
    gen = sampler(conversations, k=rcfg.samples, do_sample=True, temperature=rcfg.temperature,
                  top_p=rcfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=rcfg.seed,
                  desc=f"practice@{round_key}")
    rows = [{"problem_id": p["id"], "sample": k, "completion": text}
            for p, texts in zip(problems, gen.texts) for k, text in enumerate(texts)]
    sampled = len(problems)
    if rcfg.source == "frontier":   # graded as feedback grades, then only the mixed groups kept
        keep = frontier(problems, judge(problems, rows, strict=params.feedback.labels == "strict"))
        problems, rows = [p for p in problems if p["id"] in keep], [r for r in rows if r["problem_id"] in keep]
        if not problems:
            raise ConfigError(f"rounds.{round_key}.practice.source: frontier -> none of the {sampled} problems was "
                              f"right in some but not all of its {rcfg.samples} samples (more samples, or fresh)")
    write_jsonl(out / "samples.jsonl", rows)
    write_jsonl(out / "problems.jsonl", problems)
    metrics = {"problems": len(problems), "sampled": sampled, "source": rcfg.source, **chosen,
               "samples": len(rows), "new_tokens": gen.new_tokens,
               "tokens_per_second": gen.tokens_per_second, "seconds": gen.seconds,
               "calculator": cfg.calculator, "calculator_calls": gen.calculator_calls,
               "backend": sampler.backend, **sampler.metrics(gen)}
    write_json(metrics, out / "practice_metrics.json")  # a DVC metric beside MLflow's copy
    return metrics


@stage("practice", Arg("round"), Arg("model", Path), Arg("problems", Path), Arg("out", Path),
       Arg("--sft", Path, help="the SFT problems (rounds.r.practice.source: sft)"), round_arg="round",
       logged=lambda params, args: {"practice": params.practice.model_dump(),
                                    "round": params.rounds[args.round].practice.model_dump()})
def main(params, args, log) -> dict:
    return run(params, args.round, args.model, args.problems, args.out, sft_file=args.sft)


if __name__ == "__main__":
    main()
