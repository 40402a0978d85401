"""tutorloop: the library behind the pipeline (the stages are components/, the Prefect flows
flows/) and, as its top layer, the `tutorloop` command (cli/).

Layers, each importing only those before it (tests/test_layout.py checks it):

    errors.py, secrets.py    the errors a user can fix, and redaction (leaves)
    config/                  typed params.yaml (pydantic), loading with file:line errors
    hardware.py              what the machine can do: the precision `auto` resolves to, and why;
                             each stage's one resolved runtime (resolve_runtime)
    runtime/                 plumbing: MLflow tracking, signals, the stage runner, thread pool
    data/                    jsonl, hashes, dedup, contamination, eval sets, preference pairs
    llm/                     the OpenAI-compatible client and its disk cache
    modeling.py              load / save / chat prompts / the HF-generate reference
    inference/               the generation engine, fused decode, kernels, calculator, samplers
    eval/                    grading, statistics, scoring, protocol, the report
    teachers/                procedural and LLM teachers, the agents, generation, the judge
    train/                   LoRA, precision, resume, SFT and preference trainers (over TRL)
    registry/                MLflow registration, promotion, lineage, model card
    serving/                 `tutorloop serve` (the engine behind an OpenAI-compatible API) and
                             `tutorloop harness` (lm-evaluation-harness against it)
    cli/                     the `tutorloop` command, by concern (loop, inspect, serve): the one
                             part of the package that starts flows/ (lazily); flows never import it

May import: nothing (the package root holds no code). Never components/; flows/ from cli/ only.
"""
