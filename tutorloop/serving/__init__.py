"""Serving a checkpoint: `tutorloop serve` puts the generation engine behind an OpenAI-compatible
API (server.py), so a registered champion can be tried, put behind an application, or used by the
loop itself (`practice.backend: openai` / `evaluate.backend: openai` pointed at it).

    tutorloop serve --model models:/tutor@champion      # or a checkpoint folder
    curl localhost:8000/v1/models

harness.py scores a served checkpoint with EleutherAI's lm-evaluation-harness (GSM8K, offline on
a local jsonl), a second opinion beside the loop's own grader:

    tutorloop harness --model models:/tutor@champion --limit 200

May import: tutorloop below it (hardware, modeling, inference) and MLflow to resolve registry
URIs; nothing imports it but flows/ (the CLI).
"""
