"""Stage `generate`: AgentInstruct data generation, split into sft / practice / test.

The teacher (`generate.teacher`: the embedded procedural teacher, a dataset, or an LLM) expands
seed problems with the agents (Ask-Me-Anything, Suggester -> Editor, Solver) and the filters
drop what is too long, unparseable, disagreeing or duplicated: tutorloop/teachers/generation.py.
Safe to interrupt: a re-run replays finished seeds from a journal and calls from the cache.

Outputs: out/{test,practice,sft}.jsonl and out/stats.json (counts of what was kept and dropped,
and of the LLM agents' calls by role: a function of the inputs only, so the cached output's hash
is stable). What varies from run to run — seconds, problems/s, journal replays, cache hits and
calls sent — goes to MLflow and, with `--run-stats`, to an uncached metrics file.

    python -m components.generate data/generated
"""

from __future__ import annotations

import os
from pathlib import Path

from tutorloop.data.jsonl import read_jsonl
from tutorloop.hardware import resolve_runtime
from tutorloop.runtime.stage import Arg, stage
from tutorloop.teachers.generation import generate_dataset


@stage("generate", Arg("out", Path),
       Arg("--run-stats", Path, "write this run's timings, replays and calls here (not into the cached output)"),
       Arg("--seeds", Path, "the inputs stage's copy of jsonl/dataset seeds (default: read the configured source)"))
def main(params, args, log) -> dict:
    # A TeacherError (bad key, unknown model, unreachable server) is bad input: the runner prints
    # its one line and exits 2; the run is FAILED with the reason as a tag.
    # the runtime is resolved once here and handed down, only where a local (transformers) teacher
    # runs on it: a procedural or server teacher needs no device (a CPU worker may generate)
    local = params.generate.teacher.kind == "transformers"
    counts = generate_dataset(params.generate, args.out, runtime=resolve_runtime(params.runtime) if local else None,
                 progress=os.environ.get("TUTORLOOP_PROGRESS", "1") != "0", run_stats=args.run_stats,
                 seeds_file=args.seeds if params.generate.seeds.source != "procedural" else None)
    log.json(read_jsonl(args.out / "sft.jsonl")[:20], "sample/sft_first20.json")
    return {k: float(v) for k, v in counts.items()}


if __name__ == "__main__":
    main()
